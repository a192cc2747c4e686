import numpy as np
import pytest

from cellsae.metrics.alignment import foscttm, foscttm_from_scores, label_transfer_accuracy


def test_foscttm_perfect_random_and_shape(rng):
    x = rng.normal(size=(200, 5))
    assert foscttm(x, x) == 0.0
    assert foscttm(x, x + 1e-3 * rng.normal(size=x.shape)) < 0.01
    shuffled = foscttm(x, x[rng.permutation(200)])
    assert 0.4 < shuffled < 0.6
    with pytest.raises(ValueError):
        foscttm(x, x[:10])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        foscttm(bad, x)


def test_foscttm_blocks_agree(rng):
    x, y = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    assert foscttm(x, y, block=7) == pytest.approx(foscttm(x, y, block=1000))


def test_foscttm_from_scores_and_labels():
    assert foscttm_from_scores(np.eye(5)) == 0.0
    assert foscttm_from_scores(-np.eye(5), higher_is_closer=True) == 1.0
    assert label_transfer_accuracy(["a", "b"], ["a", "c"]) == 0.5


def test_type_oracle_foscttm(rng):
    from cellsae.metrics.alignment import type_oracle_foscttm

    # four well-separated types: a type-perfect map scores about sum p^2 / 2
    sizes = np.array([40, 80, 120, 60])
    lab = np.repeat(np.arange(4), sizes).astype(str)
    centres = rng.normal(size=(4, 6)) * 20
    y = centres[lab.astype(int)] + rng.normal(size=(sizes.sum(), 6))
    ref = type_oracle_foscttm(y, lab, lab, n_repeats=5)
    expect = ((sizes / sizes.sum()) ** 2).sum() / 2
    assert ref["sum_sq_proportions_half"] == pytest.approx(expect)
    assert abs(ref["random_within_type"] - expect) < 0.02
    assert abs(ref["centroid_jitter"] - expect) < 0.03
    # exact ties at the centroid would score about half of that: the jitter prevents it
    cent = np.stack([y[lab == c].mean(0) for c in "0123"])[lab.astype(int)]
    assert foscttm(cent, y) < 0.6 * expect
    # one type only: no better than chance
    one = type_oracle_foscttm(y, np.zeros(len(y)), np.zeros(len(y)), n_repeats=2)
    assert 0.4 < one["random_within_type"] < 0.6
    with pytest.raises(ValueError, match="absent"):
        type_oracle_foscttm(y, np.append(lab[:-1], "9"), lab)
    with pytest.raises(ValueError, match="truth"):
        type_oracle_foscttm(y, lab, lab, truth=np.arange(5))
