import numpy as np
import pytest
from scipy import sparse

from cellsae.align import entropic_gw, knn_geodesic_cost, landmark_gw, quantize
from cellsae.align.result import FactorizedCoupling
from cellsae.metrics.alignment import foscttm


def _curve(rng, n):
    # a 1-D branching curve seen through two different smooth maps (truth: identity)
    t = rng.uniform(0, 1, n)
    branch = rng.integers(0, 2, n)
    z = np.c_[t, t * (2 * branch - 1) * 0.6, 0.03 * rng.normal(size=n)]
    x = np.tanh(z @ rng.normal(size=(3, 6)))
    y = np.sin(z @ rng.normal(size=(3, 5)))
    return x, y


def test_quantize_weighted_kmeans_is_deterministic_and_keeps_mass(rng):
    x = np.r_[rng.normal(size=(400, 2)), rng.normal(size=(100, 2)) + 8]
    w = np.r_[np.full(400, 0.2 / 400), np.full(100, 0.8 / 100)]
    c1, a1, m1 = quantize(x, 20, weights=w, seed=3)
    c2, a2, m2 = quantize(x, 20, weights=w, seed=3)
    assert np.array_equal(c1, c2) and (a1 != a2).nnz == 0
    assert m1.sum() == pytest.approx(1) and np.allclose(np.asarray(a1.sum(1)).ravel(), 1)
    assert a1.nnz == 500 * 3
    # the heavy cluster (80 % of the mass) gets most anchors
    assert (c1[:, 0] > 4).sum() >= 10


def test_quantize_bad_input(rng):
    x = rng.normal(size=(50, 3))
    with pytest.raises(ValueError, match="n_landmarks"):
        quantize(x, 1)
    with pytest.raises(ValueError, match="entries"):
        quantize(x, 5, weights=np.full(49, 1 / 49))
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize(bad, 5)


def test_landmark_coupling_is_linear_memory_and_close_to_exact(rng):
    x, y = _curve(rng, 600)
    res = landmark_gw(
        x, y, n_landmarks=120, cost_kwargs={"n_neighbors": 10}, epsilon=5e-3, device="cpu"
    )
    T = res.coupling
    assert isinstance(T, FactorizedCoupling)
    assert sparse.issparse(T.left) and T.left.nnz <= 600 * 3 and T.core.shape[0] <= 120
    assert np.allclose(res.row_sums(), 1 / 600, atol=1e-4)
    c1, _ = knn_geodesic_cost(x, n_neighbors=10)
    c2, _ = knn_geodesic_cost(y, n_neighbors=10)
    exact = entropic_gw(c1, c2, epsilon=5e-3, device="cpu")
    f_exact = foscttm(exact.barycentric_projection(y), y)
    f_land = foscttm(res.barycentric_projection(y), y)
    assert f_exact < 0.2
    assert f_land < f_exact + 0.05


def test_landmark_bad_input(rng):
    x, y = _curve(rng, 100)
    with pytest.raises(ValueError, match="entries"):
        landmark_gw(x, y, n_landmarks=20, p=np.full(99, 1 / 99), device="cpu")
    with pytest.raises(ValueError, match="sum to 1"):
        landmark_gw(x, y, n_landmarks=20, q=np.ones(100), device="cpu")
    bad = y.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        landmark_gw(x, bad, n_landmarks=20, device="cpu")
