"""Compare representations of the same cells (CNN, SAE, measurements) on geometric fidelity.

One call gives the paper's table (kNN local/global SD of death, Moran's I, death R²) plus
effective rank and, on data with known truth, trustworthiness/continuity against the true
factors and factor recovery (MCC), each with a confidence interval.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse, stats

from .._utils import SeedLike, as_rng
from ..metrics import geometry, truth
from .latents import _available_reps, obs_values

logger = logging.getLogger(__name__)

__all__ = ["compare_representations", "METRICS"]

METRICS = ("knn_sd_ratio", "morans_i", "phenotype_r2", "effective_rank", "trustworthiness",
           "continuity", "factor_mcc", "n_factors_recovered")
_LOWER_IS_BETTER = {"knn_sd_ratio"}


def _resolve_reps(adata, reps) -> dict[str, list[str]]:
    if isinstance(reps, str):
        reps = [reps]
    out: dict[str, list[str]] = {}
    if isinstance(reps, Mapping):
        for name, keys in reps.items():
            out[str(name)] = [keys] if isinstance(keys, str) else list(keys)
    else:
        for key in reps:
            out[str(key)] = [key]
    missing = [k for keys in out.values() for k in keys if k != "X" and k not in adata.obsm]
    if missing:
        raise KeyError(f"representation(s) {missing} not found in adata.obsm; available: "
                       f"{_available_reps(adata)}")
    return out


def _matrix(adata, key: str):
    x = adata.X if key == "X" else adata.obsm[key]
    if isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    if sparse.issparse(x):
        x = sparse.csr_matrix(x, dtype=np.float64)
        if x.nnz == 0:
            raise ValueError(f"representation {key!r} is all zero; check the step that made it")
        return x
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"representation {key!r} must be 2-D, got shape {x.shape}")
    if not np.any(x):
        raise ValueError(f"representation {key!r} is all zero; check the step that made it")
    return x


def _drop_constant(x):
    """Remove all-zero / constant columns (dead latents carry no geometry)."""
    if sparse.issparse(x):
        keep = np.diff(x.tocsc().indptr) > 0
    else:
        keep = x.std(0) > 0
    return x[:, keep]


def _bootstrap_mean(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return values[idx].mean(axis=1)


def _metrics_once(x, y, strata, groups, factors, *, k, n_components, n_permutations,
                  max_cells_trust, which, rng, boot_idx) -> tuple[dict, dict]:
    """Metric values on all cells, and bootstrap replicates where they are cheap.

    The bootstrap resamples cells with the representation's kNN graph and out-of-fold
    predictions held fixed (per-cell contributions are resampled), so it measures the
    sampling variability of the cells, not that of re-fitting the graph or the model.
    """
    out: dict[str, float] = {}
    boot: dict[str, np.ndarray] = {}
    n = x.shape[0]
    if "knn_sd_ratio" in which:
        res = geometry.knn_sd_ratio(x, y, k=k, strata=strata)
        out["knn_sd_ratio"] = res.ratio
        if boot_idx is not None:
            boot["knn_sd_ratio"] = _bootstrap_mean(res.per_cell_ratio, boot_idx)
    if "morans_i" in which:
        parts = ([np.arange(n)] if strata is None else
                 [np.flatnonzero(strata == s) for s in np.unique(strata)])
        values, weights, pvals = [], [], []
        num = np.zeros(n)
        den = np.zeros(n)
        for idx in parts:
            nb = geometry.knn_indices(x[idx], k)
            res = geometry.morans_i(None, y[idx], neighbors=nb, n_permutations=n_permutations,
                                    seed=rng)
            values.append(res.i)
            weights.append(len(idx))
            pvals.append(res.p_value)
            z = y[idx] - y[idx].mean()
            # I = mean_i(z_i * mean_j z_j) / mean_i(z_i^2): resample the two per-cell terms
            num[idx] = z * z[nb].mean(axis=1) / len(idx)
            den[idx] = z**2 / len(idx)
        out["morans_i"] = float(np.average(values, weights=weights))
        if n_permutations:
            out["morans_p"] = float(np.max(pvals))  # the weakest stratum
        if boot_idx is not None:
            if strata is None:
                boot["morans_i"] = num[boot_idx].sum(1) / den[boot_idx].sum(1)
            else:  # per stratum ratio, then the cell-weighted average
                acc = np.zeros(boot_idx.shape[0])
                for idx in parts:
                    sel = np.isin(boot_idx, idx)
                    acc += (np.where(sel, num[boot_idx], 0).sum(1)
                            / np.where(sel, den[boot_idx], 0).sum(1)) * len(idx) / n
                boot["morans_i"] = acc
    if "phenotype_r2" in which:
        res = geometry.phenotype_r2(x, y, groups=groups, n_components=n_components, seed=rng)
        out["phenotype_r2"] = res.r2
        if boot_idx is not None:
            yb, pb = y[boot_idx], res.predictions[boot_idx]
            boot["phenotype_r2"] = 1 - ((yb - pb) ** 2).sum(1) / (
                (yb - yb.mean(1, keepdims=True)) ** 2).sum(1)
    if "effective_rank" in which:
        out["effective_rank"] = geometry.effective_rank(x)
    if factors is not None:
        sub = np.arange(n) if n <= max_cells_trust else np.sort(
            rng.choice(n, max_cells_trust, replace=False))
        if "trustworthiness" in which:
            out["trustworthiness"] = geometry.trustworthiness(factors[sub], x[sub], k=10)
        if "continuity" in which:
            out["continuity"] = geometry.continuity(factors[sub], x[sub], k=10)
        if "factor_mcc" in which or "n_factors_recovered" in which:
            match = truth.match_factors(x, factors)
            out["factor_mcc"] = match.mcc
            out["n_factors_recovered"] = float(match.n_recovered)
    return out, boot


def compare_representations(adata, reps: Sequence[str] | Mapping[str, Sequence[str]] = (
        "X_cnn", "X_sae", "X_measure"), phenotype: str = "dead", *, k: int = 5,
        strata_key: str | None = None, groups_key: str | None = None,
        factors_key: str | None = None, metrics: Sequence[str] | None = None,
        n_bootstrap: int = 1000, ci: float = 0.95, n_permutations: int = 199,
        n_components: int | None = 250, max_cells_trust: int = 2000,
        seed: SeedLike = 0, key_added: str | None = "compare_representations") -> pd.DataFrame:
    """Geometric fidelity of several representations of the same cells, with CIs.

    Parameters
    ----------
    adata : AnnData
    reps : sequence of obsm keys, or mapping name → list of obsm keys
        With a mapping, each name may list one key per training seed (e.g.
        ``{"CNN": ["X_cnn_s0", "X_cnn_s1"], "SAE": ["X_sae_s0", "X_sae_s1"]}``).
        ``"X"`` means ``adata.X``.
    phenotype : str
        Numeric or boolean obs column (``"dead"``, a death rate).
    k : int
        Neighbours for the kNN SD ratio and Moran's I (the paper's k = 5).
    strata_key : str, optional
        Obs column; kNN SD ratio and Moran's I are computed within each stratum (the
        paper: within each mutant class) and averaged over cells. R² uses all cells.
    groups_key : str, optional
        Obs column (donor, plate) for grouped cross-validation folds of the R².
    factors_key : str, optional
        ``obsm`` key of the true factors (synthetic data): adds trustworthiness and
        continuity (k = 10, on at most ``max_cells_trust`` cells) and factor recovery.
    metrics : sequence of str, optional
        Subset of :data:`METRICS`; default all that apply.
    n_bootstrap : int
        Cell bootstrap replicates for the kNN SD ratio, Moran's I and R² (the graph and
        the out-of-fold predictions are held fixed; per-cell terms are resampled).
    ci : float
        Interval level. With ≥ 2 seeds for a name, a t-interval over seeds (training
        variability, usually the larger one); otherwise the bootstrap percentile
        interval; NaN where neither applies (effective rank, trustworthiness, MCC with
        one seed).
    n_permutations : int
        Moran's I permutation test (``morans_p``, the largest p over strata).
    n_components : int or None
        PCA dimension inside the R² regression (the paper's 250).
    seed : int or Generator
    key_added : str or None
        Store the table and the draws in ``uns[key_added]``; ``None`` stores nothing.

    Returns
    -------
    DataFrame indexed by representation name with, for each metric ``m``: ``m`` (on all
    cells, averaged over seeds), ``m_ci_low``, ``m_ci_high``; plus ``morans_p``,
    ``n_cells``, ``n_dims`` (dimensions with any variance), ``n_seeds``.
    ``table.attrs["values"]`` holds the per-seed values (long format).
    """
    rep_keys = _resolve_reps(adata, reps)
    y_all = obs_values(adata, phenotype)
    ok = np.isfinite(y_all)
    if not ok.all():
        logger.info("dropping %d cells with a missing %r", int((~ok).sum()), phenotype)
    which = set(METRICS if metrics is None else metrics)
    unknown = which - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    sel = np.flatnonzero(ok)
    y = y_all[sel]
    strata = (obs_values(adata, strata_key, numeric=False).astype(str)[sel]
              if strata_key is not None else None)
    groups = (obs_values(adata, groups_key, numeric=False).astype(str)[sel]
              if groups_key is not None else None)
    factors = None
    if factors_key is not None:
        if factors_key not in adata.obsm:
            raise KeyError(f"factors {factors_key!r} not found in adata.obsm; available: "
                           f"{_available_reps(adata)}")
        factors = np.asarray(adata.obsm[factors_key], dtype=np.float64)[sel]
    rng = as_rng(seed)
    n = len(sel)
    boot_idx = rng.integers(0, n, size=(n_bootstrap, n)) if n_bootstrap else None
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    rows, table = [], {}
    for name, keys in rep_keys.items():
        per_seed: dict[str, list[float]] = {}
        boots: dict[str, np.ndarray] = {}
        n_dims = []
        for key in keys:
            x = _drop_constant(_matrix(adata, key)[sel])
            n_dims.append(x.shape[1])
            vals, boot = _metrics_once(
                x, y, strata, groups, factors, k=k, n_components=n_components,
                n_permutations=n_permutations, max_cells_trust=max_cells_trust, which=which,
                rng=np.random.default_rng(rng.integers(0, 2**63 - 1)), boot_idx=boot_idx)
            for metric, value in vals.items():
                per_seed.setdefault(metric, []).append(value)
                rows.append({"rep": name, "key": key, "metric": metric, "value": value})
            if len(keys) == 1:
                boots = boot
        entry: dict[str, float] = {"n_cells": n, "n_dims": int(np.mean(n_dims)),
                                   "n_seeds": len(keys)}
        for metric, values in per_seed.items():
            v = np.asarray(values, dtype=np.float64)
            entry[metric] = float(v.mean())
            if metric == "morans_p":
                continue
            if len(v) >= 2:
                half = stats.t.ppf(hi_q, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
                low, high = v.mean() - half, v.mean() + half
            elif metric in boots:
                b = boots[metric][np.isfinite(boots[metric])]
                low, high = np.quantile(b, lo_q), np.quantile(b, hi_q)
            else:
                low = high = float("nan")
            entry[f"{metric}_ci_low"], entry[f"{metric}_ci_high"] = float(low), float(high)
        table[name] = entry
    out = pd.DataFrame.from_dict(table, orient="index")
    out.index.name = "representation"
    values = pd.DataFrame(rows)
    out.attrs["values"] = values
    if key_added is not None:
        adata.uns[key_added] = {
            "table": out.reset_index(), "values": values,
            "params": {"reps": {k_: list(v) for k_, v in rep_keys.items()},
                       "phenotype": phenotype, "k": k, "strata_key": strata_key,
                       "groups_key": groups_key, "factors_key": factors_key,
                       "n_bootstrap": n_bootstrap, "ci": ci,
                       "n_permutations": n_permutations,
                       "n_components": n_components if n_components is not None else -1},
        }
    return out
