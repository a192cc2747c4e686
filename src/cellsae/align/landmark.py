"""Landmark (quantised) Gromov–Wasserstein for 100k × 100k cells in O(n · r) memory.

Each side is quantised into ``r`` anchors by k-means; anchors carry the (soft) mass of
their cells; entropic GW couples the anchors using the anchors' own geometry (a kNN
geodesic or Euclidean cost between anchors); the anchor coupling is extended to cells
through each cell's soft assignment to its few nearest anchors. The cell-level coupling
is never formed: it is ``FactorizedCoupling(left, core, right)`` with ``left (n, r)`` and
``right (m, r)`` sparse (``n_assign`` non-zeros per row), so label transfer, imputation and
barycentric projection cost O((n + m) · r).

The construction follows quantised GW (Chowdhury, Miller & Needham 2021) with a soft
instead of hard extension, which keeps the exact cell marginals: with assignment weights
``A (n, r)`` (rows sum to one) and cell weights ``w``, anchor masses are ``W = Aᵀ w`` and
``left = diag(w) A diag(1 / W)``, so ``left @ P @ rightᵀ`` has marginals ``w`` and ``v``
whenever the anchor coupling ``P`` has marginals ``W`` and ``V``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from scipy import sparse

from .._utils import as_rng
from .costs import check_representation, pairwise_cost
from .result import FactorizedCoupling, GWResult
from .solvers import check_weights, entropic_gw

logger = logging.getLogger(__name__)

__all__ = ["landmark_gw", "quantize"]


def _nearest(x, centers, k: int, block: int = 8192):
    """Squared distances and indices of the ``k`` nearest ``centers`` of every row of ``x``.

    Torch, in row blocks: memory O(block * r).
    """
    import torch

    cn = (centers * centers).sum(1)[None, :]
    dists, idx = [], []
    for s in range(0, x.shape[0], block):
        xb = x[s : s + block]
        d = torch.addmm(cn, xb, centers.T, alpha=-2)  # |c|² - 2 x·c: one fused pass
        if k == 1:
            v, i = d.min(1, keepdim=True)
        else:
            v, i = torch.topk(d, k, dim=1, largest=False)
        dists.append((v + (xb * xb).sum(1, keepdim=True)).clamp_(min=0))
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


def _kmeanspp(x: np.ndarray, r: int, rng, w: np.ndarray) -> np.ndarray:
    """Weighted k-means++ seeding: D² sampling with probability ∝ w · D², O(r · n · d)."""
    n = x.shape[0]
    idx = np.empty(r, dtype=np.int64)
    idx[0] = min(int(np.searchsorted(np.cumsum(w), rng.random() * w.sum())), n - 1)
    d2 = ((x - x[idx[0]]) ** 2).sum(1)
    for k in range(1, r):
        score = np.cumsum(w * d2)
        total = score[-1]
        idx[k] = (
            min(int(np.searchsorted(score, rng.random() * total)), n - 1)
            if total > 0
            else rng.integers(n)
        )
        np.minimum(d2, ((x - x[idx[k]]) ** 2).sum(1), out=d2)
    return x[idx]


def quantize(
    x: np.ndarray, n_landmarks: int, *, n_assign: int = 3, weights=None, seed=0, max_iter: int = 10
) -> tuple[np.ndarray, sparse.csr_matrix, np.ndarray]:
    """k-means anchors and a soft assignment of every cell to its nearest anchors.

    Weighted k-means: k-means++ seeding (D² sampling, one candidate per step) on a weighted
    subsample of ``max(10 r, 20000)`` cells, then ``max_iter`` Lloyd iterations over all
    cells in torch (row blocks; O(n · r · d) time per iteration, O(n + r · d) memory).
    100k cells into 2000 anchors take seconds rather than minutes of mini-batch k-means.

    Parameters
    ----------
    x : (n_cells, d) array
    n_landmarks : int
        Number of anchors ``r`` (clipped to ``n_cells``).
    n_assign : int
        Anchors per cell in the soft assignment (1 = hard quantisation).
    weights : (n_cells,) array, optional
        Cell weights summing to one (uniform by default).
    seed : int or numpy Generator
    max_iter : int
        Lloyd iterations after seeding (stops early when fewer than 0.1 % of the cells
        change anchor).

    Returns
    -------
    centers : (r, d) array
    assign : (n_cells, r) CSR matrix, rows sum to one
    anchor_mass : (r,) array, ``assignᵀ weights`` (sums to one)
    """
    import torch

    x = check_representation(x)
    n = x.shape[0]
    w = check_weights(weights, n, "weights")
    r = int(min(n_landmarks, n))
    if r < 2:
        raise ValueError(f"n_landmarks must be >= 2, got {n_landmarks}")
    rng = as_rng(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    if r == n:
        centers = xt.clone()
    else:
        n_sub = int(min(n, max(10 * r, 20000)))
        if n_sub < n:  # a weighted subsample, then uniform weights within it
            sub = rng.choice(n, n_sub, replace=False, p=w)
            seeds = _kmeanspp(x[sub], r, rng, np.ones(n_sub))
        else:
            seeds = _kmeanspp(x, r, rng, w)
        centers = torch.as_tensor(seeds, dtype=torch.float32)
        labels = None
        for _ in range(int(max_iter)):
            _, idx = _nearest(xt, centers, 1)
            new = idx[:, 0]
            if labels is not None and int((new != labels).sum()) <= n // 1000:
                break  # fewer than 0.1 % of the cells changed anchor
            labels = new
            lab = labels.numpy()
            onehot = sparse.csr_matrix((w, (lab, np.arange(n))), shape=(r, n))
            mass = np.asarray(onehot.sum(1)).ravel()
            sums = onehot @ x
            keep = mass > 0  # an anchor that lost all its cells stays where it was
            centers[torch.as_tensor(keep)] = torch.as_tensor(
                sums[keep] / mass[keep, None], dtype=torch.float32
            )
    s = int(min(max(n_assign, 1), r))
    d2, idx = _nearest(xt, centers, s)
    dist = d2.double().sqrt().numpy()
    idx = idx.numpy()
    centers = centers.double().numpy()
    if s == 1:
        vals = np.ones_like(dist)
    else:
        # Gaussian weights with a per-cell bandwidth: the distance to the nearest anchor,
        # floored by a global scale so cells sitting on an anchor still spread a little
        bw = np.maximum(dist[:, :1], np.median(dist[:, :1]) + 1e-12)
        vals = np.exp(-((dist**2 - dist[:, :1] ** 2) / (2 * bw**2)))
        vals /= vals.sum(1, keepdims=True)
    assign = sparse.csr_matrix(
        (vals.ravel(), idx.ravel(), np.arange(0, n * s + 1, s)), shape=(n, r)
    )
    mass = np.asarray(assign.T @ w).ravel()
    keep = mass > 0
    if not keep.all():
        # anchors that no cell chose carry no mass: drop them
        centers, assign, mass = centers[keep], assign[:, keep].tocsr(), mass[keep]
    return centers, assign, mass / mass.sum()


def landmark_gw(
    x,
    y,
    *,
    n_landmarks: int = 2000,
    n_assign: int = 3,
    cost: str = "knn_geodesic",
    cost_kwargs: dict | None = None,
    epsilon: float = 5e-3,
    p=None,
    q=None,
    seed: int = 0,
    device: Any = "auto",
    **solver_kwargs,
) -> GWResult:
    """GW coupling between two large point clouds through ``n_landmarks`` anchors per side.

    Parameters
    ----------
    x : (n, d_x) array
        Source representation (e.g. PCA of image features).
    y : (m, d_y) array
        Target representation (e.g. PCA of RNA).
    n_landmarks : int
        Anchors per side; memory is O((n + m) · n_assign + n_landmarks²).
    n_assign : int
        Anchors each cell is softly assigned to.
    cost : str
        Cost between anchors: "knn_geodesic", "euclidean", "cosine" or "sqeuclidean".
    cost_kwargs : dict, optional
        Passed to the cost builder (e.g. ``{"n_neighbors": 15}``).
    epsilon : float
        Entropic regularisation of the anchor problem.
    p, q : arrays, optional
        Cell weights (uniform by default).
    solver_kwargs
        Passed to ``entropic_gw`` (``anneal``, ``max_iter``, ``tol``, ...).

    Returns
    -------
    GWResult whose ``coupling`` is a ``FactorizedCoupling``; ``params["anchor_objective"]``
    is the GW objective between anchors.
    """
    t0 = time.perf_counter()
    x = check_representation(x, "x")
    y = check_representation(y, "y")
    rng = as_rng(seed)
    cost_kwargs = dict(cost_kwargs or {})
    cx, ax, wx = quantize(x, n_landmarks, n_assign=n_assign, weights=p, seed=rng)
    cy, ay, wy = quantize(y, n_landmarks, n_assign=n_assign, weights=q, seed=rng)
    t_quant = time.perf_counter() - t0
    C1, info1 = pairwise_cost(cx, cost, **cost_kwargs)
    C2, info2 = pairwise_cost(cy, cost, **cost_kwargs)
    anchor = entropic_gw(C1, C2, wx, wy, epsilon=epsilon, device=device, seed=seed, **solver_kwargs)
    pw = check_weights(p, x.shape[0], "p")
    qw = check_weights(q, y.shape[0], "q")
    left = sparse.diags(pw) @ ax @ sparse.diags(1.0 / wx)
    right = sparse.diags(qw) @ ay @ sparse.diags(1.0 / wy)
    core = np.asarray(anchor.coupling, dtype=np.float64)
    coupling = FactorizedCoupling(left=left.tocsr(), core=core, right=right.tocsr())
    params = {
        "solver": "landmark_gw",
        "n_landmarks": int(n_landmarks),
        "n_anchors_source": int(len(wx)),
        "n_anchors_target": int(len(wy)),
        "n_assign": n_assign,
        "cost": cost,
        "cost_kwargs": cost_kwargs,
        "cost_info_source": info1.to_dict(),
        "cost_info_target": info2.to_dict(),
        "epsilon": epsilon,
        "seed": seed,
        "anchor_objective": anchor.objective,
        "anchor_params": anchor.params,
        "seconds_quantize": t_quant,
        "seconds": time.perf_counter() - t0,
        "n_source": x.shape[0],
        "n_target": y.shape[0],
    }
    warns = list(anchor.warnings) + info1.warnings + info2.warnings
    return GWResult(
        coupling=coupling,
        objective=anchor.objective,
        converged=anchor.converged,
        params=params,
        history=anchor.history,
        warnings=warns,
    )
