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


def test_probe_c_chosen_by_cross_validation_over_training_donors(rng):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n = 160
    y = np.tile(["a", "b"], n // 2)
    x = rng.normal(size=(n, 40))
    x[:, 0] += 1.0 * (y == "a")
    donors = np.repeat([f"d{i}" for i in range(8)], n // 8)
    split = np.where(np.isin(donors, ["d6", "d7"]), "test", "train")
    grid = (0.001, 0.1, 10.0)
    auto = probe_split(x, y, split, groups=donors, train_parts=("train",), C="auto",
                       C_grid=grid)
    # the same choice by hand: each training donor held out once, best total accuracy
    tr = split == "train"
    xs = StandardScaler().fit(x[tr]).transform(x[tr])
    hits = []
    for c in grid:
        k = 0
        for d in np.unique(donors[tr]):
            out = donors[tr] == d
            clf = LogisticRegression(C=c, max_iter=2000).fit(xs[~out], y[tr][~out])
            k += int((clf.predict(xs[out]) == y[tr][out]).sum())
        hits.append(k)
    assert auto.C == grid[int(np.argmax(hits))] and auto.to_dict()["C"] == auto.C
    # the test cells play no part in the choice
    y_shuffled = y.copy()
    y_shuffled[~tr] = rng.permutation(y[~tr])
    again = probe_split(x, y_shuffled, split, groups=donors, train_parts=("train",), C="auto",
                        C_grid=grid)
    assert again.C == auto.C
    # without groups the choice falls back to folds of cells
    same = linear_probe(x[tr], y[tr], x[:4], y[:4], C="auto")
    assert same.C in (0.001, 0.01, 0.1, 1.0, 10.0)
    with pytest.raises(ValueError, match="'auto'"):
        linear_probe(x, y, x, y, C="best")
    with pytest.raises(ValueError, match="'auto'"):
        linear_probe(x, y, x, y, C=0.0)
