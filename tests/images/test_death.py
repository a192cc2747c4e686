from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellsae.images.death import call_dead, death_rates, death_threshold


def _intensities(rng, n_alive, n_dead, scale=1.0):
    alive = rng.lognormal(np.log(50), 0.4, n_alive)
    dead = rng.lognormal(np.log(2000), 0.4, n_dead)
    return np.concatenate([alive, dead]) * scale, np.r_[
        np.zeros(n_alive, bool), np.ones(n_dead, bool)
    ]


@pytest.mark.parametrize("method", ["otsu", "gmm"])
def test_threshold_separates_dead_from_alive(rng, method):
    x, truth = _intensities(rng, 400, 60)
    t = death_threshold(x, method=method)
    assert ((x > t) == truth).mean() > 0.98


def test_plate_wise_thresholds_follow_plate_gain(rng):
    x1, t1 = _intensities(rng, 300, 100)
    x2, t2 = _intensities(rng, 300, 100, scale=20.0)  # plate 2 is 20x brighter
    dead, used = call_dead(np.r_[x1, x2], np.r_[["p1"] * 400, ["p2"] * 400])
    assert (dead == np.r_[t1, t2]).mean() > 0.98
    assert used["p2"] > 5 * used["p1"]
    fixed, used = call_dead(np.r_[x1, x2], np.r_[["p1"] * 400, ["p2"] * 400], threshold=500.0)
    assert used == {"p1": 500.0, "p2": 500.0} and fixed.sum() == (np.r_[x1, x2] > 500).sum()
    with pytest.raises(KeyError, match="no death threshold given for plate"):
        call_dead(x1, ["p1"] * 400, threshold={"p9": 1.0})


def test_too_few_cells_gives_no_call():
    assert death_threshold(np.array([1.0, 2.0])) == np.inf


def test_death_rates_per_group():
    obs = pd.DataFrame(
        {
            "plate": ["a"] * 4 + ["b"] * 2,
            "well": ["B02", "B02", "B03", "B03", "B02", "B02"],
            "dead": [True, False, False, False, True, True],
        }
    )
    table = death_rates(obs)
    assert list(table["death_rate"]) == [0.5, 0.0, 1.0]
    assert list(table["n_cells"]) == [2, 2, 2]
    with pytest.raises(KeyError, match="lacks column"):
        death_rates(obs, by=("field",))
