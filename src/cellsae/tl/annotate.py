"""Name what each latent appears to encode: top cells, measurements, genotype and death.

For every latent of a latents AnnData (see :func:`cellsae.tl.latents_anndata`):

* its top-activating cells (``varm["top_cells"]``, positions, strongest first) for a gallery
  (:func:`cellsae.pl.latent_gallery`);
* its strongest Spearman correlation with a hand-crafted measurement (area, intensities…);
* its enrichment in each level of categorical obs columns (genotype…) and for death, as
  rank-biserial effects with BH-adjusted Wilcoxon p-values (cells as replicates: read
  these as descriptive, see :func:`cellsae.tl.differential_features` for donor-level tests);
* a short ``label`` joining what passed the thresholds, e.g.
  ``"mito_area ρ=+0.82; genotype=SNCA ↑ (r=0.41); death ↑ (r=0.35)"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from ..metrics.truth import factor_correlations
from .differential import rank_features
from .latents import _available_reps, obs_values

logger = logging.getLogger(__name__)

__all__ = ["annotate_latents", "top_cells", "token_activation_maps"]


def top_cells(x, n_top: int = 16) -> np.ndarray:
    """Positions of the ``n_top`` most activating cells of each latent.

    Parameters
    ----------
    x : (n_cells, n_latents) array or sparse matrix

    Returns
    -------
    (n_latents, n_top) int array, strongest first; -1 pads latents active in fewer cells.
    """
    c = sparse.csc_matrix(x)
    out = np.full((c.shape[1], n_top), -1, dtype=np.int64)
    for j in range(c.shape[1]):
        lo, hi = c.indptr[j], c.indptr[j + 1]
        vals, rows = c.data[lo:hi], c.indices[lo:hi]
        pos = vals > 0
        vals, rows = vals[pos], rows[pos]
        order = np.argsort(-vals, kind="stable")[:n_top]
        out[j, :len(order)] = rows[order]
    return out


def token_activation_maps(sae, tokens, latent: int, cells) -> np.ndarray:
    """Spatial activation of one SAE latent over the token grid of some cells.

    For a token-level SAE, the map shows *where* in each crop the latent fires; drawn over
    the crops by :func:`cellsae.pl.latent_gallery`.

    Parameters
    ----------
    sae : SAE
        Trained on the store's tokens.
    tokens : TokenStore or path
        From :func:`cellsae.embed.extract` (``tokens_out=``).
    latent : int
        Index in the SAE dictionary (``var["latent_index"]`` of a latents AnnData).
    cells : (n,) int array
        Cell positions (rows of the crops).

    Returns
    -------
    (n, grid_h, grid_w) float32 array of activations (raw units).
    """
    from .latents import _token_store

    store = _token_store(tokens)
    if not 0 <= int(latent) < sae.d_sae:
        raise IndexError(f"latent {latent} outside the SAE dictionary [0, {sae.d_sae})")
    cells = np.atleast_1d(np.asarray(cells, dtype=np.int64))
    if cells.size and (cells.min() < 0 or cells.max() >= store.n_cells):
        raise IndexError(f"cells must lie in [0, {store.n_cells}), the store's cells")
    gh, gw = (int(g) for g in store.grid)
    out = np.zeros((len(cells), gh, gw), np.float32)
    for i, cell in enumerate(cells):  # a gallery's handful of cells
        a, b = int(store.offsets[cell]), int(store.offsets[cell + 1])
        if b == a:
            continue
        codes = sae.encode(np.asarray(store.tokens[a:b], np.float32), progress=False)
        pos = np.asarray(store.position[a:b], dtype=np.int64)
        out[i, pos[:, 0], pos[:, 1]] = codes[:, int(latent)].toarray().ravel()
    return out


def _measurements(adata, measurements) -> tuple[np.ndarray, list[str]]:
    if isinstance(measurements, str):
        if measurements not in adata.obsm:
            raise KeyError(f"measurements {measurements!r} not found in adata.obsm; available: "
                           f"{_available_reps(adata)}")
        m = adata.obsm[measurements]
        if isinstance(m, pd.DataFrame):
            return m.to_numpy(dtype=np.float64), [str(c) for c in m.columns]
        names = adata.uns.get(f"{measurements}_names")
        m = np.asarray(m, dtype=np.float64)
        names = list(names) if names is not None else [f"{measurements}_{i}"
                                                       for i in range(m.shape[1])]
        return m, names
    cols = list(measurements)
    return np.column_stack([obs_values(adata, c) for c in cols]), cols


def annotate_latents(adata, *, measurements: str | Sequence[str] | None = None,
                     categorical: Sequence[str] = (), death_key: str | None = None,
                     layer: str | None = "activations", n_top: int = 16,
                     min_corr: float = 0.5, min_effect: float = 0.3, alpha: float = 0.05,
                     key_added: str = "latent_annotation") -> pd.DataFrame:
    """Per-latent annotation table (and ``varm["top_cells"]``).

    Parameters
    ----------
    adata : AnnData
        Latents as variables.
    measurements : obsm key or list of obs columns, optional
        Hand-crafted per-cell measurements. An ``obsm`` DataFrame keeps its column names;
        for an array, names may be given in ``uns[f"{key}_names"]``.
    categorical : sequence of str
        Obs columns (e.g. ``["genotype"]``) for level enrichment.
    death_key : str, optional
        0/1 death call (Wilcoxon dead vs alive) or a continuous rate (Spearman).
    layer : str or None
        Activations to use; ``"activations"`` (raw) by default, ``None`` for ``X``.
    n_top : int
        Top cells kept per latent.
    min_corr, min_effect, alpha : float
        Thresholds for a property to enter the ``label``: |ρ| ≥ ``min_corr`` for a
        measurement; |rank-biserial| ≥ ``min_effect`` and BH-adjusted p < ``alpha`` for a
        level or for death.

    Returns
    -------
    DataFrame indexed by latent (``var_names``) with ``frac_active``, ``best_measurement``,
    ``best_measurement_rho``, for each categorical key ``{key}_level``, ``{key}_effect``,
    ``{key}_padj``, then ``death_effect`` (and ``death_padj``), and ``label``. Also written to
    ``uns[key_added]`` with the parameters.
    """
    x = adata.layers[layer] if layer is not None else adata.X
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found; layers: {list(adata.layers)}; pass layer=None")
    x = sparse.csr_matrix(x, dtype=np.float64)
    if x.nnz == 0:
        raise ValueError("all latents are zero in every cell; nothing to annotate")
    names = adata.var_names.astype(str)
    n_cells = max(adata.n_obs, 1)
    table = pd.DataFrame(index=names)
    table["frac_active"] = np.diff(x.tocsc().indptr) / n_cells
    adata.varm["top_cells"] = top_cells(x, n_top)
    labels: list[list[str]] = [[] for _ in range(len(names))]

    if measurements is not None:
        m, m_names = _measurements(adata, measurements)
        rho = factor_correlations(x, m, method="spearman", absolute=False)  # (latents, meas)
        best = np.abs(rho).argmax(1)
        best_rho = rho[np.arange(len(names)), best]
        table["best_measurement"] = np.asarray(m_names, dtype=object)[best]
        table["best_measurement_rho"] = best_rho
        for i in np.flatnonzero(np.abs(best_rho) >= min_corr):
            labels[i].append(f"{m_names[best[i]]} ρ={best_rho[i]:+.2f}")

    for key in categorical:
        col = obs_values(adata, key, numeric=False).astype(str)
        levels = pd.unique(col)
        if len(levels) < 2:
            raise ValueError(f"obs column {key!r} has a single level; nothing to enrich against")
        eff = np.full((len(names), len(levels)), np.nan)
        padj = np.full_like(eff, np.nan)
        for j, level in enumerate(levels):
            in_level = col == level
            if in_level.sum() < 3 or (~in_level).sum() < 3:
                logger.warning("skipping %s=%s: fewer than 3 cells on one side", key, level)
                continue
            res = rank_features(x, in_level, ~in_level, method="wilcoxon", feature_names=names,
                                group=str(level), reference="rest")
            eff[:, j], padj[:, j] = res["effect_size"].to_numpy(), res["padj"].to_numpy()
        filled = np.where(np.isnan(eff), -np.inf, eff)
        top = filled.argmax(1)
        rows = np.arange(len(names))
        table[f"{key}_level"] = np.asarray(levels, dtype=object)[top]
        table[f"{key}_effect"] = eff[rows, top]
        table[f"{key}_padj"] = padj[rows, top]
        for i in np.flatnonzero((eff[rows, top] >= min_effect) & (padj[rows, top] < alpha)):
            labels[i].append(f"{key}={levels[top[i]]} ↑ (r={eff[i, top[i]]:.2f})")

    if death_key is not None:
        d = obs_values(adata, death_key)
        ok = np.isfinite(d)
        if np.isin(np.unique(d[ok]), [0.0, 1.0]).all():
            res = rank_features(x, ok & (d == 1), ok & (d == 0), method="wilcoxon",
                                feature_names=names, group="dead", reference="alive")
            effect, p = res["effect_size"].to_numpy(), res["padj"].to_numpy()
            table["death_effect"], table["death_padj"] = effect, p
            hit = (np.abs(effect) >= min_effect) & (p < alpha)
            for i in np.flatnonzero(hit):
                labels[i].append(f"death {'↑' if effect[i] > 0 else '↓'} (r={effect[i]:+.2f})")
        else:
            rho = factor_correlations(x[ok], d[ok, None], absolute=False)[:, 0]
            table["death_effect"] = rho
            for i in np.flatnonzero(np.abs(rho) >= min_corr):
                labels[i].append(f"death rate ρ={rho[i]:+.2f}")

    table["label"] = ["; ".join(parts) if parts else "unclear" for parts in labels]
    adata.uns[key_added] = {
        "table": table.reset_index(names="latent"),
        "params": {"measurements": measurements if isinstance(measurements, str)
                   else list(measurements or []), "categorical": list(categorical),
                   "death_key": death_key, "layer": layer, "n_top": n_top,
                   "min_corr": min_corr, "min_effect": min_effect, "alpha": alpha},
    }
    return table
