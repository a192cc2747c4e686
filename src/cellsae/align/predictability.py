"""Which genes can images predict? Cross-validated R² of imputed expression from image
features, against a permutation null, with Benjamini–Hochberg FDR."""

from __future__ import annotations

import logging

import numpy as np

from .._utils import as_rng, progress

logger = logging.getLogger(__name__)

__all__ = ["benjamini_hochberg", "gene_predictability"]


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values), same shape as ``pvalues``."""
    p = np.asarray(pvalues, dtype=np.float64)
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def _cv_r2(x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
           alphas: np.ndarray) -> np.ndarray:
    """Out-of-fold R² per column of ``y`` for ridge regression (alpha chosen by GCV)."""
    from sklearn.linear_model import RidgeCV

    pred = np.empty_like(y)
    for train, test in folds:
        model = RidgeCV(alphas=alphas).fit(x[train], y[train])
        pred[test] = model.predict(x[test])
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1 - ss_res / ss_tot
    return np.where(ss_tot > 0, r2, np.nan)


def _pooled_pvalues(r2: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Pooled p-values from leave-one-out standardised R² (see ``gene_predictability``).

    ``r2 : (n_genes,)``, ``null : (n_draws, n_genes)``. The observed value is
    standardised by the null draws' mean and SD; each null draw by the mean and SD of the
    other draws and the observed value (same number of values), so that under the null
    all ``n_draws + 1`` standardised values of a gene are exchangeable. Standardising the
    draws in-sample instead shrinks their spread and makes the test anti-conservative.
    """
    allv = np.vstack([null, r2[None, :]])                 # (B + 1, G); last row observed
    b = allv.shape[0] - 1
    s1 = np.nansum(allv, 0)
    s2 = np.nansum(allv**2, 0)
    mean_o = (s1[None, :] - allv) / b
    var_o = np.maximum((s2[None, :] - allv**2) / b - mean_o**2, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (allv - mean_o) / np.sqrt(var_o)
    z_obs, z_null = z[-1], z[:-1].ravel()
    z_null = np.sort(z_null[np.isfinite(z_null)])
    if z_null.size == 0:
        return np.ones_like(r2)
    above = z_null.size - np.searchsorted(z_null, np.nan_to_num(z_obs, nan=np.inf,
                                                                posinf=np.inf), side="left")
    # a gene whose null has no spread but whose R² beats it gets z = +inf: smallest p
    return (1 + above) / (1 + z_null.size)


def gene_predictability(image_rep, imputed, *, gene_names=None, n_splits: int = 5,
                        n_permutations: int = 50, fdr: float = 0.05, seed=0,
                        groups=None, null_imputations=None, pvalues: str = "pooled"):
    """Per gene, how well image features predict the expression imputed onto image cells.

    Parameters
    ----------
    image_rep : (n_cells, d) array
        Image features of the source cells (e.g. PCA of SAE latents).
    imputed : (n_cells, n_genes) array
        Expression imputed on the same cells (``GWResult.impute``).
    gene_names : sequence of str, optional
    n_splits : int
        Cross-validation folds (grouped by ``groups`` when given, e.g. donor or plate,
        so near-duplicate cells do not leak between train and test).
    n_permutations : int
        Draws of the null; each gene's p-value is
        ``(1 + #{null R² >= observed}) / (1 + n_permutations)``.
    fdr : float
        BH level at which a gene is called predictable.
    pvalues : {"pooled", "empirical"}
        "empirical": each gene against its own ``n_permutations`` null draws, so the
        smallest p-value is ``1 / (1 + n_permutations)`` (too coarse for BH over
        thousands of genes unless ``n_permutations`` is large). "pooled" (default): each
        gene's null is standardised by its own mean and SD, and the observed standardised
        R² is compared with the standardised null draws of all genes together (location
        and scale per gene, shape shared), which resolves p-values down to
        ``1 / (n_permutations * n_genes)``.
    null_imputations : callable ``rng -> (n_cells, n_genes) array``, optional
        Draws one imputation under the null. ``GWResult.predictability`` passes
        "impute the same genes after shuffling them across the *target* cells" (see
        there), which keeps the coupling, and with it the smoothness of every imputed
        gene over image space, and breaks only the link between a gene's values and the
        target cells' positions. When omitted the null permutes the rows of ``imputed``
        (image cells), which is only valid when ``imputed`` was measured independently of
        the image features: for expression imputed through a coupling that was itself
        built from image geometry that null is circular (every imputed gene is a smooth
        function of the image features, so every gene passes).

    Returns
    -------
    pandas.DataFrame indexed by gene with ``r2``, ``null_mean``, ``null_sd``, ``pvalue``,
    ``qvalue`` and ``predictable`` (bool), sorted by ``r2`` descending.
    """
    import pandas as pd
    from sklearn.model_selection import GroupKFold, KFold

    x = np.asarray(image_rep, dtype=np.float64)
    y = np.asarray(imputed.toarray() if hasattr(imputed, "toarray") else imputed,
                   dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"image_rep {x.shape} and imputed {y.shape} must be 2-D with the "
                         "same number of cells")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("image_rep and imputed must be finite (cells with no coupling mass "
                         "impute to NaN: drop them first)")
    n = x.shape[0]
    if n < 2 * n_splits:
        raise ValueError(f"need at least {2 * n_splits} cells for {n_splits}-fold CV, got {n}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    if pvalues not in ("pooled", "empirical"):
        raise ValueError(f"pvalues must be 'pooled' or 'empirical', got {pvalues!r}")
    genes = np.asarray(gene_names if gene_names is not None else
                       [f"gene{i}" for i in range(y.shape[1])]).astype(str)
    if genes.shape[0] != y.shape[1]:
        raise ValueError(f"gene_names has {genes.shape[0]} names for {y.shape[1]} genes")
    rng = as_rng(seed)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    if groups is not None:
        folds = list(GroupKFold(n_splits=n_splits).split(x, y, np.asarray(groups)))
    else:
        folds = list(KFold(n_splits, shuffle=True,
                           random_state=int(rng.integers(2**31 - 1))).split(x))
    alphas = np.logspace(-2, 4, 13)
    r2 = _cv_r2(x, y, folds, alphas)
    null = np.empty((n_permutations, y.shape[1]))
    for b in progress(range(n_permutations), desc="predictability null"):
        if null_imputations is None:
            y_null = y[rng.permutation(n)]
        else:
            y_null = np.asarray(null_imputations(rng), dtype=np.float64)
            if y_null.shape != y.shape:
                raise ValueError(f"null_imputations returned shape {y_null.shape}, expected "
                                 f"{y.shape}")
        null[b] = _cv_r2(x, y_null, folds, alphas)
    # a constant gene has no R² (NaN): never predictable
    null_ok = np.where(np.isnan(null), -np.inf, null)
    if pvalues == "empirical":
        pvalue = (1 + (null_ok >= r2[None, :]).sum(0)) / (1 + n_permutations)
    elif pvalues == "pooled":
        pvalue = _pooled_pvalues(r2, null)
    else:
        raise ValueError(f"pvalues must be 'pooled' or 'empirical', got {pvalues!r}")
    pvalue = np.where(np.isnan(r2), 1.0, pvalue)
    qvalue = benjamini_hochberg(pvalue)
    df = pd.DataFrame({"r2": r2, "null_mean": np.nanmean(null, 0) if n_permutations else
                       np.nan, "null_sd": np.nanstd(null, 0),
                       "pvalue": pvalue, "qvalue": qvalue, "predictable": qvalue <= fdr},
                      index=pd.Index(genes, name="gene"))
    df.attrs["null"] = "row_permutation" if null_imputations is None else "custom"
    if pvalues == "empirical" and n_permutations < 1 / fdr:
        logger.warning("with %d permutations the smallest p-value is %.3g > fdr %.3g: no gene "
                       "can be called predictable; raise n_permutations", n_permutations,
                       1 / (1 + n_permutations), fdr)
    return df.sort_values("r2", ascending=False)
