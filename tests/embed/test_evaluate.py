import numpy as np
import pytest

from cellsae.embed import crop_statistics, linear_probe, pixel_pca, probe_split


def test_probe_scores_separable_classes_and_reports_per_donor(rng):
    y = np.repeat(["a", "b", "c"], 40)
    x = rng.normal(size=(120, 5)) + 4 * (y[:, None] == np.array(["a", "b", "c"])[None, :2]).sum(1, keepdims=True) * 0
    x[:, 0] += 5 * (y == "a")
    x[:, 1] += 5 * (y == "b")
    split = np.tile(["train", "train", "test"], 40)
    donors = np.where(np.arange(120) % 2, "d1", "d2")
    res = probe_split(x, y, split, groups=donors)
    assert res.accuracy > 0.95
    assert res.confusion.sum() == (split == "test").sum()
    assert set(res.per_group_accuracy) == {"d1", "d2"}
    assert res.to_dict()["classes"] == ["a", "b", "c"]


def test_probe_on_noise_is_near_chance(rng):
    x = rng.normal(size=(400, 10))
    y = rng.choice(["a", "b"], 400)
    res = linear_probe(x[:300], y[:300], x[300:], y[300:])
    assert 0.3 < res.accuracy < 0.7


def test_probe_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(np.full((4, 2), np.nan), list("abab"), np.zeros((2, 2)), list("ab"))
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(np.zeros((4, 2)), list("aaaa"), np.zeros((2, 2)), list("ab"))


def test_baselines_shapes(rng):
    x = rng.random(size=(12, 2, 8, 8)).astype(np.float32)
    feats, names = crop_statistics(x)
    assert feats.shape == (12, 22) and len(names) == 22 and names[0] == "ch0_mean"
    np.testing.assert_allclose(feats[:, 0], x[:, 0].mean((1, 2)), rtol=1e-5)
    p = pixel_pca(x, np.arange(8), n_components=5)
    assert p.shape == (12, 5)
