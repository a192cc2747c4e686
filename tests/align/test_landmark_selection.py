import numpy as np

from cellsae.align import landmark_gw, quantize, select_gw


def _clusters(rng, n=300):
    centres = np.array([[0, 0, 0], [6, 0, 0], [0, 9, 0], [3, 3, 8.0]])
    sizes = [120, 80, 60, n - 260]
    lab = np.repeat(np.arange(4), sizes)
    x = centres[lab] + rng.normal(size=(n, 3)) * np.array([1.0, 0.6, 0.8, 0.4])[lab, None]
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return x, x @ q + 0.05 * rng.normal(size=(n, 3)), lab


def test_quantize_soft_assignment_keeps_mass(rng):
    x = rng.normal(size=(500, 4))
    centers, assign, mass = quantize(x, 40, n_assign=3, seed=0)
    assert centers.shape[0] == assign.shape[1] == len(mass) <= 40
    assert np.allclose(np.asarray(assign.sum(1)).ravel(), 1)
    assert mass.sum() == np.float64(1.0) or abs(mass.sum() - 1) < 1e-9


def test_landmark_gw_marginals_and_labels(rng):
    x, y, lab = _clusters(rng)
    res = landmark_gw(x, y, n_landmarks=40, cost="euclidean", epsilon=5e-3, device="cpu")
    assert res.coupling.shape == (300, 300)
    assert np.allclose(res.row_sums(), 1 / 300, atol=1e-4)
    assert np.allclose(res.col_sums(), 1 / 300, atol=1e-4)
    acc = res.label_transfer_accuracy(lab, lab)
    assert acc > 0.9
    df = res.transfer_labels(lab, method="argmax")
    assert (df["label"].to_numpy() == lab.astype(str)).mean() > 0.9


def test_select_gw_records_every_candidate(rng):
    x, y, lab = _clusters(rng, n=150 + 260 - 260 + 110)
    res = select_gw(x, y, n_neighbors=(10, 20), epsilons=(5e-3, 2e-2), cost="knn_geodesic",
                    metric="euclidean", mode="distance", device="cpu")
    sel = res.selection
    assert sel["criterion"] == "consensus" and len(sel["candidates"]) == 4
    assert all("consensus_disagreement" in c for c in sel["candidates"])
    assert sel["chosen"]["n_neighbors"] in (10, 20)
    assert res.label_transfer_accuracy(lab, lab) > 0.8
    assert "selection" in res.to_dict()
