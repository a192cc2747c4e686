import pandas as pd
import pytest

from cellsae.embed.splits import SplitError, check_split, make_split, split_cells, split_groups


def _obs(rng, n=300):
    donor = rng.integers(0, 9, n)
    return pd.DataFrame({
        "donor": [f"d{d}" for d in donor],
        "genotype": [f"g{d % 3}" for d in donor],
        "plate": [f"p{p}" for p in rng.integers(0, 4, n)],
        "well": [f"w{w}" for w in rng.integers(0, 3, n)],
        "field": [f"f{f}" for f in rng.integers(0, 2, n)],
    })


def test_donor_split_never_shares_a_donor_and_covers_every_class(rng):
    obs = _obs(rng)
    split = make_split(obs, "donor", fractions=(0.34, 0.33, 0.33), seed=1)
    check_split(split, obs["donor"])
    for part in ("train", "val", "test"):
        assert set(obs.genotype[split == part]) == {"g0", "g1", "g2"}


def test_split_is_deterministic_for_a_seed(rng):
    obs = _obs(rng)
    a = make_split(obs, "donor", seed=3)
    b = make_split(obs, "donor", seed=3)
    assert (a == b).all()


@pytest.mark.parametrize("mode,columns", [("plate", ["plate"]), ("well", ["plate", "well"]),
                                          ("field", ["plate", "well", "field"])])
def test_group_modes_keep_groups_whole(rng, mode, columns):
    obs = _obs(rng)
    split = make_split(obs, mode, label_key=None, seed=0)
    key = obs[columns].astype(str).agg("/".join, axis=1)
    check_split(split, key, what=mode)
    assert set(split) == {"train", "val", "test"}


def test_random_mode_splits_cells(rng):
    obs = _obs(rng)
    split = make_split(obs, "random", seed=0)
    assert abs((split == "train").mean() - 0.6) < 0.1
    assert len(split_groups(obs, "random")) == len(obs)


def test_single_donor_cannot_be_held_out():
    with pytest.raises(SplitError, match="only one|at least"):
        split_cells(["d0"] * 10, labels=["a"] * 10)


def test_check_split_detects_a_leaking_donor():
    with pytest.raises(SplitError, match="more than one part"):
        check_split(["train", "test", "train"], ["d0", "d0", "d1"])
    with pytest.raises(SplitError, match="must be one of"):
        check_split(["train", "holdout"])


def test_missing_column_names_the_mode(rng):
    with pytest.raises(KeyError, match="plate"):
        split_groups(pd.DataFrame({"donor": ["a"]}), "plate")
