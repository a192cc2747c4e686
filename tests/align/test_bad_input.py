"""Bad input to the GW-map layer fails early with a message that names the problem, or
leaves a warning in the result; never silent garbage."""

import anndata as ad
import numpy as np
import pytest

from cellsae.align import ConvergenceWarning, knn_geodesic_cost, multiscale_geodesic_cost, select_gw
from cellsae.tl.align import gw_map


def _pair(rng, n=60, m=50):
    x = rng.normal(size=(n, 4))
    y = rng.normal(size=(m, 5))
    return x, y


def _adatas(rng, n=60, m=50):
    img = ad.AnnData(X=rng.normal(size=(n, 6)).astype(np.float32))
    counts = rng.poisson(3.0, size=(m, 40)).astype(np.float32)
    counts[:, 0] += 1  # no empty cells
    rna = ad.AnnData(X=counts)
    return img, rna


def test_weights_must_match_cell_counts_and_sum_to_one(rng):
    x, y = _pair(rng)
    with pytest.raises(ValueError, match="p \\(source weights\\) has 10 entries.*60 cells"):
        select_gw(x, y, p=np.full(10, 0.1), device="cpu")
    with pytest.raises(ValueError, match="sum to 1"):
        select_gw(x, y, q=np.full(50, 1.0), device="cpu")
    img, rna = _adatas(rng)
    with pytest.raises(ValueError, match="weights_rna .* 49 entries but the AnnData has 50"):
        gw_map(img, rna, weights_rna=np.full(49, 1 / 49), device="cpu")
    with pytest.raises(KeyError, match="not a column of obs"):
        gw_map(img, rna, weights_img="nope", device="cpu")


def test_nan_and_constant_features(rng):
    img, rna = _adatas(rng)
    img.X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gw_map(img, rna, device="cpu")
    img, rna = _adatas(rng)
    img.X[:] = 1.0
    with pytest.raises(ValueError, match="constant"):
        gw_map(img, rna, n_pcs=6, device="cpu")
    img, rna = _adatas(rng)
    rna.X[:] = 0
    with pytest.raises(ValueError, match="zero counts"):
        gw_map(img, rna, device="cpu")
    # one cell with equal values in every feature: correlation distance is undefined
    x, _ = _pair(rng)
    x[7] = 0.5
    with pytest.raises(ValueError, match="row 7.*correlation"):
        knn_geodesic_cost(x, metric="correlation", n_neighbors=5)
    with pytest.raises(ValueError, match="correlation"):
        multiscale_geodesic_cost(x, metric="correlation", n_neighbors=(5, 10))
    # constant columns are harmless for distances
    x2 = np.c_[rng.normal(size=(30, 3)), np.ones(30)]
    assert np.isfinite(knn_geodesic_cost(x2, n_neighbors=5)[0]).all()


def test_disconnected_graph_is_joined_with_a_warning_in_the_result(rng):
    x = np.concatenate([rng.normal(size=(20, 3)), rng.normal(size=(20, 3)) + 50])
    y = np.concatenate([rng.normal(size=(20, 3)), rng.normal(size=(20, 3)) + 50])
    res = select_gw(
        x,
        y,
        n_neighbors=(4,),
        epsilons=(5e-2,),
        metric="euclidean",
        mode="distance",
        device="cpu",
        max_iter=50,
    )
    assert any("components" in w for w in res.warnings)
    assert res.params["cost_info_source"]["n_components"] == 2
    c, info = multiscale_geodesic_cost(x, n_neighbors=(3, 4))
    assert np.isfinite(c).all() and info.n_joining_edges == 2 and info.scales == [3, 4]


def test_non_converged_coupling_warns_and_is_recorded(rng):
    x, y = _pair(rng)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = select_gw(
            x, y, n_neighbors=(10,), epsilons=(5e-3,), metric="euclidean", device="cpu", max_iter=2
        )
    assert not res.converged
    assert any("did not converge" in w for w in res.warnings)
    assert "did not converge" in " ".join(res.to_dict()["warnings"])


def test_unconverged_candidate_is_not_chosen(rng, monkeypatch):
    from cellsae.align import selection

    centres = np.array([[0.0, 0, 0], [8, 0, 0], [0, 12, 0]])
    lab = np.repeat(np.arange(3), [25, 20, 15])
    x = centres[lab] + rng.normal(size=(60, 3))
    y = x @ np.linalg.qr(rng.normal(size=(3, 3)))[0]
    real = selection.entropic_gw

    def flaky(c1, c2, p, q, *, epsilon, **kw):  # the smallest ε "fails to converge"
        res = real(c1, c2, p, q, epsilon=epsilon, **kw)
        if epsilon < 1e-3:
            res.converged = False
        return res

    monkeypatch.setattr(selection, "entropic_gw", flaky)
    res = select_gw(
        x,
        y,
        n_neighbors=(10,),
        epsilons=(5e-4, 2e-2, 5e-2),
        metric="euclidean",
        mode="distance",
        device="cpu",
    )
    cands = res.selection["candidates"]
    assert not cands[0]["converged"] and res.converged
    assert res.selection["chosen"]["epsilon"] in (2e-2, 5e-2)


def test_bad_grids(rng):
    x, y = _pair(rng)
    with pytest.raises(ValueError, match="epsilons"):
        select_gw(x, y, epsilons=(), device="cpu")
    with pytest.raises(ValueError, match="n_neighbors"):
        select_gw(x, y, n_neighbors=(), device="cpu")
    img, rna = _adatas(rng)
    with pytest.raises(ValueError, match="positive"):
        gw_map(img, rna, epsilon=(0.0, 1e-2), device="cpu")
    with pytest.raises(ValueError, match="n_neighbors must"):
        multiscale_geodesic_cost(x, n_neighbors=(0,))


def test_tiny_epsilon_never_gives_silent_garbage(rng):
    # exp(-cost / 1e-7) underflows every kernel entry: the solve must stay finite and say
    # that it did not converge (and, when the column marginals are off, by how much), or
    # raise; and a grid that also holds workable epsilons must not choose the tiny one
    x, y = _pair(rng)
    with pytest.warns(ConvergenceWarning):
        res = select_gw(x, y, n_neighbors=(10,), epsilons=(1e-7,), metric="euclidean",
                        device="cpu", max_iter=60)
    t = res.dense()
    assert np.isfinite(t).all() and not res.converged
    assert np.allclose(t.sum(1), 1 / 60, atol=1e-6)
    assert any("did not converge" in w for w in res.warnings)
    if not np.allclose(t.sum(0), 1 / 50, atol=1e-4):
        assert any("marginal error" in w for w in res.warnings)
    res = select_gw(x, y, n_neighbors=(10,), epsilons=(1e-7, 2e-2, 5e-2), metric="euclidean",
                    device="cpu", max_iter=150)
    assert res.converged and res.selection["chosen"]["epsilon"] > 1e-3
    assert not res.selection["candidates"][0]["converged"]
