"""Gene–gene similarity from expression across cells, and the gene kNN graph built on it."""

from __future__ import annotations

import logging

import numpy as np
from scipy import sparse

from .._utils import check_finite

logger = logging.getLogger(__name__)

__all__ = ["shrunk_correlation", "gene_knn_graph", "standardize_columns"]


def standardize_columns(x: np.ndarray, *, what: str = "gene") -> np.ndarray:
    """Centre each column and scale it to unit variance (population SD), as float64.

    Raises ValueError naming the constant columns, which have no correlation with anything.
    """
    x = np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expression must be a 2-D (n_cells, n_genes) array, got shape {x.shape}")
    check_finite(x, "expression")
    centred = x - x.mean(0, keepdims=True)
    sd = centred.std(0)
    constant = np.flatnonzero(sd <= 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0))))
    if constant.size:
        raise ValueError(
            f"{constant.size} {what}(s) are constant across cells (column(s) "
            f"{constant[:10].tolist()}{'...' if constant.size > 10 else ''}) and have no defined "
            f"correlation; drop them first (cellsae.tl.gene_modules drops them for you)"
        )
    return centred / sd


def shrunk_correlation(x: np.ndarray, *, shrinkage: float | str = "auto") -> tuple[np.ndarray, float]:
    """Gene–gene correlation across cells, shrunk towards the identity (Ledoit–Wolf).

    With few cells the sample correlation of many genes is noisy; the Ledoit–Wolf estimate
    on standardised expression, ``(1 - delta) * R + delta * I``, is the optimal (in expected
    Frobenius loss) convex combination of the sample correlation ``R`` and the identity.

    Parameters
    ----------
    x : (n_cells, n_genes) array
        Expression, typically log-normalised; dense or scipy sparse.
    shrinkage
        ``"auto"`` for the Ledoit–Wolf intensity estimated from the data, or a float in
        [0, 1] (0 gives the plain Pearson correlation).

    Returns
    -------
    correlation : (n_genes, n_genes) float64 array, symmetric, unit diagonal
    delta : float, the shrinkage intensity used
    """
    z = standardize_columns(x)
    n_cells, n_genes = z.shape
    if n_cells < 3:
        raise ValueError(f"need at least 3 cells to estimate gene correlations, got {n_cells}")
    if n_genes < 2:
        raise ValueError(f"need at least 2 genes to estimate gene correlations, got {n_genes}")
    if isinstance(shrinkage, str):
        if shrinkage != "auto":
            raise ValueError(f"shrinkage must be 'auto' or a float in [0, 1], got {shrinkage!r}")
        from sklearn.covariance import ledoit_wolf_shrinkage

        delta = float(ledoit_wolf_shrinkage(z, assume_centered=True))
    else:
        delta = float(shrinkage)
        if not 0.0 <= delta <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    corr = (z.T @ z) / n_cells
    corr = (1.0 - delta) * corr
    np.fill_diagonal(corr, 1.0)
    np.clip(corr, -1.0, 1.0, out=corr)
    logger.debug("gene correlation: %d cells x %d genes, Ledoit-Wolf shrinkage %.3f",
                 n_cells, n_genes, delta)
    return corr, delta


def gene_knn_graph(similarity: np.ndarray, *, k: int | None = 100, min_similarity: float = 0.0,
                   power: float = 1.0) -> sparse.csr_matrix:
    """A weighted, symmetric k-nearest-neighbour graph of genes from a similarity matrix.

    Each gene keeps its ``k`` most similar other genes whose similarity is at least
    ``min_similarity``; the edge weight is that similarity raised to ``power`` (negative
    correlations are not evidence of a shared module). The graph is symmetrised by taking
    the larger of the two directed weights.

    Parameters
    ----------
    similarity : (n_genes, n_genes) array
        Symmetric similarity, e.g. from :func:`shrunk_correlation`.
    k
        Neighbours per gene, clipped to ``n_genes - 1``; ``None`` keeps every pair (a
        complete graph). Coarse modules can only show if ``k`` is comparable to their size,
        so keep it large (the default 100, or ``None`` for a few hundred genes); it only
        bounds the graph's size for many genes.
    min_similarity
        Weaker edges are dropped: they carry almost no weight in the clustering but make it
        slow (with ``n_cells`` cells, unrelated genes correlate about ±1/sqrt(n_cells)).
    power
        Exponent on the weights; > 1 sharpens the contrast between strong and weak edges.

    Returns
    -------
    (n_genes, n_genes) scipy CSR matrix, symmetric, zero diagonal, non-negative.
    """
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {s.shape}")
    n = s.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 genes to build a gene graph, got {n}")
    if k is None:
        k = n - 1
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer or None, got {k!r}")
    if power <= 0:
        raise ValueError(f"power must be positive, got {power}")
    k = int(min(k, n - 1))
    s = s.copy()
    np.fill_diagonal(s, -np.inf)
    neighbours = np.argpartition(-s, kth=k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    cols = neighbours.ravel()
    weights = s[rows, cols]
    weights = np.where(weights >= max(min_similarity, 0.0), np.clip(weights, 0.0, None), 0.0) ** power
    graph = sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))
    graph = graph.maximum(graph.T).tocsr()
    graph.eliminate_zeros()
    return graph
