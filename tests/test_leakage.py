"""Leakage study pieces: grouped splits, the design check, and the paper's statistics."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd
import pytest

from cellsae.design import check_design
from cellsae.embed import check_split, make_split, split_groups
from cellsae.metrics.paper import (
    alive_latents,
    centroid_root,
    jonckheere_terpstra,
    knn_indices_excluding,
    log1p_zscore,
    pseudotime_bins,
    volcano_calls,
)


def _obs(rng, design: str = "balanced", n: int = 600) -> pd.DataFrame:
    genotypes = np.array(["healthy", "SNCA", "GBA", "LRRK2"])
    g = rng.integers(0, 4, n)
    donor_i = rng.integers(0, 3, n)
    donor = np.array([f"{genotypes[a]}-d{b}" for a, b in zip(g, donor_i, strict=True)])
    plate = (g % 2) if design == "confounded" else rng.integers(0, 4, n)
    well = np.array(
        [
            f"{'BCDEFGHIJKLM'[(3 * a + b) % 12]}{p + 2:02d}"
            for a, b, p in zip(g, donor_i, plate, strict=True)
        ]
    )
    return pd.DataFrame(
        {
            "genotype": genotypes[g],
            "donor": donor,
            "plate": [f"plate{p + 1}" for p in plate],
            "well": well,
            "field": rng.integers(1, 4, n),
        }
    )


@pytest.mark.parametrize("mode", ["field", "well", "plate", "donor"])
def test_grouped_splits_never_share_a_group(rng, mode):
    obs = _obs(rng)
    split = make_split(
        obs,
        mode,
        label_key=None if mode == "plate" else "genotype",
        fractions=(0.5, 1 / 6, 1 / 3),
        seed=1,
    )
    groups = split_groups(obs, mode)
    check_split(split, groups, what=mode)  # raises if a group is on two sides
    parts = {p: set(groups[split == p]) for p in ("train", "val", "test")}
    for a, b in itertools.combinations(parts, 2):
        assert not parts[a] & parts[b], (mode, a, b)
    assert len(parts["test"]) >= 1 and len(parts["train"]) >= 1


def test_random_split_is_the_papers_and_leaks_donors(rng):
    obs = _obs(rng)
    split = make_split(obs, "random", fractions=(0.5, 1 / 6, 1 / 3), seed=0)
    assert abs((split == "test").mean() - 1 / 3) < 0.03
    donors = obs["donor"].to_numpy()
    assert set(donors[split == "train"]) & set(donors[split == "test"])  # what leaks


def test_design_check_fires_on_a_confounded_design(rng, caplog):
    obs = _obs(rng, "confounded")
    obs.loc[obs["genotype"] == "SNCA", "donor"] = "SNCA-line1"  # one line, as in the paper
    with caplog.at_level(logging.WARNING, logger="cellsae.design"):
        check = check_design(obs, "genotype")
    assert check.confounded
    assert check.single_donor_levels == ["SNCA"]
    # healthy+GBA sit on plate1, SNCA+LRRK2 on plate2
    assert ("GBA", "LRRK2") in check.disjoint_plate_pairs
    assert ("SNCA", "healthy") in check.disjoint_plate_pairs
    assert ("GBA", "healthy") not in check.disjoint_plate_pairs
    assert "SNCA" in check.message and "GBA vs LRRK2" in check.message
    assert "confounded with batch" in caplog.text


def test_design_check_is_silent_on_a_balanced_design(rng, caplog):
    with caplog.at_level(logging.WARNING, logger="cellsae.design"):
        check = check_design(_obs(rng, "balanced"), "genotype")
    assert not check.confounded and check.message == ""
    assert not check.single_donor_levels and not check.disjoint_plate_pairs
    assert "confounded" not in caplog.text
    assert check.to_dict()["confounded"] is False


def test_design_check_on_the_synthetic_world():
    from cellsae.datasets import neuron_world

    confounded = neuron_world(120, seed=0, design="confounded", crop_size=32).cells.obs
    balanced = neuron_world(120, seed=0, design="balanced", crop_size=32).cells.obs
    assert check_design(confounded, warn=False).confounded
    assert not check_design(balanced, warn=False).confounded


def test_design_check_names_a_missing_column():
    with pytest.raises(KeyError, match="genotype"):
        check_design(pd.DataFrame({"donor": ["a"]}))


def test_knn_excluding_never_returns_the_same_group(rng):
    x = rng.normal(size=(120, 4))
    groups = np.repeat(np.arange(12), 10)
    x += groups[:, None] * 5.0  # each group is its own tight cluster
    nb = knn_indices_excluding(x, 5, groups=groups)
    assert nb.shape == (120, 5)
    assert not (groups[nb] == groups[:, None]).any()
    plain = knn_indices_excluding(x, 5)
    assert (groups[plain] == groups[:, None]).mean() > 0.95  # without exclusion: same group
    assert not (plain == np.arange(120)[:, None]).any()
    with pytest.raises(ValueError, match="fewer than k"):
        knn_indices_excluding(x[:12], 5, groups=np.r_[np.zeros(10), np.ones(2)])


def _jt_brute(values, groups):
    j = 0.0
    levels = np.unique(groups)
    for a, b in itertools.combinations(levels, 2):
        for x in values[groups == a]:
            for y in values[groups == b]:
                j += 1.0 if y > x else 0.5 if y == x else 0.0
    return j


def test_jonckheere_terpstra_statistic_and_direction(rng):
    groups = np.repeat([0, 1, 2], 20)
    rising = groups + rng.normal(0, 0.8, 60)
    res = jonckheere_terpstra(rising, groups)
    assert res.statistic == pytest.approx(_jt_brute(rising, groups))
    assert res.expected == pytest.approx((60**2 - 3 * 20**2) / 4)
    assert res.p_value < 1e-4 and res.z > 0
    flat = rng.normal(size=60)
    assert jonckheere_terpstra(flat, groups).p_value > 0.01
    assert jonckheere_terpstra(rising, groups, alternative="decreasing").p_value > 0.99
    ties = np.round(rising)  # ties: statistic counts halves, variance shrinks
    tied = jonckheere_terpstra(ties, groups)
    assert tied.statistic == pytest.approx(_jt_brute(ties, groups))
    assert tied.variance < res.variance


def test_jonckheere_terpstra_matches_the_no_tie_variance(rng):
    groups = np.repeat([0, 1, 2, 3], [5, 7, 6, 8])
    v = rng.permutation(26).astype(float)
    res = jonckheere_terpstra(v, groups)
    n, ni = 26, np.array([5, 7, 6, 8])
    var = (n**2 * (2 * n + 3) - (ni**2 * (2 * ni + 3)).sum()) / 72
    assert res.variance == pytest.approx(var)


def test_pseudotime_bins_equal_width_between_p5_and_p95():
    pt = np.linspace(0, 1, 101)
    bins = pseudotime_bins(pt)
    assert (bins[:5] == -1).all() and (bins[-5:] == -1).all()
    assert set(bins[bins >= 0]) == {0, 1, 2}
    inner = pt[bins >= 0]
    edges = np.linspace(0.05, 0.95, 4)
    np.testing.assert_array_equal(
        bins[bins >= 0], np.clip(np.searchsorted(edges, inner, "right") - 1, 0, 2)
    )
    assert (pseudotime_bins(np.array([np.nan, 1.0])) == -1).all()


def test_centroid_root_is_the_control_unit_nearest_the_control_centroid():
    emb = np.array([[0.0, 0], [2, 0], [1, 0.1], [10, 10], [1, 0]])
    control = np.array([True, True, True, False, False])
    assert centroid_root(emb, control) == 2  # (1, 0) itself is not a control unit
    with pytest.raises(ValueError, match="no control"):
        centroid_root(emb, np.zeros(5, bool))


def test_volcano_calls_use_the_papers_fold_change():
    lfc, called = volcano_calls([3.0, 1.0, 0.0, 1.4], [1.0, 1.0, 0.0, 1.0], [0.01, 0.01, 0.01, 0.2])
    assert lfc[0] == pytest.approx(np.log2(3)) and lfc[2] == 0.0
    assert called.tolist() == [True, False, False, False]
    _, by_fc = volcano_calls([1.6], [1.0], [0.9], alpha=None)  # fold change alone
    assert by_fc.tolist() == [True]


def test_log1p_zscore_and_alive_latents():
    x = np.array([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 7.0, 2.0]])
    z, keep = log1p_zscore(x)
    assert keep.tolist() == [False, True, True]
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)
    assert alive_latents(x, 0.5).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="non-negative"):
        log1p_zscore(-x)
