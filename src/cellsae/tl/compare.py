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


def _metrics_once(x, y, strata, groups, factors, *, k, n_components, n_permutations,
                  max_cells_trust, which, rng) -> dict[str, float]:
    out: dict[str, float] = {}
    n = x.shape[0]
    if "knn_sd_ratio" in which:
        out["knn_sd_ratio"] = geometry.knn_sd_ratio(x, y, k=k, strata=strata).ratio
    if "morans_i" in which:
        values, weights, pvals = [], [], []
        for idx in ([np.arange(n)] if strata is None else
                    [np.flatnonzero(strata == s) for s in np.unique(strata)]):
            res = geometry.morans_i(x[idx], y[idx], k=k, n_permutations=n_permutations, seed=rng)
            values.append(res.i)
            weights.append(len(idx))
            pvals.append(res.p_value)
        out["morans_i"] = float(np.average(values, weights=weights))
        if n_permutations:
            out["morans_p"] = float(np.max(pvals))  # the weakest stratum
    if "phenotype_r2" in which:
        out["phenotype_r2"] = geometry.phenotype_r2(
            x, y, groups=groups, n_components=n_components, seed=rng).r2
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
    return out


def compare_representations(adata, reps: Sequence[str] | Mapping[str, Sequence[str]] = (
        "X_cnn", "X_sae", "X_measure"), phenotype: str = "dead", *, k: int = 5,
        strata_key: str | None = None, groups_key: str | None = None,
        factors_key: str | None = None, metrics: Sequence[str] | None = None,
        n_resamples: int = 10, subsample: float = 0.8, ci: float = 0.95,
        n_permutations: int = 199, n_components: int | None = 250, max_cells_trust: int = 2000,
        seed: SeedLike = 0, key_added: str | None = "compare_representations") -> pd.DataFrame:
    """Geometric fidelity of several representations of the same cells, with CIs.

    Parameters
    ----------
    adata : AnnData
    reps : sequence of obsm keys, or mapping name → list of obsm keys
        With a mapping, each name may list one key per training seed (e.g.
        ``{"CNN": ["X_cnn_s0", "X_cnn_s1"], "SAE": ["X_sae_s0", "X_sae_s1"]}``) and the
        interval covers the seeds. ``"X"`` means ``adata.X``.
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
    n_resamples : int
        Random subsamples of ``subsample`` × n_cells cells (without replacement, the same
        subsamples for every representation) for the interval; 0 uses seeds only.
    ci : float
        Interval level: percentiles over all (seed × subsample) draws; with no subsamples
        and ≥ 2 seeds, a t-interval over seeds.
    n_permutations : int
        Moran's I permutation test, on the full data only.
    n_components : int or None
        PCA dimension inside the R² regression (the paper's 250).
    seed : int or Generator
    key_added : str or None
        Store the table and the draws in ``uns[key_added]``; ``None`` stores nothing.

    Returns
    -------
    DataFrame indexed by representation name with, for each metric ``m``: ``m`` (the value
    on all cells, averaged over seeds), ``m_ci_low``, ``m_ci_high``; plus ``morans_p``,
    ``n_cells``, ``n_dims``. ``table.attrs["draws"]`` holds every draw (long format).
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
    if not 0 < subsample <= 1:
        raise ValueError(f"subsample must be in (0, 1], got {subsample}")
    strata_all = (obs_values(adata, strata_key, numeric=False).astype(str)
                  if strata_key is not None else None)
    groups_all = (obs_values(adata, groups_key, numeric=False).astype(str)
                  if groups_key is not None else None)
    factors_all = None
    if factors_key is not None:
        if factors_key not in adata.obsm:
            raise KeyError(f"factors {factors_key!r} not found in adata.obsm; available: "
                           f"{_available_reps(adata)}")
        factors_all = np.asarray(adata.obsm[factors_key], dtype=np.float64)
    rng = as_rng(seed)
    idx_all = np.flatnonzero(ok)
    n = len(idx_all)
    draws_idx = [("all", idx_all)] + [
        (f"subsample_{b}", np.sort(rng.choice(idx_all, int(round(subsample * n)), replace=False)))
        for b in range(n_resamples)]
    rows = []
    dims = {}
    for name, keys in rep_keys.items():
        for key in keys:
            x_full = _drop_constant(_matrix(adata, key))
            dims[name] = x_full.shape[1]
            for draw, idx in draws_idx:
                logger.debug("compare: %s (%s) %s", name, key, draw)
                vals = _metrics_once(
                    x_full[idx], y_all[idx],
                    strata_all[idx] if strata_all is not None else None,
                    groups_all[idx] if groups_all is not None else None,
                    factors_all[idx] if factors_all is not None else None,
                    k=k, n_components=n_components,
                    n_permutations=n_permutations if draw == "all" else 0,
                    max_cells_trust=max_cells_trust, which=which,
                    rng=np.random.default_rng(rng.integers(0, 2**63 - 1)))
                for metric, value in vals.items():
                    rows.append({"rep": name, "key": key, "draw": draw, "metric": metric,
                                 "value": value})
    draws = pd.DataFrame(rows)
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    table = {}
    for name in rep_keys:
        sub = draws[draws.rep == name]
        entry: dict[str, float] = {"n_cells": n, "n_dims": dims[name]}
        for metric in sub.metric.unique():
            m = sub[sub.metric == metric]
            full = m[m.draw == "all"]["value"].to_numpy()
            entry[metric] = float(full.mean())
            if metric == "morans_p":
                continue
            if n_resamples > 0:
                vals = m[m.draw != "all"]["value"].to_numpy()
                entry[f"{metric}_ci_low"], entry[f"{metric}_ci_high"] = (
                    float(np.quantile(vals, lo_q)), float(np.quantile(vals, hi_q)))
            elif len(full) >= 2:
                half = stats.t.ppf(hi_q, len(full) - 1) * full.std(ddof=1) / np.sqrt(len(full))
                entry[f"{metric}_ci_low"] = float(full.mean() - half)
                entry[f"{metric}_ci_high"] = float(full.mean() + half)
            else:
                entry[f"{metric}_ci_low"] = entry[f"{metric}_ci_high"] = float("nan")
        table[name] = entry
    out = pd.DataFrame.from_dict(table, orient="index")
    out.index.name = "representation"
    out.attrs["draws"] = draws
    if key_added is not None:
        adata.uns[key_added] = {
            "table": out.reset_index(), "draws": draws,
            "params": {"reps": {k_: list(v) for k_, v in rep_keys.items()},
                       "phenotype": phenotype, "k": k, "strata_key": strata_key,
                       "groups_key": groups_key, "factors_key": factors_key,
                       "n_resamples": n_resamples, "subsample": subsample, "ci": ci,
                       "n_permutations": n_permutations,
                       "n_components": n_components if n_components is not None else -1},
        }
    return out
