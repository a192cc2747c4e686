import warnings

import numpy as np
import pytest

from cellsae.align import (
    ConvergenceWarning,
    GWResult,
    entropic_gw,
    euclidean_cost,
    gw_objective,
    knn_geodesic_cost,
)


def _isometry_problem(rng, n=60, noise=0.0):
    # an asymmetric cloud: clusters of different sizes and spreads, so the isometry is unique
    centres = rng.normal(size=(4, 3)) * 3
    sizes = [25, 15, 12, n - 52]
    x = np.concatenate([c + rng.normal(size=(s, 3)) * (0.3 + 0.2 * i)
                        for i, (c, s) in enumerate(zip(centres, sizes, strict=True))])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    perm = rng.permutation(n)
    y = (x @ q)[perm] + noise * rng.normal(size=x.shape)
    return x, y, perm


def test_recovers_a_known_isometry(rng):
    x, y, perm = _isometry_problem(rng)
    c1, _ = euclidean_cost(x)
    c2, _ = euclidean_cost(y)
    res = entropic_gw(c1, c2, epsilon=1e-3, device="cpu")
    assert isinstance(res, GWResult)
    assert res.converged
    truth = np.argsort(perm)  # source i sits at row truth[i] of y
    assert (res.coupling.argmax(1) == truth).mean() > 0.9


def test_marginals_and_objective(rng):
    x, y, _ = _isometry_problem(rng, noise=0.05)
    c1, _ = euclidean_cost(x)
    c2, _ = euclidean_cost(y)
    p = rng.uniform(0.5, 1.5, len(x))
    p /= p.sum()
    res = entropic_gw(c1, c2, p, epsilon=5e-3, device="cpu", dtype="float64")
    assert np.allclose(res.coupling.sum(1), p, atol=1e-4)
    assert np.allclose(res.coupling.sum(0), 1 / len(y), atol=1e-4)
    assert res.objective == pytest.approx(gw_objective(c1, c2, res.coupling), rel=1e-6)
    assert res.history and all("epsilon" in h for h in res.history)


def test_permutation_equivariance(rng):
    x, y, _ = _isometry_problem(rng, noise=0.05)
    c1, _ = euclidean_cost(x)
    c2, _ = euclidean_cost(y)
    res = entropic_gw(c1, c2, epsilon=1e-2, device="cpu", dtype="float64")
    perm = rng.permutation(len(x))
    res_p = entropic_gw(c1[np.ix_(perm, perm)], c2, epsilon=1e-2, device="cpu", dtype="float64")
    assert np.abs(res_p.coupling - res.coupling[perm]).sum() < 1e-2


def test_matches_pot_objective(rng):
    ot = pytest.importorskip("ot")
    x, y, _ = _isometry_problem(rng, n=80, noise=0.1)
    c1, _ = knn_geodesic_cost(x, n_neighbors=10)
    c2, _ = knn_geodesic_cost(y, n_neighbors=10)
    eps = 5e-3
    ours = entropic_gw(c1, c2, epsilon=eps, device="cpu", dtype="float64", tol=1e-6)
    t_pot = ot.gromov.entropic_gromov_wasserstein(c1, c2, epsilon=eps)
    pot_obj = gw_objective(c1, c2, t_pot)
    assert abs(ours.objective - pot_obj) / pot_obj < 0.01


def test_fused_and_semirelaxed(rng):
    x, y, perm = _isometry_problem(rng, noise=0.05)
    c1, _ = euclidean_cost(x)
    c2, _ = euclidean_cost(y)
    # fused: a feature cost that knows the truth pulls the coupling to it even at alpha 0.5
    m = np.ones((len(x), len(y)))
    m[np.arange(len(x)), np.argsort(perm)] = 0
    res = entropic_gw(c1, c2, epsilon=1e-2, feature_cost=m, alpha=0.5, device="cpu")
    assert (res.coupling.argmax(1) == np.argsort(perm)).mean() > 0.95
    # semi-relaxed: only the source marginal is enforced
    res = entropic_gw(c1, c2, epsilon=1e-2, tau_target=0.0, device="cpu", dtype="float64")
    assert np.allclose(res.coupling.sum(1), 1 / len(x), atol=1e-6)
    unb = entropic_gw(c1, c2, epsilon=1e-2, tau_source=0.9, tau_target=0.9, device="cpu")
    assert np.isfinite(unb.coupling).all() and unb.coupling.sum() > 0


def test_low_rank_phase_then_exact_polish(rng):
    x, y, _ = _isometry_problem(rng, n=80, noise=0.05)
    c1, _ = euclidean_cost(x)
    c2, _ = euclidean_cost(y)
    exact = entropic_gw(c1, c2, epsilon=5e-3, device="cpu", dtype="float64")
    approx = entropic_gw(c1, c2, epsilon=5e-3, approx_rank=8, device="cpu", dtype="float64")
    assert any(not h["exact"] for h in approx.history)
    assert approx.history[-1]["exact"]
    assert approx.objective == pytest.approx(exact.objective, rel=0.02)


def test_bad_inputs(rng):
    c = euclidean_cost(rng.normal(size=(10, 2)))[0]
    with pytest.raises(ValueError, match="sum to 1"):
        entropic_gw(c, c, np.ones(10), device="cpu")
    with pytest.raises(ValueError, match="entries"):
        entropic_gw(c, c, np.ones(9) / 9, device="cpu")
    bad = c.copy()
    bad[0, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        entropic_gw(bad, c, device="cpu")
    with pytest.raises(ValueError, match="square"):
        entropic_gw(c[:5], c, device="cpu")
    with pytest.raises(ValueError, match="epsilon"):
        entropic_gw(c, c, epsilon=0, device="cpu")


def test_tiny_epsilon_stays_finite_or_fails_clearly(rng):
    x, y, _ = _isometry_problem(rng, n=60, noise=0.05)
    c1, _ = euclidean_cost(x)
    c2, _ = euclidean_cost(y)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = entropic_gw(c1, c2, epsilon=1e-7, device="cpu", max_iter=30)
    except FloatingPointError as err:
        assert "epsilon" in str(err)
    else:
        assert np.isfinite(res.coupling).all()
        # either the marginals were reached, or the result says they were not
        assert abs(res.coupling.sum() - 1) < 1e-3 or res.warnings


def test_non_convergence_is_recorded(rng):
    x, y, _ = _isometry_problem(rng, n=60, noise=0.05)
    c1, _ = euclidean_cost(x)
    c2, _ = euclidean_cost(y)
    with pytest.warns(ConvergenceWarning):
        res = entropic_gw(c1, c2, epsilon=1e-3, max_iter=2, device="cpu")
    assert not res.converged
    assert any("did not converge" in w for w in res.warnings)
