import numpy as np
import pytest
from scipy import sparse

from cellsae.pathways import gene_knn_graph, shrunk_correlation


def test_unshrunk_correlation_is_pearson(rng):
    x = rng.normal(size=(50, 8))
    corr, delta = shrunk_correlation(x, shrinkage=0.0)
    assert delta == 0.0
    np.testing.assert_allclose(corr, np.corrcoef(x, rowvar=False), atol=1e-10)


def test_ledoit_wolf_shrinks_more_with_fewer_cells(rng):
    factor = rng.normal(size=(2000, 1))
    x = factor * rng.uniform(0.3, 1.0, size=30) + rng.normal(size=(2000, 30))
    _, many = shrunk_correlation(x)
    corr, few = shrunk_correlation(x[:15])
    assert 0.0 <= many < few <= 1.0
    np.testing.assert_allclose(np.diag(corr), 1.0)
    np.testing.assert_allclose(corr, corr.T)
    assert np.abs(corr[~np.eye(30, dtype=bool)]).max() < 1.0


def test_sparse_input_matches_dense(rng):
    x = rng.poisson(1.0, size=(40, 6)).astype(float)
    a, _ = shrunk_correlation(x)
    b, _ = shrunk_correlation(sparse.csr_matrix(x))
    np.testing.assert_allclose(a, b)


def test_constant_gene_and_bad_shapes_are_named(rng):
    x = rng.normal(size=(20, 4))
    x[:, 2] = 3.0
    with pytest.raises(ValueError, match=r"constant across cells \(column\(s\) \[2\]\)"):
        shrunk_correlation(x)
    with pytest.raises(ValueError, match="at least 3 cells"):
        shrunk_correlation(rng.normal(size=(2, 4)))
    with pytest.raises(ValueError, match="shrinkage must be in"):
        shrunk_correlation(rng.normal(size=(20, 4)), shrinkage=1.5)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        shrunk_correlation(x)


def test_knn_graph_symmetric_non_negative_and_bounded(rng):
    x = rng.normal(size=(100, 1)) * rng.uniform(-1, 1, size=25) + rng.normal(size=(100, 25))
    corr, _ = shrunk_correlation(x)
    graph = gene_knn_graph(corr, k=4)
    assert sparse.issparse(graph)
    assert abs(graph - graph.T).max() == 0
    assert graph.diagonal().sum() == 0
    assert graph.data.min() > 0
    assert (graph.getnnz(axis=1) >= 1).sum() > 0
    full = gene_knn_graph(corr, k=None, min_similarity=-1)
    assert full.nnz <= 25 * 24
    strong = gene_knn_graph(corr, k=None, min_similarity=0.5)
    assert strong.nnz == 0 or strong.data.min() >= 0.5


def test_knn_graph_is_permutation_equivariant(rng):
    x = rng.normal(size=(60, 12))
    x[:, 1] += x[:, 0]
    corr, _ = shrunk_correlation(x)
    perm = rng.permutation(12)
    a = gene_knn_graph(corr, k=3).toarray()
    b = gene_knn_graph(corr[np.ix_(perm, perm)], k=3).toarray()
    np.testing.assert_allclose(a[np.ix_(perm, perm)], b)


def test_knn_graph_bad_arguments():
    with pytest.raises(ValueError, match="square"):
        gene_knn_graph(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="k must be"):
        gene_knn_graph(np.eye(3), k=0)
