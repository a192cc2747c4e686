"""Recovery of known generative factors by the dimensions of a representation.

Used on the synthetic world, whose visual factors are known: does each true factor have a
representation dimension (an SAE latent, a CNN channel) that tracks it? Pure functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

logger = logging.getLogger(__name__)

__all__ = ["FactorMatch", "factor_correlations", "match_factors"]


def _columns_dense(x, name: str) -> np.ndarray:
    if sparse.issparse(x):
        x = x.toarray()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_cells, n_columns), got shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values; remove or impute them first")
    return x


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    sd = np.sqrt((x**2).sum(0))
    out = np.zeros_like(x)
    ok = sd > 0
    out[:, ok] = x[:, ok] / sd[ok]  # constant columns correlate 0 with everything
    return out


def factor_correlations(z, factors, *, method: str = "spearman", absolute: bool = True,
                        chunk: int = 2048) -> np.ndarray:
    """Absolute correlation of every representation dimension with every true factor.

    Parameters
    ----------
    z : (n_cells, n_dims) array or sparse matrix
        Representation (e.g. SAE codes). Densified ``chunk`` columns at a time.
    factors : (n_cells, n_factors) array
    method : {"spearman", "pearson"}
        Spearman (rank) correlation is the default: an SAE latent is a ReLU-like,
        monotone but non-linear read-out of a factor.
    absolute : bool
        Return |correlation| (default) or the signed correlation.

    Returns
    -------
    (n_dims, n_factors) array of |correlation| in [0, 1] (signed in [-1, 1] if not
    ``absolute``); constant columns give 0.
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    f = _columns_dense(factors, "factors")
    n = f.shape[0]
    if z.shape[0] != n:
        raise ValueError(f"z has {z.shape[0]} rows but factors has {n}; rows must be the same cells")
    if n < 3:
        raise ValueError(f"need at least 3 cells to correlate, got {n}")
    if method == "spearman":
        f = rankdata(f, axis=0)
    fs = _standardise(f)
    out = np.empty((z.shape[1], f.shape[1]))
    zc = z.tocsc() if sparse.issparse(z) else z
    for start in range(0, z.shape[1], chunk):
        block = _columns_dense(zc[:, start:start + chunk], "z")
        if method == "spearman":
            block = rankdata(block, axis=0)
        out[start:start + block.shape[1]] = _standardise(block).T @ fs
    out = np.clip(out, -1.0, 1.0)
    return np.abs(out) if absolute else out


@dataclass(frozen=True)
class FactorMatch:
    """One-to-one matching of representation dimensions to true factors."""

    mcc: float  # mean over factors of the matched |correlation| (unmatched factors count 0)
    matched_dim: np.ndarray  # (n_factors,) dimension matched to each factor, -1 if none
    matched_corr: np.ndarray  # (n_factors,) |correlation| of that match
    best_dim: np.ndarray  # (n_factors,) most correlated dimension, matching ignored
    best_corr: np.ndarray  # (n_factors,)
    n_recovered: int  # factors whose best dimension reaches `threshold`
    threshold: float
    method: str
    factor_names: list[str] | None = None

    def to_dict(self) -> dict:
        names = self.factor_names or [str(i) for i in range(len(self.best_corr))]
        return {
            "mcc": self.mcc, "n_recovered": self.n_recovered, "threshold": self.threshold,
            "method": self.method,
            "factors": {nm: {"matched_dim": int(m), "matched_corr": float(c),
                             "best_dim": int(b), "best_corr": float(bc)}
                        for nm, m, c, b, bc in zip(names, self.matched_dim, self.matched_corr,
                                                   self.best_dim, self.best_corr, strict=True)},
        }


def match_factors(z, factors, *, method: str = "spearman", threshold: float = 0.8,
                  factor_names=None) -> FactorMatch:
    """Match representation dimensions to true factors and score the recovery.

    MCC (mean correlation coefficient) is the mean, over factors, of the |correlation|
    between each factor and the dimension assigned to it by a one-to-one (Hungarian)
    matching that maximises the total |correlation|. When there are fewer dimensions than
    factors, unmatched factors contribute 0. ``n_recovered`` counts factors whose single
    most correlated dimension (no one-to-one constraint) reaches ``threshold``.

    Parameters
    ----------
    z : (n_cells, n_dims) array or sparse matrix
    factors : (n_cells, n_factors) array
    method : {"spearman", "pearson"}
    threshold : float
        Correlation for a factor to count as recovered (0.8 by default).
    factor_names : sequence of str, optional

    Returns
    -------
    FactorMatch
    """
    corr = factor_correlations(z, factors, method=method)
    n_dims, n_factors = corr.shape
    if n_dims == 0:
        raise ValueError("z has no dimensions (all latents filtered out?)")
    if factor_names is not None and len(factor_names) != n_factors:
        raise ValueError(f"factor_names has {len(factor_names)} names for {n_factors} factors")
    rows, cols = linear_sum_assignment(-corr)
    matched_dim = np.full(n_factors, -1)
    matched_corr = np.zeros(n_factors)
    matched_dim[cols] = rows
    matched_corr[cols] = corr[rows, cols]
    best_dim = corr.argmax(0)
    best_corr = corr.max(0)
    return FactorMatch(
        mcc=float(matched_corr.mean()), matched_dim=matched_dim, matched_corr=matched_corr,
        best_dim=best_dim, best_corr=best_corr,
        n_recovered=int((best_corr >= threshold).sum()), threshold=float(threshold),
        method=method, factor_names=list(factor_names) if factor_names is not None else None,
    )
