"""Label-free selection on a multiscale geodesic cost."""

import numpy as np
import pytest

from cellsae.align import knn_geodesic_cost, multiscale_geodesic_cost, pairwise_cost, select_gw


def _clusters(rng, n=120):
    centres = np.array([[0, 0, 0], [6, 0, 0], [0, 9, 0], [3, 3, 8.0]])
    sizes = [45, 35, 25, n - 105]
    lab = np.repeat(np.arange(4), sizes)
    x = centres[lab] + rng.normal(size=(n, 3)) * np.array([1.0, 0.6, 0.8, 0.4])[lab, None]
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return x, x @ q + 0.05 * rng.normal(size=(n, 3)), lab


def test_multiscale_cost_is_the_mean_of_normalised_scales(rng):
    x = rng.normal(size=(40, 3))
    c, info = multiscale_geodesic_cost(x, n_neighbors=(5, 10, 500))
    assert info.scales == [5, 10, 39] and info.kind == "multiscale_geodesic"
    parts = [knn_geodesic_cost(x, n_neighbors=k)[0] for k in (5, 10, 39)]
    mean = np.mean(parts, 0)
    assert np.allclose(c, mean / mean.max())
    assert np.allclose(pairwise_cost(x, "multiscale_geodesic", n_neighbors=(5, 10, 500))[0], c)
    assert c.max() == pytest.approx(1.0) and np.allclose(np.diag(c), 0)


def test_select_gw_multiscale_selects_only_epsilon(rng):
    x, y, lab = _clusters(rng)
    res = select_gw(
        x,
        y,
        n_neighbors=(8, 15, 30),
        epsilons=(5e-3, 2e-2),
        metric="euclidean",
        mode="distance",
        cost="multiscale_geodesic",
        device="cpu",
    )
    sel = res.selection
    assert len(sel["candidates"]) == 2
    assert sel["chosen"]["n_neighbors"] == [8, 15, 30]
    assert res.params["cost_info_source"]["scales"] == [8, 15, 30]
    assert res.label_transfer_accuracy(lab, lab) > 0.8
    assert "multiscale_geodesic" == res.params["cost"]


def test_geodesic_distortion_criterion(rng):
    x, y, lab = _clusters(rng)
    res = select_gw(
        x,
        y,
        n_neighbors=(10, 20),
        epsilons=(5e-3, 2e-2),
        metric="euclidean",
        mode="distance",
        criterion="geodesic_distortion",
        device="cpu",
    )
    cands = res.selection["candidates"]
    scores = [c["geodesic_distortion_correlation"] for c in cands]
    assert all(s is not None and -1 <= s <= 1 for s in scores)
    assert res.selection["chosen_index"] == int(np.argmax(scores))
    assert res.label_transfer_accuracy(lab, lab) > 0.8
    with pytest.raises(ValueError, match="kNN-geodesic"):
        select_gw(x, y, cost="euclidean", criterion="geodesic_distortion", device="cpu")
