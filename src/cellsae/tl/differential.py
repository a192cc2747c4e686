"""Differential features between groups of cells (latents or any representation's dimensions).

Three tests, each with Benjamini–Hochberg FDR within a comparison and a scale-free effect
size so that CNN dimensions (signed, dense) and SAE latents (non-negative, sparse) can be
compared on the same footing:

* ``"wilcoxon"``: Mann–Whitney U on cells (normal approximation, tie-corrected); effect =
  rank-biserial correlation ``2·AUC − 1`` in [−1, 1] (positive: higher in ``group``).
* ``"t-test"``: Welch's t on cells; effect = Cohen's d (pooled SD).
* ``"pseudobulk"``: each donor's mean per feature is one replicate, Welch's t across donors;
  effect = Cohen's d of donor means. Cells of one donor are not independent replicates
  (shared genetics, culture and imaging batch), so cell-level tests overstate significance
  when donors are few; this is the honest test for genotype contrasts.

The paper counted "significantly different features" with cells (tiles) as replicates and a
|log2FC| ≥ 0.58 filter; log2FC is reported here too, but only for non-negative features.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import sparse, stats

from .latents import get_rep, obs_values

logger = logging.getLogger(__name__)

__all__ = ["rank_features", "pseudobulk_test", "differential_features", "count_significant",
           "benjamini_hochberg"]

METHODS = ("wilcoxon", "t-test", "pseudobulk")
DEFAULT_MIN_EFFECT = {"wilcoxon": 0.1, "t-test": 0.2, "pseudobulk": 0.5}


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values; NaN p-values stay NaN and are not counted."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def _mean_var(x) -> tuple[np.ndarray, np.ndarray]:
    if sparse.issparse(x):
        mean = np.asarray(x.mean(0)).ravel()
        sq = np.asarray(x.multiply(x).mean(0)).ravel()
        var = np.clip(sq - mean**2, 0, None)
    else:
        mean, var = x.mean(0), x.var(0)
    n = x.shape[0]
    return mean, var * n / max(n - 1, 1)  # unbiased


def _log2fc(m1: np.ndarray, m0: np.ndarray, nonnegative: bool) -> np.ndarray:
    if not nonnegative:
        return np.full(m1.shape, np.nan)
    return np.log2((m1 + 1e-9) / (m0 + 1e-9))


def _is_nonnegative(x) -> bool:
    data = x.data if sparse.issparse(x) else x
    return bool(data.size == 0 or data.min() >= 0)


def _check_matrix(x):
    if sparse.issparse(x):
        x = sparse.csr_matrix(x, dtype=np.float64)
        if x.nnz and not np.isfinite(x.data).all():
            raise ValueError("the feature matrix contains NaN or Inf values")
        return x
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n_cells, n_features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the feature matrix contains NaN or Inf values")
    return x


def _frame(names, group, reference, m1, m0, lfc, effect, stat, p, n1, n0, method):
    return pd.DataFrame({
        "feature": names, "group": group, "reference": reference, "method": method,
        "mean_group": m1, "mean_reference": m0, "mean_diff": m1 - m0, "log2fc": lfc,
        "effect_size": effect, "statistic": stat, "pvalue": p, "padj": benjamini_hochberg(p),
        "n_group": n1, "n_reference": n0,
    })


def rank_features(x, in_group, in_reference, *, method: str = "wilcoxon", feature_names=None,
                  group: str = "group", reference: str = "reference", min_cells: int = 3,
                  chunk: int = 512) -> pd.DataFrame:
    """Cell-level differential test of every feature, ``group`` vs ``reference``.

    Parameters
    ----------
    x : (n_cells, n_features) array or sparse matrix
    in_group, in_reference : (n_cells,) boolean arrays
        Cells of the two sides (disjoint).
    method : {"wilcoxon", "t-test"}
    feature_names : sequence of str, optional
    group, reference : str
        Labels written into the result.
    min_cells : int
        Each side needs at least this many cells.
    chunk : int
        Features densified at a time for the Wilcoxon test.

    Returns
    -------
    DataFrame, one row per feature: ``mean_group``, ``mean_reference``, ``mean_diff``,
    ``log2fc`` (NaN for signed features), ``effect_size`` (rank-biserial or Cohen's d),
    ``statistic``, ``pvalue``, ``padj`` (BH), ``n_group``, ``n_reference``.
    Features constant on both sides get p = NaN (untestable, excluded from the FDR).
    """
    if method not in ("wilcoxon", "t-test"):
        raise ValueError(f"method must be 'wilcoxon' or 't-test' here, got {method!r}")
    x = _check_matrix(x)
    a, b = np.asarray(in_group, bool), np.asarray(in_reference, bool)
    if a.shape[0] != x.shape[0] or b.shape[0] != x.shape[0]:
        raise ValueError("group masks must have one entry per cell")
    if (a & b).any():
        raise ValueError("a cell cannot be in both the group and the reference")
    for label, mask in ((group, a), (reference, b)):
        if mask.sum() < min_cells:
            raise ValueError(
                f"group '{label}' has {int(mask.sum())} cells; at least min_cells={min_cells} "
                "are needed for a test"
            )
    n_feat = x.shape[1]
    names = np.asarray(feature_names if feature_names is not None
                       else [str(i) for i in range(n_feat)]).astype(str)
    if len(names) != n_feat:
        raise ValueError(f"{len(names)} feature names for {n_feat} features")
    xa, xb = x[a], x[b]
    n1, n0 = int(a.sum()), int(b.sum())
    m1, v1 = _mean_var(xa)
    m0, v0 = _mean_var(xb)
    lfc = _log2fc(m1, m0, _is_nonnegative(x))
    testable = (v1 > 0) | (v0 > 0) | (m1 != m0)
    stat = np.full(n_feat, np.nan)
    p = np.full(n_feat, np.nan)
    effect = np.full(n_feat, np.nan)
    if method == "t-test":
        with np.errstate(divide="ignore", invalid="ignore"):
            res = stats.ttest_ind_from_stats(m1, np.sqrt(v1), n1, m0, np.sqrt(v0), n0,
                                             equal_var=False)
            pooled = np.sqrt(((n1 - 1) * v1 + (n0 - 1) * v0) / (n1 + n0 - 2))
            d = (m1 - m0) / pooled
        stat[testable], p[testable] = res.statistic[testable], res.pvalue[testable]
        effect[testable] = d[testable]
    else:
        cols = np.flatnonzero(testable)
        xa_c = xa.tocsc() if sparse.issparse(xa) else xa
        xb_c = xb.tocsc() if sparse.issparse(xb) else xb
        for start in range(0, len(cols), chunk):
            sel = cols[start:start + chunk]
            da = xa_c[:, sel].toarray() if sparse.issparse(xa_c) else xa_c[:, sel]
            db = xb_c[:, sel].toarray() if sparse.issparse(xb_c) else xb_c[:, sel]
            res = stats.mannwhitneyu(da, db, axis=0, alternative="two-sided",
                                     method="asymptotic", use_continuity=True)
            stat[sel], p[sel] = res.statistic, res.pvalue
            effect[sel] = 2 * res.statistic / (n1 * n0) - 1
    return _frame(names, group, reference, m1, m0, lfc, effect, stat, p, n1, n0, method)


def pseudobulk_test(x, in_group, in_reference, donors, *, feature_names=None,
                    group: str = "group", reference: str = "reference", min_donors: int = 2,
                    min_cells_per_donor: int = 5) -> pd.DataFrame:
    """Donor-level (pseudobulk) test: donor means are the replicates, Welch's t across donors.

    Parameters
    ----------
    x : (n_cells, n_features) array or sparse matrix
    in_group, in_reference : (n_cells,) boolean arrays
    donors : (n_cells,) array of donor labels
        A donor with cells on both sides contributes one replicate to each side.
    min_donors : int
        Each side needs at least this many donors (3 or more is advisable).
    min_cells_per_donor : int
        Donors with fewer cells on a side are left out of that side.

    Returns
    -------
    DataFrame as :func:`rank_features`, with ``n_group``/``n_reference`` counting donors
    and ``effect_size`` Cohen's d of donor means.
    """
    x = _check_matrix(x)
    donors = np.asarray(donors).astype(str)
    a, b = np.asarray(in_group, bool), np.asarray(in_reference, bool)
    if donors.shape[0] != x.shape[0]:
        raise ValueError(f"donors has {donors.shape[0]} entries for {x.shape[0]} cells")
    n_feat = x.shape[1]
    names = np.asarray(feature_names if feature_names is not None
                       else [str(i) for i in range(n_feat)]).astype(str)
    means = []
    for label, mask in ((group, a), (reference, b)):
        ds, counts = np.unique(donors[mask], return_counts=True)
        ds = ds[counts >= min_cells_per_donor]
        if len(ds) < min_donors:
            raise ValueError(
                f"group '{label}' has {len(ds)} donor(s) with at least {min_cells_per_donor} "
                f"cells ({', '.join(ds) or 'none'}); the pseudobulk test needs at least "
                f"min_donors={min_donors}. Use a cell-level test and read its p-values as "
                "descriptive, or add donors"
            )
        rows = []
        for dnr in ds:
            sel = mask & (donors == dnr)
            rows.append(np.asarray(x[sel].mean(0)).ravel())
        means.append(np.vstack(rows))
    g, r = means
    m1, m0 = g.mean(0), r.mean(0)
    v1, v0 = g.var(0, ddof=1), r.var(0, ddof=1)
    n1, n0 = g.shape[0], r.shape[0]
    testable = (v1 > 0) | (v0 > 0) | (m1 != m0)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = stats.ttest_ind(g, r, axis=0, equal_var=False)
        pooled = np.sqrt(((n1 - 1) * v1 + (n0 - 1) * v0) / (n1 + n0 - 2))
        d = (m1 - m0) / pooled
    stat = np.where(testable, res.statistic, np.nan)
    p = np.where(testable, res.pvalue, np.nan)
    effect = np.where(testable, d, np.nan)
    lfc = _log2fc(m1, m0, _is_nonnegative(x))
    return _frame(names, group, reference, m1, m0, lfc, effect, stat, p, n1, n0, "pseudobulk")


def count_significant(table: pd.DataFrame, *, alpha: float = 0.05,
                      min_effect: float | None = None) -> int | pd.Series:
    """Number of features with ``padj < alpha`` and ``|effect_size| ≥ min_effect``.

    ``min_effect`` defaults by method: 0.1 rank-biserial (wilcoxon), 0.2 Cohen's d (t-test),
    0.5 Cohen's d of donor means (pseudobulk). Returns an int for one comparison, else a
    Series indexed by group.
    """
    sig = significant_mask(table, alpha=alpha, min_effect=min_effect)
    counts = sig.groupby(table["group"].to_numpy()).sum()
    return int(counts.iloc[0]) if len(counts) == 1 else counts.astype(int)


def significant_mask(table: pd.DataFrame, *, alpha: float = 0.05,
                     min_effect: float | None = None) -> pd.Series:
    """Boolean Series: ``padj < alpha`` and ``|effect_size| ≥ min_effect`` (see above)."""
    if min_effect is None:
        thr = table["method"].map(DEFAULT_MIN_EFFECT).astype(float)
    else:
        thr = pd.Series(float(min_effect), index=table.index)
    return (table["padj"] < alpha) & (table["effect_size"].abs() >= thr)


def differential_features(adata, groupby: str, *, groups=None, reference: str = "rest",
                          method: str = "wilcoxon", donor_key: str | None = None,
                          use_rep: str | None = None, min_cells: int = 3, min_donors: int = 2,
                          alpha: float = 0.05, min_effect: float | None = None,
                          key_added: str = "differential") -> pd.DataFrame:
    """Differential features for each group vs a reference (scanpy's rank_genes_groups, honest).

    Parameters
    ----------
    adata : AnnData
    groupby : str
        Categorical obs column (e.g. ``"genotype"``).
    groups : sequence of str, optional
        Groups to test; default every level except ``reference``.
    reference : str
        A level of ``groupby`` (e.g. ``"healthy"``) or ``"rest"`` (all other cells).
    method : {"wilcoxon", "t-test", "pseudobulk"}
    donor_key : str, optional
        Donor column; required for ``"pseudobulk"``.
    use_rep : str, optional
        ``None``/``"X"`` (latents), an ``obsm`` key (e.g. ``"X_cnn"``) or ``"layers/NAME"``.
    min_cells, min_donors : int
        Minimum cells per group (cell-level tests) / donors per group (pseudobulk).
    alpha, min_effect : float
        Thresholds for the ``significant`` column (see :func:`count_significant`).
    key_added : str
        The table is stored in ``uns[key_added]["table"]`` with the parameters.

    Returns
    -------
    DataFrame in long format (one row per group × feature), sorted by group then p-value,
    with a boolean ``significant`` column.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = get_rep(adata, use_rep)
    labels = obs_values(adata, groupby, numeric=False).astype(str)
    levels = list(pd.unique(labels))
    if reference != "rest" and reference not in levels:
        raise ValueError(f"reference {reference!r} is not a level of {groupby!r}; levels: "
                         f"{', '.join(levels)}")
    if groups is None:
        groups = [lv for lv in levels if lv != reference]
    missing = [g for g in groups if g not in levels]
    if missing:
        raise ValueError(f"groups {missing} are not levels of {groupby!r}; levels: "
                         f"{', '.join(levels)}")
    if method == "pseudobulk" and donor_key is None:
        raise ValueError("method='pseudobulk' needs donor_key (the obs column naming donors)")
    donors = obs_values(adata, donor_key, numeric=False) if donor_key is not None else None
    if use_rep in (None, "X"):
        names = adata.var_names.to_numpy()
    else:
        names = np.array([f"{use_rep}_{i}" for i in range(x.shape[1])])
    tables = []
    for g in map(str, groups):
        in_g = labels == g
        in_r = ~in_g if reference == "rest" else labels == reference
        if method == "pseudobulk":
            t = pseudobulk_test(x, in_g, in_r, donors, feature_names=names, group=g,
                                reference=reference, min_donors=min_donors)
        else:
            t = rank_features(x, in_g, in_r, method=method, feature_names=names, group=g,
                              reference=reference, min_cells=min_cells)
        tables.append(t.sort_values("pvalue", na_position="last"))
    table = pd.concat(tables, ignore_index=True)
    table["significant"] = significant_mask(table, alpha=alpha, min_effect=min_effect).to_numpy()
    adata.uns[key_added] = {
        "table": table,
        "params": {"groupby": groupby, "groups": list(groups), "reference": reference,
                   "method": method, "donor_key": donor_key, "use_rep": use_rep,
                   "alpha": alpha, "min_effect": min_effect},
    }
    logger.info("%s: %s significant features", method,
                table.groupby("group")["significant"].sum().to_dict())
    return table
