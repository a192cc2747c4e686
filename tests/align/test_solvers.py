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
    x = np.concatenate(
        [
            c + rng.normal(size=(s, 3)) * (0.3 + 0.2 * i)
            for i, (c, s) in enumerate(zip(centres, sizes, strict=True))
        ]
    )
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


def test_unbalanced_mass_is_stable_and_shrinks_with_tau(rng):
    # a weak marginal penalty (tau 0.5: rho = epsilon) used to make the mass oscillate
    # (15x, then 1e-21) without converging; with the entropy taken relative to p q^T and
    # the UGW mass rescaling it converges to a mass below 1 that grows with tau
    x = rng.normal(size=(60, 5))
    y = rng.normal(size=(60, 4))
    c1, _ = euclidean_cost(x)
    c2, _ = euclidean_cost(y)
    masses = []
    for tau in (0.5, 0.9):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = entropic_gw(c1, c2, epsilon=5e-3, tau_source=tau, tau_target=tau,
                              anneal=False, device="cpu", dtype="float64")
        masses.append(float(res.coupling.sum()))
    assert 0 < masses[0] < masses[1] < 1


def test_low_rank_cross_term_within_its_certified_bound(rng):
    x, y, _ = _isometry_problem(rng, n=80, noise=0.05)
    c1, _ = knn_geodesic_cost(x, n_neighbors=10)
    c2, _ = knn_geodesic_cost(y, n_neighbors=10)
    exact = entropic_gw(c1, c2, epsilon=5e-3, approx_rank=None, device="cpu", dtype="float64")
    approx = entropic_gw(c1, c2, epsilon=5e-3, approx_rank=8, device="cpu", dtype="float64")
    assert exact.params["objective_exact"] and exact.params["objective_error_bound"] == 0
    assert not any(h["exact"] for h in approx.history)
    assert not approx.params["objective_exact"]
    bound = approx.params["objective_error_bound"]
    true_obj = gw_objective(c1, c2, approx.coupling)
    assert 0 < bound < 0.5 * true_obj
    # the corrected low-rank objective is within its certified bound of the exact one
    assert abs(approx.objective - true_obj) <= bound + 1e-12
    assert approx.objective == pytest.approx(exact.objective, rel=0.02)
    # exact polishing iterations and an exact objective on request
    pol = entropic_gw(
        c1,
        c2,
        epsilon=5e-3,
        approx_rank=8,
        polish_iter=2,
        exact_objective=True,
        device="cpu",
        dtype="float64",
    )
    assert [h["exact"] for h in pol.history[-2:]] == [True, True]
    assert pol.params["n_exact_iter"] == 2
    assert pol.objective == pytest.approx(gw_objective(c1, c2, pol.coupling), rel=1e-9)


def test_low_rank_residual_is_exact(rng):
    import torch

    from cellsae.align.solvers import _LowRank

    c, _ = euclidean_cost(rng.normal(size=(120, 5)))
    lr = _LowRank(torch.tensor(c), 6)
    direct = np.linalg.norm(c - lr.q.numpy() @ lr.m.numpy() @ lr.q.numpy().T)
    assert lr.resid == pytest.approx(direct, rel=1e-9)
    assert lr.norm == pytest.approx(np.linalg.norm(c), rel=1e-12)


def test_auto_rank_is_exact_below_threshold(rng):
    x, y, _ = _isometry_problem(rng, n=60, noise=0.05)
    c1, _ = euclidean_cost(x)
    c2, _ = euclidean_cost(y)
    res = entropic_gw(c1, c2, epsilon=1e-2, device="cpu")
    assert res.params["approx_rank"] is None and res.params["approx_rank_requested"] == "auto"


