"""Module scores against other per-cell features (e.g. SAE latents): correlation tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import rankdata

__all__ = ["correlate_scores", "top_correlated"]


def _as_dense(x, name: str) -> np.ndarray:
    x = x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_cells, n) array, got shape {x.shape}")
    return x.astype(np.float64, copy=False)


def correlate_scores(scores, features, *, method: str = "spearman") -> np.ndarray:
    """Correlation of every module score with every feature across cells.

    Parameters
    ----------
    scores : (n_cells, n_modules) array
        Module scores per cell (e.g. from :func:`cellsae.tl.module_scores`).
    features : (n_cells, n_features) array or sparse matrix
        E.g. SAE latent activations of the same cells, in the same order.
    method
        ``"spearman"`` (rank; robust to the sparse, skewed activations of SAE latents) or
        ``"pearson"``.

    Returns
    -------
    (n_modules, n_features) array; 0 where a score or feature is constant.
    """
    s = _as_dense(scores, "scores")
    f = _as_dense(features, "features")
    if s.shape[0] != f.shape[0]:
        raise ValueError(f"scores has {s.shape[0]} cells but features has {f.shape[0]}; they "
                         "must be the same cells in the same order")
    if method == "spearman":
        s = np.apply_along_axis(rankdata, 0, s)
        f = np.apply_along_axis(rankdata, 0, f)
    elif method != "pearson":
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")

    def _z(a):
        a = a - a.mean(0)
        sd = a.std(0)
        return np.divide(a, sd, out=np.zeros_like(a), where=sd > 0)

    return _z(s).T @ _z(f) / s.shape[0]


def top_correlated(correlation: np.ndarray, module_names: Sequence[str],
                   feature_names: Sequence[str], *, n_top: int = 5) -> pd.DataFrame:
    """The ``n_top`` features most positively correlated with each module, as a long table.

    Returns a DataFrame with columns ``module, rank, feature, correlation``.
    """
    correlation = np.asarray(correlation)
    if correlation.shape != (len(module_names), len(feature_names)):
        raise ValueError(f"correlation has shape {correlation.shape}, expected "
                         f"({len(module_names)}, {len(feature_names)})")
    rows = []
    for i, module in enumerate(module_names):
        order = np.argsort(-correlation[i])[:n_top]
        for rank, j in enumerate(order, start=1):
            rows.append({"module": module, "rank": rank, "feature": feature_names[j],
                         "correlation": float(correlation[i, j])})
    return pd.DataFrame(rows, columns=["module", "rank", "feature", "correlation"])
