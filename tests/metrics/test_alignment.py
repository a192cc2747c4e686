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
