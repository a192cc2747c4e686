"""Intra-domain cost matrices for Gromov–Wasserstein: kNN-graph geodesic, Euclidean, cosine.

Every function takes a representation ``x : (n_cells, n_features)`` and returns a dense
``(n_cells, n_cells)`` float array with a zero diagonal, normalised so that costs from two
different modalities live on a comparable scale (GW compares distances across spaces, so
the scale matters). The normalisation used is returned in ``CostInfo`` so it can be
recorded beside the result.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy import sparse

logger = logging.getLogger(__name__)

Normalization = Literal["max", "mean", "median", "none"]

__all__ = [
    "CostInfo",
    "check_representation",
    "cosine_cost",
    "euclidean_cost",
    "knn_geodesic_cost",
    "multiscale_geodesic_cost",
    "normalize_cost",
    "pairwise_cost",
]


@dataclass
class CostInfo:
    """How a cost matrix was built (kept in ``GWResult.params``)."""

    kind: str
    normalization: str
    scale: float
    n_neighbors: int | None = None
    metric: str | None = None
    n_components: int = 1
    n_joining_edges: int = 0
    warnings: list[str] = field(default_factory=list)
    scales: list[int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_representation(x, name: str = "x", *, min_cells: int = 2) -> np.ndarray:
    """Validate a representation: 2-D, finite, at least ``min_cells`` rows, some variance.

    Constant columns are harmless for distances and are left in place; a representation
    whose rows are all identical carries no geometry and raises.
    """
    x = np.asarray(x.toarray() if sparse.issparse(x) else x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_cells, n_features) array, got shape {x.shape}")
    if x.shape[0] < min_cells:
        raise ValueError(f"{name} needs at least {min_cells} cells, got {x.shape[0]}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {x.shape})")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(1))
        raise ValueError(
            f"{name} contains NaN or Inf in {len(bad)} cell(s) (first: row {int(bad[0])}); "
            "remove or impute those cells before alignment"
        )
    if np.ptp(x, axis=0).max() == 0:
        raise ValueError(
            f"{name} is constant: every cell has the same features, so it has no geometry "
            "to align. Check that the right representation (obsm key / layer) was passed."
        )
    return x


def normalize_cost(c: np.ndarray, normalization: Normalization = "max") -> tuple[np.ndarray, float]:
    """Divide a cost matrix by its max, mean or median off-diagonal value.

    Returns
    -------
    (normalised cost, scale) with ``normalised = c / scale``.
    """
    if normalization == "none":
        return c, 1.0
    n = c.shape[0]
    if normalization == "max":
        scale = float(c.max())
    elif normalization == "mean":
        scale = float(c.sum() / max(n * n - n, 1))
    elif normalization == "median":
        off = c[~np.eye(n, dtype=bool)] if n <= 4000 else c[np.triu_indices(n, 1)]
        scale = float(np.median(off))
    else:
        raise ValueError(f"normalization must be 'max', 'mean', 'median' or 'none', got "
                         f"{normalization!r}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"cannot normalise a cost matrix whose {normalization} is {scale}; "
                         "are all cells identical?")
    return c / scale, scale


def euclidean_cost(x, *, squared: bool = False, normalization: Normalization = "max",
                   dtype=np.float64) -> tuple[np.ndarray, CostInfo]:
    """Pairwise Euclidean distances ``(n, n)`` between the rows of ``x``."""
    from scipy.spatial.distance import cdist

    x = check_representation(x)
    c = cdist(x, x, "sqeuclidean" if squared else "euclidean")
    c, scale = normalize_cost(c, normalization)
    return c.astype(dtype, copy=False), CostInfo(
        kind="sqeuclidean" if squared else "euclidean", normalization=normalization, scale=scale)


def cosine_cost(x, *, normalization: Normalization = "max",
                dtype=np.float64) -> tuple[np.ndarray, CostInfo]:
    """Pairwise cosine distances ``1 - cos(x_i, x_j)``; rows of zeros raise."""
    from scipy.spatial.distance import cdist

    x = check_representation(x)
    if (np.linalg.norm(x, axis=1) == 0).any():
        raise ValueError("cosine cost is undefined for cells whose features are all zero")
    c = np.clip(cdist(x, x, "cosine"), 0, None)
    np.fill_diagonal(c, 0)
    c, scale = normalize_cost(c, normalization)
    return c.astype(dtype, copy=False), CostInfo(kind="cosine", normalization=normalization,
                                                 scale=scale)


def _check_metric_defined(x: np.ndarray, metric: str) -> None:
    """Correlation (cosine) distance is undefined for a cell whose features are all equal
    (all zero): scikit-learn returns NaN and the neighbour search silently gives that cell
    arbitrary neighbours. Refuse, naming the cells."""
    if metric == "correlation":
        bad = np.flatnonzero(np.ptp(x, axis=1) == 0)
        what = "the same value in every feature"
    elif metric == "cosine":
        bad = np.flatnonzero(np.linalg.norm(x, axis=1) == 0)
        what = "all features zero"
    else:
        return
    if len(bad):
        raise ValueError(
            f"{len(bad)} cell(s) have {what} (first: row {int(bad[0])}), so their "
            f"{metric} distance to every other cell is undefined; drop those cells or use "
            "metric='euclidean'"
        )


def _join_components(graph: sparse.csr_matrix, x: np.ndarray, metric: str,
                     labels: np.ndarray, n_comp: int) -> tuple[sparse.csr_matrix, int]:
    """Join disconnected kNN components by their closest pairs of cells.

    Builds a minimum spanning tree over components where the weight between two components
    is the smallest feature-space distance between their cells, and adds that one edge per
    tree link. Distances along such a bridge are the true feature distance, so a
    component far away stays far away (unlike joining with an arbitrary large constant).
    """
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    members = [np.flatnonzero(labels == c) for c in range(n_comp)]
    between = np.full((n_comp, n_comp), np.inf)
    pairs: dict[tuple[int, int], tuple[int, int]] = {}
    for a in range(n_comp):
        for b in range(a + 1, n_comp):
            d = cdist(x[members[a]], x[members[b]], metric)
            i, j = np.unravel_index(np.argmin(d), d.shape)
            between[a, b] = between[b, a] = d[i, j]
            pairs[(a, b)] = (members[a][i], members[b][j])
    weights = np.where(np.isfinite(between), between + 1e-12, 0)
    tree = minimum_spanning_tree(sparse.csr_matrix(np.triu(weights))).tocoo()
    graph = graph.tolil()
    for a, b in zip(tree.row, tree.col, strict=True):
        a, b = min(a, b), max(a, b)
        i, j = pairs[(a, b)]
        w = max(between[a, b], 1e-12) if graph.dtype != bool else 1.0
        graph[i, j] = graph[j, i] = w
    return graph.tocsr(), int(tree.nnz)


def knn_geodesic_cost(x, *, n_neighbors: int = 30, metric: str = "euclidean",
                      mode: Literal["connectivity", "distance"] = "distance",
                      normalization: Normalization = "max", join_components: bool = True,
                      dtype=np.float64) -> tuple[np.ndarray, CostInfo]:
    """Shortest-path distances on the symmetrised kNN graph of ``x``.

    Parameters
    ----------
    x : (n_cells, n_features) array
    n_neighbors : int
        Neighbours per cell (clipped to ``n_cells - 1``).
    metric : str
        Any scikit-learn metric for the neighbour search ("euclidean", "correlation",
        "cosine", ...).
    mode : {"connectivity", "distance"}
        Edge weights: 1 per hop (SCOT's choice) or the feature-space distance.
    normalization : {"max", "mean", "median", "none"}
    join_components : bool
        A kNN graph can fall apart into components; shortest paths between them are then
        infinite. When True the components are bridged by their closest pairs of cells
        (a minimum spanning tree over components) and a warning is recorded; when False a
        disconnected graph raises.

    Returns
    -------
    cost : (n_cells, n_cells) array
    info : CostInfo
    """
    from scipy.sparse.csgraph import connected_components, shortest_path
    from sklearn.neighbors import kneighbors_graph

    x = check_representation(x)
    n = x.shape[0]
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    _check_metric_defined(x, metric)
    k = min(int(n_neighbors), n - 1)
    graph = kneighbors_graph(x, k, mode=mode, metric=metric, include_self=False)
    if mode == "distance":
        # exact duplicates have distance 0, which csgraph reads as "no edge"
        graph.data = np.maximum(graph.data, 1e-12)
    graph = graph.maximum(graph.T).tocsr()
    n_comp, labels = connected_components(graph, directed=False)
    info = CostInfo(kind="knn_geodesic", normalization=normalization, scale=1.0,
                    n_neighbors=k, metric=metric, n_components=int(n_comp))
    if n_comp > 1:
        if not join_components:
            raise ValueError(
                f"the {k}-nearest-neighbour graph has {n_comp} disconnected components, so "
                "geodesic distances between them are infinite; increase n_neighbors or pass "
                "join_components=True"
            )
        if mode == "connectivity":
            graph = graph.astype(np.float64)
        graph, n_edges = _join_components(graph, x, metric, labels, n_comp)
        if mode == "connectivity":
            graph.data[:] = 1.0
        msg = (f"kNN graph (k={k}) had {n_comp} components; joined them with {n_edges} "
               "bridge edge(s) between their closest cells")
        logger.warning(msg)
        info.n_joining_edges = n_edges
        info.warnings.append(msg)
    if not np.isfinite(graph.data).all():
        raise ValueError(f"the kNN graph has non-finite edge weights under metric={metric!r}; "
                         "check the representation for degenerate cells")
    c = shortest_path(graph, method="D", directed=False)
    c, scale = normalize_cost(c, normalization)
    info.scale = scale
    return c.astype(dtype, copy=False), info


def multiscale_geodesic_cost(x, *, n_neighbors=(15, 30, 50, 70, 110), metric: str = "euclidean",
                             mode: Literal["connectivity", "distance"] = "distance",
                             normalization: Normalization = "max", join_components: bool = True,
                             dtype=np.float64) -> tuple[np.ndarray, CostInfo]:
    """Average of kNN-geodesic costs over several neighbourhood sizes.

    Each scale's shortest-path matrix is normalised by ``normalization`` first, so every
    ``k`` weighs the same; the average is normalised again. Small ``k`` resolves local
    structure but can cut a manifold into far-apart pieces; large ``k`` short-circuits it.
    Averaging removes the choice of one ``k``, but not of the set of scales: on
    SNARE-seq (ATAC → RNA, correlation metric, connectivity edges) k = (30, 70, 110) gave
    FOSCTTM 0.151 / 0.150 at ε = 3e-3 / 1e-2, as good as the best single k, while
    k = (15, 30, 50, 70, 110) gave 0.22 / 0.21; on Gouwens morphology → RNA the latter
    set fell into mirror-image solutions at every ε. It is an option, not the default.

    Parameters
    ----------
    x : (n_cells, n_features) array
    n_neighbors : sequence of int
        Neighbourhood sizes (each clipped to ``n_cells - 1``; duplicates after clipping
        are dropped).
    metric, mode, normalization, join_components
        As in ``knn_geodesic_cost``.

    Returns
    -------
    cost : (n_cells, n_cells) array
    info : CostInfo with ``kind="multiscale_geodesic"`` and the ``scales`` used.
    """
    x = check_representation(x)
    ks = sorted({min(int(k), x.shape[0] - 1) for k in np.atleast_1d(n_neighbors)})
    if not ks or ks[0] < 1:
        raise ValueError(f"n_neighbors must list neighbourhood sizes >= 1, got {n_neighbors}")
    total = np.zeros((x.shape[0], x.shape[0]))
    info = CostInfo(kind="multiscale_geodesic", normalization=normalization, scale=1.0,
                    metric=metric, scales=ks)
    for k in ks:
        c, sub = knn_geodesic_cost(x, n_neighbors=k, metric=metric, mode=mode,
                                   normalization=normalization if normalization != "none"
                                   else "max", join_components=join_components)
        total += c
        info.n_components = max(info.n_components, sub.n_components)
        info.n_joining_edges += sub.n_joining_edges
        info.warnings.extend(sub.warnings)
    c, scale = normalize_cost(total / len(ks), normalization)
    info.scale = scale
    return c.astype(dtype, copy=False), info


def pairwise_cost(x, kind: str = "knn_geodesic", **kwargs) -> tuple[np.ndarray, CostInfo]:
    """Dispatch to one of the cost builders by name."""
    builders = {"knn_geodesic": knn_geodesic_cost, "geodesic": knn_geodesic_cost,
                "multiscale_geodesic": multiscale_geodesic_cost,
                "euclidean": euclidean_cost, "cosine": cosine_cost}
    if kind == "sqeuclidean":
        return euclidean_cost(x, squared=True, **kwargs)
    if kind not in builders:
        raise ValueError(f"cost kind must be one of {sorted(builders) + ['sqeuclidean']}, "
                         f"got {kind!r}")
    return builders[kind](x, **kwargs)
