import numpy as np
import pytest

from cellsae.align import cosine_cost, euclidean_cost, knn_geodesic_cost, normalize_cost


def test_geodesic_is_a_metric_with_zero_diagonal(rng):
    x = rng.normal(size=(50, 4))
    c, info = knn_geodesic_cost(x, n_neighbors=8)
    assert c.shape == (50, 50)
    assert np.allclose(np.diag(c), 0)
    assert np.allclose(c, c.T)
    assert c.max() == pytest.approx(1.0)
    assert info.n_components == 1 and info.normalization == "max"


def test_disconnected_graph_is_joined_and_recorded(rng):
    x = np.concatenate([rng.normal(size=(20, 2)), rng.normal(size=(20, 2)) + 100])
    c, info = knn_geodesic_cost(x, n_neighbors=3)
    assert np.isfinite(c).all()
    assert info.n_components == 2 and info.n_joining_edges == 1 and info.warnings
    # the far cluster stays far: the bridge has the true feature distance
    assert c[:20, 20:].min() > c[:20, :20].max()
    with pytest.raises(ValueError, match="disconnected"):
        knn_geodesic_cost(x, n_neighbors=3, join_components=False)


def test_normalisations(rng):
    x = rng.normal(size=(30, 3))
    for norm in ("max", "mean", "median"):
        c, info = euclidean_cost(x, normalization=norm)
        assert info.scale > 0
    c, _ = euclidean_cost(x, normalization="mean")
    assert c.sum() / (30 * 29) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        normalize_cost(np.zeros((3, 3)), "max")
    assert cosine_cost(x)[0].shape == (30, 30)


def test_bad_representations(rng):
    x = rng.normal(size=(10, 3))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        euclidean_cost(x)
    with pytest.raises(ValueError, match="constant"):
        knn_geodesic_cost(np.ones((10, 3)))
    with pytest.raises(ValueError, match="2-D"):
        euclidean_cost(np.ones(10))