def test_overrelaxation_reaches_the_same_fixed_point(rng):
    x, y, _ = _isometry_problem(rng, n=80, noise=0.05)
    c1, _ = knn_geodesic_cost(x, n_neighbors=10)
    c2, _ = knn_geodesic_cost(y, n_neighbors=10)
    kw = dict(
        epsilon=5e-3, device="cpu", dtype="float64", tol=1e-6, inner_tol=1e-8, inner_max_iter=500
    )
    plain = entropic_gw(c1, c2, overrelaxation=1.0, **kw)
    fast = entropic_gw(c1, c2, overrelaxation=1.8, **kw)
    assert plain.converged and fast.converged
    assert np.abs(plain.coupling - fast.coupling).sum() < 1e-3
    assert fast.params["n_inner_iter"] < plain.params["n_inner_iter"]


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
    with pytest.raises(ValueError, match="sum to 1"):
        entropic_gw(c, c, q=np.full(10, 0.2), device="cpu")
    with pytest.raises(ValueError, match="non-negative"):
        entropic_gw(c, c, p=np.r_[-0.1, np.full(9, 1.1 / 9)], device="cpu")
    nan = c.copy()
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        entropic_gw(c, nan, device="cpu")
    asym = c.copy()
    asym[np.triu_indices(10, 1)] += 0.5
    with pytest.raises(ValueError, match="not symmetric"):
        entropic_gw(asym, c, device="cpu")
    with pytest.raises(ValueError, match="overrelaxation"):
        entropic_gw(c, c, overrelaxation=2.0, device="cpu")
    with pytest.raises(ValueError, match="approx_rank"):
        entropic_gw(c, c, approx_rank="big", device="cpu")
    with pytest.raises(ValueError, match="feature_cost"):
        entropic_gw(c, c, feature_cost=np.zeros((10, 9)), alpha=0.5, device="cpu")
    with pytest.raises(ValueError, match="needs a feature_cost"):
        entropic_gw(c, c, alpha=0.5, device="cpu")


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


@pytest.mark.parametrize("eps", [1e-2, 1e-4])
def test_stabilised_sinkhorn_matches_its_potentials_at_small_epsilon(eps):
    import torch

    from cellsae.align.solvers import _init_exp_floor, _sinkhorn_inplace, _sinkhorn_log

    _init_exp_floor()
    rng = np.random.default_rng(0)
    n = 40
    G = torch.tensor(rng.uniform(0, 1, (n, n)))  # exp(-G / 1e-4) underflows float64 too
    p = torch.full((n,), 1 / n, dtype=torch.float64)
    zero = torch.zeros(n, dtype=torch.float64)
    args = (zero, zero, p.log(), p.log(), p, p, eps, 1, 1, 3000, 1e-10)
    out = _sinkhorn_inplace(-G / eps, *args, 1.8)
    if out is None:  # the scaling kernel underflowed: the log-domain solve takes over
        out = _sinkhorn_log(-G / eps, zero, zero, p.log(), p.log(), eps, 1, 1, 3000, 1e-10)
    T, f, g, _, err = out[:5]
    assert torch.isfinite(T).all()
    # rows are exact after the last update; the columns are off by the reported error,
    # which is small (near eps = 1e-4 this is almost an assignment problem: slow Sinkhorn)
    assert torch.allclose(T.sum(1), p, atol=1e-8)
    assert float((T.sum(0) - p).abs().sum()) <= err + 1e-9 and err < (1e-8 if eps > 1e-3 else 1e-2)
    # the returned coupling is the Gibbs kernel of the returned potentials
    assert torch.allclose(T, torch.exp((f[:, None] + g[None, :] - G) / eps), atol=1e-10)


def test_absorbing_sinkhorn_stays_in_the_scaling_domain_at_small_epsilon():
    # float32 Gibbs kernel of a cost spanning 333 eps underflows: the scalings must be
    # absorbed into the potentials (kernel rebuilt) rather than the solve going log-domain
    import torch

    from cellsae.align.solvers import _init_exp_floor, _sinkhorn_inplace

    _init_exp_floor()
    rng = np.random.default_rng(1)
    n = 50
    G = torch.tensor(rng.uniform(0, 1, (n, n)), dtype=torch.float32)
    eps = 3e-3
    p = torch.full((n,), 1 / n)
    zero = torch.zeros(n)
    rebuilds = []

    def rebuild(f, g):
        rebuilds.append(1)
        return (f[:, None] + g[None, :] - G) / eps

    out = _sinkhorn_inplace(
        -G / eps, zero, zero, p.log(), p.log(), p, p, eps, 1, 1, 3000, 1e-5, 1.8, rebuild=rebuild
    )
    assert out is not None
    T, f, g, _, err, used_log = out
    assert rebuilds and not used_log
    assert torch.isfinite(T).all()
    assert torch.allclose(T.sum(1), p, atol=1e-6)
    assert float((T.sum(0) - p).abs().sum()) <= err + 1e-6 and err < 1e-5
    gibbs = torch.exp((f.double()[:, None] + g.double()[None, :] - G.double()) / eps)
    assert torch.allclose(T.double(), gibbs, rtol=1e-3, atol=1e-9)
