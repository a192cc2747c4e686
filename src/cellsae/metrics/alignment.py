"""Scores for cross-modal alignments with a known pairing: FOSCTTM, label transfer."""

from __future__ import annotations

import numpy as np

__all__ = ["foscttm", "foscttm_from_scores", "label_transfer_accuracy"]


def foscttm(x: np.ndarray, y: np.ndarray, *, block: int = 2048) -> float:
    """Fraction of samples closer than the true match, averaged over both directions.

    Parameters
    ----------
    x, y : (n_cells, n_dims) arrays
        Row i of ``x`` and row i of ``y`` are the same cell, in one shared space.

    Returns
    -------
    float in [0, 1]; 0 is a perfect alignment, about 0.5 is chance. Computed in row
    blocks, so memory is O(block * n_cells).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must be 2-D with the same shape, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite (a cell that received no mass projects to NaN)")
    n = x.shape[0]
    true = ((x - y) ** 2).sum(1)
    xx, yy = (x**2).sum(1), (y**2).sum(1)
    # the expanded distances below carry rounding error; ties within it are not "closer"
    true = true - 1e-9 * (xx.mean() + yy.mean() + 1e-300)
    frac_x = np.empty(n)
    frac_y_counts = np.zeros(n)
    for s in range(0, n, block):
        e = min(s + block, n)
        d = xx[s:e, None] + yy[None, :] - 2 * x[s:e] @ y.T   # d[i, j] = |x_i - y_j|²
        frac_x[s:e] = (d < true[s:e, None]).sum(1)
        frac_y_counts += (d < true[None, :]).sum(0)
    denom = max(n - 1, 1)
    return float((frac_x.mean() + frac_y_counts.mean()) / 2 / denom)


def foscttm_from_scores(scores: np.ndarray, *, higher_is_closer: bool = True) -> float:
    """FOSCTTM from a square score matrix whose diagonal holds the true pairs.

    ``scores[i, j]`` rates how close source i is to target j (a coupling, a similarity, or
    a distance with ``higher_is_closer=False``).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"scores must be square (n, n), got {s.shape}")
    if not higher_is_closer:
        s = -s
    n = s.shape[0]
    diag = np.diag(s)
    rows = (s > diag[:, None]).sum(1)
    cols = (s > diag[None, :]).sum(0)
    return float((rows.mean() + cols.mean()) / 2 / max(n - 1, 1))


def label_transfer_accuracy(predicted, truth) -> float:
    """Fraction of cells whose transferred label equals the true label."""
    predicted = np.asarray(predicted).astype(str)
    truth = np.asarray(truth).astype(str)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted and truth differ in shape: {predicted.shape} vs {truth.shape}")
    return float((predicted == truth).mean())
