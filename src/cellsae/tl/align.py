"""``gw_map``: couple image-derived cells with scRNA-seq cells by Gromov–Wasserstein and
write the results into both AnnData objects."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import sparse

logger = logging.getLogger(__name__)

__all__ = ["gw_map", "image_representation", "rna_representation"]


def _pca(x, n_pcs: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA, TruncatedSVD

    n_comp = int(min(n_pcs, x.shape[0] - 1, x.shape[1]))
    if n_comp < 1:
        raise ValueError(f"cannot compute PCA of a {x.shape} matrix")
    if n_comp == x.shape[1]:
        return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)
    if sparse.issparse(x):
        return TruncatedSVD(n_comp, random_state=seed).fit_transform(x)
    return PCA(n_comp, random_state=seed).fit_transform(np.asarray(x, dtype=np.float64))


def _get_rep(adata, key: str | None, what: str):
    if key is None:
        return adata.X
    if key in adata.obsm:
        return adata.obsm[key]
    if key in adata.layers:
        return adata.layers[key]
    raise KeyError(f"{what}: '{key}' is neither in obsm ({list(adata.obsm)}) nor in layers "
                   f"({list(adata.layers)})")


def image_representation(adata_img, *, use_rep: str | None = None, n_pcs: int = 30,
                         seed: int = 0) -> np.ndarray:
    """Image-side representation: ``obsm[use_rep]`` (or ``X``, e.g. SAE latents) → PCA.

    Crops stored in ``obsm`` (4-D) are refused with a message: embed them first.
    """
    x = _get_rep(adata_img, use_rep, "image representation")
    if not sparse.issparse(x):
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"image representation must be 2-D (cells × features), got shape "
                             f"{x.shape}; embed the crops (cellsae embed / sae) first")
    if sparse.issparse(x):
        x = x.astype(np.float64)
    elif not np.isfinite(x).all():
        raise ValueError("image representation contains NaN or Inf")
    return _pca(x, n_pcs, seed)


def rna_representation(adata_rna, *, use_rep: str | None = None, layer: str | None = None,
                       n_top_genes: int = 2000, n_pcs: int = 30, target_sum: float = 1e4,
                       seed: int = 0) -> np.ndarray:
    """RNA-side representation: a user latent (``obsm[use_rep]``, e.g. scVI) as is, or
    counts → normalise to ``target_sum`` → log1p → top-variance HVGs → PCA.

    The AnnData is not modified.
    """
    if use_rep is not None:
        x = np.asarray(_get_rep(adata_rna, use_rep, "RNA representation"), dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"obsm['{use_rep}'] contains NaN or Inf")
        return x
    x = adata_rna.layers[layer] if layer is not None else adata_rna.X
    x = sparse.csr_matrix(x, dtype=np.float64) if sparse.issparse(x) else \
        np.asarray(x, dtype=np.float64)
    data = x.data if sparse.issparse(x) else x
    if not np.isfinite(data).all() or (data < 0).any():
        raise ValueError("RNA counts must be finite and non-negative; pass use_rep= for a "
                         "precomputed latent or layer= for the raw counts")
    totals = np.asarray(x.sum(1)).ravel()
    if (totals == 0).any():
        raise ValueError(f"{int((totals == 0).sum())} RNA cell(s) have zero counts; filter "
                         "them before alignment")
    scale = target_sum / totals
    x = sparse.diags(scale) @ x if sparse.issparse(x) else x * scale[:, None]
    x = x.log1p() if sparse.issparse(x) else np.log1p(x)
    if sparse.issparse(x):
        mean = np.asarray(x.mean(0)).ravel()
        var = np.asarray(x.multiply(x).mean(0)).ravel() - mean**2
    else:
        var = x.var(0)
    top = np.argsort(var)[::-1][: min(n_top_genes, int((var > 0).sum()))]
    if len(top) == 0:
        raise ValueError("every gene is constant across RNA cells")
    return _pca(x[:, np.sort(top)], n_pcs, seed)


def _weights(adata, w, what: str):
    """Cell weights from an array or an obs column, checked against the cell count."""
    from ..align.solvers import check_weights

    if w is None:
        return None
    if isinstance(w, str):
        if w not in adata.obs:
            raise KeyError(f"{what}: '{w}' is not a column of obs ({list(adata.obs.columns)})")
        w = adata.obs[w].to_numpy()
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.shape[0] != adata.n_obs:
        raise ValueError(f"{what} has {w.shape[0]} entries but the AnnData has {adata.n_obs} "
                         "cells; pass one weight per cell")
    return check_weights(w, adata.n_obs, what)


def gw_map(
    adata_img,
    adata_rna,
    *,
    use_rep_img: str | None = None,
    use_rep_rna: str | None = None,
    rna_layer: str | None = None,
    n_pcs: int = 30,
    n_top_genes: int = 2000,
    method: Literal["auto", "exact", "landmark"] = "auto",
    n_neighbors: int | Sequence[int] = (15, 30, 50),
    epsilon: float | Sequence[float] = (2e-3, 5e-3, 1e-2),
    criterion: str = "consensus",
    refine: float | None = 0.5,
    cost: str = "knn_geodesic",
    metric: str = "correlation",
    mode: str = "connectivity",
    weights_img=None,
    weights_rna=None,
    n_landmarks: int = 2000,
    max_exact_cells: int = 12000,
    labels_key: str | None = None,
    key_added: str = "gw_map",
    device: Any = "auto",
    seed: int = 0,
):
    """Gromov–Wasserstein map from image cells (source) to RNA cells (target).

    Parameters
    ----------
    adata_img : AnnData
        Image-derived cells; ``X`` or ``obsm[use_rep_img]`` holds their features (e.g. SAE
        latents), reduced to ``n_pcs`` principal components.
    adata_rna : AnnData
        scRNA-seq cells; raw counts in ``X`` (or ``layers[rna_layer]``) are normalised,
        log1p-transformed, reduced to ``n_top_genes`` HVGs and ``n_pcs`` PCs, unless
        ``use_rep_rna`` names a latent (e.g. ``"X_scVI"``) to use as is.
    method : {"auto", "exact", "landmark"}
        "exact" runs the dense entropic solver (with label-free selection over the
        ``n_neighbors`` × ``epsilon`` grid), "landmark" the quantised solver (first grid
        values only); "auto" picks "landmark" above ``max_exact_cells`` cells per side.
    n_neighbors, epsilon : int / float or sequences
        kNN sizes and candidate entropic regularisations. With the default
        ``cost="knn_geodesic"`` every (k, ε) pair is a candidate; with
        ``cost="multiscale_geodesic"`` the kNN sizes are averaged into one cost per side
        (no k is chosen) and only ε is selected.
    criterion : {"consensus", "objective", "distortion"}
        Label-free selection criterion (see ``cellsae.align.selection``).
    refine : float in (0, 1) or None
        After the selection, one self-trained fused GW step with this GW weight
        (``cellsae.align.refine_gw``: ridge maps fitted on the chosen coupling's own
        barycentric pseudo-pairs, no labels). It lowered FOSCTTM on every benchmark data
        set (``benchmarks/gw_alignment.py``); ``None`` keeps the selected coupling as is.
        Exact method only.
    cost : {"knn_geodesic", "multiscale_geodesic", "euclidean", "cosine"}
        Intra-domain cost (see ``cellsae.align.costs``).
    weights_img, weights_rna : array of shape (n_cells,) or obs column name, optional
        Cell weights (marginals) of each side; they must have one entry per cell and sum
        to one (uniform when omitted). Checked before any work starts.
    labels_key : str, optional
        Column of ``adata_rna.obs`` to transfer onto image cells.
    key_added : str
        Prefix of everything written.

    Returns
    -------
    GWResult
        The coupling (image × RNA). Also written:

        * ``adata_img.uns[key_added]`` / ``adata_rna.uns[key_added]``: parameters,
          selection scores and convergence history (``GWResult.to_dict()``);
        * ``adata_rna.obsm["X_" + key_added]``: the RNA representation used;
          ``adata_img.obsm["X_" + key_added]``: image cells projected into that space
          (a joint embedding);
        * ``adata_img.obs[key_added + "_mass"]``, ``adata_rna.obs[key_added + "_mass"]``:
          coupling mass per cell relative to uniform;
        * with ``labels_key``: ``adata_img.obs[f"{key_added}_{labels_key}"]`` and
          ``..._confidence`` (barycentric transfer).
    """
    from ..align import landmark_gw, select_gw

    n_img, n_rna = adata_img.n_obs, adata_rna.n_obs
    if labels_key is not None and labels_key not in adata_rna.obs:
        raise KeyError(f"labels_key '{labels_key}' is not a column of adata_rna.obs "
                       f"({list(adata_rna.obs.columns)})")
    if method not in ("auto", "exact", "landmark"):
        raise ValueError(f"method must be 'auto', 'exact' or 'landmark', got {method!r}")
    ks = [n_neighbors] if np.isscalar(n_neighbors) else list(n_neighbors)
    epss = [epsilon] if np.isscalar(epsilon) else list(epsilon)
    if not ks or not epss:
        raise ValueError("n_neighbors and epsilon must each give at least one value")
    if any(float(e) <= 0 for e in epss):
        raise ValueError(f"epsilon values must be positive, got {epss}")
    if refine is not None and not 0 < float(refine) < 1:
        raise ValueError(f"refine must be a GW weight in (0, 1) or None (off), got {refine!r}")
    p = _weights(adata_img, weights_img, "weights_img (image cells)")
    q = _weights(adata_rna, weights_rna, "weights_rna (RNA cells)")
    x = image_representation(adata_img, use_rep=use_rep_img, n_pcs=n_pcs, seed=seed)
    y = rna_representation(adata_rna, use_rep=use_rep_rna, layer=rna_layer,
                           n_top_genes=n_top_genes, n_pcs=n_pcs, seed=seed)
    if method == "auto":
        method = "landmark" if max(n_img, n_rna) > max_exact_cells else "exact"
    logger.info("GW-map: %d image cells × %d RNA cells, method=%s", n_img, n_rna, method)
    if method == "exact":
        result = select_gw(x, y, n_neighbors=ks, epsilons=epss, criterion=criterion,
                           cost=cost, metric=metric, mode=mode, p=p, q=q, device=device,
                           seed=seed, refine=refine)
    else:
        if p is not None or q is not None:
            raise ValueError("cell weights are not supported by the landmark solver; use "
                             "method='exact' or uniform weights")
        result = landmark_gw(x, y, n_landmarks=n_landmarks, epsilon=float(epss[0]),
                             cost_kwargs={"n_neighbors": int(ks[0]), "metric": metric,
                                          "mode": mode},
                             device=device, seed=seed)
    if not result.converged:
        logger.warning("GW-map: the coupling did not converge (%s)",
                       "; ".join(result.warnings) or "see result.history")
    result.params.update(use_rep_img=use_rep_img, use_rep_rna=use_rep_rna,
                         rna_layer=rna_layer, n_pcs=n_pcs, n_top_genes=n_top_genes,
                         method=method, refine=refine if method == "exact" else None)
    summary = result.to_dict()
    adata_img.uns[key_added] = summary
    adata_rna.uns[key_added] = summary
    adata_rna.obsm[f"X_{key_added}"] = y
    adata_img.obsm[f"X_{key_added}"] = result.barycentric_projection(y)
    adata_img.obs[f"{key_added}_mass"] = result.row_sums() * n_img
    adata_rna.obs[f"{key_added}_mass"] = result.col_sums() * n_rna
    if labels_key is not None:
        labels = adata_rna.obs[labels_key].astype(str).to_numpy()
        df = result.transfer_labels(labels, method="barycentric")
        adata_img.obs[f"{key_added}_{labels_key}"] = df["label"].to_numpy()
        adata_img.obs[f"{key_added}_{labels_key}_confidence"] = df["confidence"].to_numpy()
    return result
