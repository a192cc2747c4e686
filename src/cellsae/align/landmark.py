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


def quantize(x: np.ndarray, n_landmarks: int, *, n_assign: int = 3, weights=None,
             seed=0, max_iter: int = 30) -> tuple[np.ndarray, sparse.csr_matrix, np.ndarray]:
    """k-means anchors and a soft assignment of every cell to its nearest anchors.

    Parameters
    ----------
    x : (n_cells, d) array
    n_landmarks : int
        Number of anchors ``r`` (clipped to ``n_cells``).
    n_assign : int
        Anchors per cell in the soft assignment (1 = hard quantisation).
    weights : (n_cells,) array, optional
        Cell weights summing to one (uniform by default).

    Returns
    -------
    centers : (r, d) array
    assign : (n_cells, r) CSR matrix, rows sum to one
    anchor_mass : (r,) array, ``assignᵀ weights`` (sums to one)
    """
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.neighbors import NearestNeighbors

    x = check_representation(x)
    n = x.shape[0]
    w = check_weights(weights, n, "weights")
    r = int(min(n_landmarks, n))
    if r < 2:
        raise ValueError(f"n_landmarks must be >= 2, got {n_landmarks}")
    rng = as_rng(seed)
    if r == n:
        centers = x.copy()
    else:
        km = MiniBatchKMeans(n_clusters=r, batch_size=max(4096, 3 * r), n_init=1,
                             max_iter=max_iter, random_state=int(rng.integers(2**31 - 1)),
                             init="k-means++", init_size=min(n, max(3 * r, 10000)))
        km.fit(x, sample_weight=w * n)
        centers = km.cluster_centers_
    s = int(min(max(n_assign, 1), r))
    dist, idx = NearestNeighbors(n_neighbors=s).fit(centers).kneighbors(x)
    if s == 1:
        vals = np.ones_like(dist)
    else:
        # Gaussian weights with a per-cell bandwidth: the distance to the nearest anchor,
        # floored by a global scale so cells sitting on an anchor still spread a little
        bw = np.maximum(dist[:, :1], np.median(dist[:, :1]) + 1e-12)
        vals = np.exp(-((dist**2 - dist[:, :1] ** 2) / (2 * bw**2)))
        vals /= vals.sum(1, keepdims=True)
    assign = sparse.csr_matrix((vals.ravel(), idx.ravel(), np.arange(0, n * s + 1, s)),
                               shape=(n, r))
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
    anchor = entropic_gw(C1, C2, wx, wy, epsilon=epsilon, device=device, seed=seed,
                         **solver_kwargs)
    pw = check_weights(p, x.shape[0], "p")
    qw = check_weights(q, y.shape[0], "q")
    left = sparse.diags(pw) @ ax @ sparse.diags(1.0 / wx)
    right = sparse.diags(qw) @ ay @ sparse.diags(1.0 / wy)
    core = np.asarray(anchor.coupling, dtype=np.float64)
    coupling = FactorizedCoupling(left=left.tocsr(), core=core, right=right.tocsr())
    params = {"solver": "landmark_gw", "n_landmarks": int(n_landmarks),
              "n_anchors_source": int(len(wx)), "n_anchors_target": int(len(wy)),
              "n_assign": n_assign, "cost": cost, "cost_kwargs": cost_kwargs,
              "cost_info_source": info1.to_dict(), "cost_info_target": info2.to_dict(),
              "epsilon": epsilon, "seed": seed, "anchor_objective": anchor.objective,
              "anchor_params": anchor.params, "seconds_quantize": t_quant,
              "seconds": time.perf_counter() - t0, "n_source": x.shape[0],
              "n_target": y.shape[0]}
    warns = list(anchor.warnings) + info1.warnings + info2.warnings
    return GWResult(coupling=coupling, objective=anchor.objective, converged=anchor.converged,
                    params=params, history=anchor.history, warnings=warns)
