"""The paper's analysis preset on units with a planted death gradient."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellsae.tl.paper import paper_analysis, paper_geometry, paper_trajectory, paper_volcano


@pytest.fixture
def units(rng):
    """Control + two mutants; death rises along a latent direction inside each mutant;
    the SAE-like codes are non-negative, the CNN-like features signed."""
    n_per = 80
    genotype = np.repeat(["healthy", "SNCA", "GBA"], n_per)
    t = rng.uniform(0, 1, 3 * n_per)
    t[genotype == "healthy"] *= 0.3
    death = np.clip(t + rng.normal(0, 0.05, len(t)), 0, None)
    death[genotype == "healthy"] = np.nan  # the paper does not analyse control geometry
    cnn = np.c_[t, rng.normal(size=(len(t), 5)) * 0.3] + (genotype == "SNCA")[:, None] * 0.5
    sae = np.clip(np.c_[t, 1 - t, rng.normal(size=(len(t), 6)) * 0.2], 0, None)
    sae[:, 7] = 0.0  # a dead latent
    sae[genotype == "GBA", 6] += 2.0  # a GBA-high latent
    obs = pd.DataFrame(
        {
            "genotype": genotype,
            "death_rate": death,
            "t": t,
            "plate": "p1",
            "well": np.repeat(["B02", "B03", "B04"], n_per),
            "field": np.tile(np.repeat(np.arange(8), 10), 3),
        },
        index=[f"u{i}" for i in range(len(t))],
    )
    a = ad.AnnData(X=np.zeros((len(t), 1), np.float32), obs=obs)
    a.obsm["X_cnn"] = cnn.astype(np.float32)
    a.obsm["X_sae"] = sae.astype(np.float32)
    return a


def test_geometry_finds_the_planted_gradient(units):
    table = paper_geometry(units, control="healthy")
    assert set(table["class"]) == {"SNCA", "GBA"}  # control excluded, as in the paper
    assert set(table["k"].dropna()) == {5, 10, 15, 20, 25}
    k5 = table[(table["metric"] == "knn_sd_ratio") & (table["k"] == 5)]
    assert (k5["value"] < 0.6).all()  # neighbours share death (1 = no structure)
    moran = table[table["metric"] == "morans_i"]
    assert (moran["value"] > 0.5).all()
    r2 = table[table["metric"] == "death_r2"]
    assert (r2["value"] > 0.8).all() and len(r2) == 4


def test_geometry_excluding_same_field_neighbours_and_grouped_r2(units):
    kept = paper_geometry(units, ks=(5,), control="healthy")
    excl = paper_geometry(
        units, ks=(5,), control="healthy", exclude_same="field", r2_groups="field"
    )
    assert len(excl) == len(kept)
    assert np.isfinite(excl["value"]).all()


def test_trajectory_rooted_at_control_tracks_death(units):
    table = paper_trajectory(units, use_rep="X_sae", control="healthy", n_pcs=5, n_neighbors=10)
    assert set(table["mutant"]) == {"SNCA", "GBA"}
    root_names = table["root"].tolist()
    assert all(units.obs.loc[r, "genotype"] == "healthy" for r in root_names)
    assert (table["spearman_rho"].abs() > 0.5).all()
    assert table["jt_p"].notna().all()
    # the root perturbed over the 10 controls nearest the centroid: a clear gradient
    # gives the same sign from every root, and the spread is reported
    assert (table["n_roots"] == 10).all()
    assert (table["spearman_rho_sd"] >= 0).all() and table["spearman_rho_sd"].notna().all()
    assert (np.sign(table["spearman_rho_min"]) == np.sign(table["spearman_rho_max"])).all()
    lo, hi = table["spearman_rho_min"], table["spearman_rho_max"]
    assert ((lo <= table["spearman_rho"]) & (table["spearman_rho"] <= hi)).all()
    one = paper_trajectory(units, use_rep="X_sae", control="healthy", n_pcs=5,
                           n_neighbors=10, n_roots=1)
    np.testing.assert_allclose(one["spearman_rho"], table["spearman_rho"])
    assert (one["spearman_rho_sd"] == 0).all()


def test_centroid_roots_are_the_nearest_controls():
    from cellsae.metrics.paper import centroid_root, centroid_roots

    e = np.array([[0.0], [10.0], [1.0], [-2.0], [0.5], [3.0]])
    control = np.array([True, False, True, True, True, True])
    # control centroid (0 + 1 - 2 + 0.5 + 3) / 5 = 0.5
    np.testing.assert_array_equal(centroid_roots(e, control, 3), [4, 0, 2])
    assert centroid_root(e, control) == 4
    assert len(centroid_roots(e, control, 50)) == 5  # at most every control
    with pytest.raises(ValueError, match="n must be"):
        centroid_roots(e, control, 0)


def test_balanced_linear_probe_is_bias_free_and_balanced(rng):
    from cellsae.metrics.paper import balanced_linear_probe

    # classes along two directions; 10x more of class "a" than "b"
    n_a, n_b = 400, 40
    x = np.r_[rng.normal(size=(n_a, 4)) * 0.3 + [2, 0, 0, 0],
              rng.normal(size=(n_b, 4)) * 0.3 + [0, 2, 0, 0]]
    y = np.r_[["a"] * n_a, ["b"] * n_b]
    test = rng.random(len(y)) < 0.3
    res = balanced_linear_probe(x[~test], y[~test], x[test], y[test], seed=1)
    assert res.accuracy > 0.95 and res.balanced_accuracy > 0.95
    assert res.weights.shape == (2, 4)  # one row per class and no bias
    again = balanced_linear_probe(x[~test], y[~test], x[test], y[test], seed=1)
    np.testing.assert_array_equal(res.weights, again.weights)
    # L2-normalised inputs: scaling a unit changes nothing
    scaled = x * rng.uniform(0.1, 10, size=(len(x), 1))
    res2 = balanced_linear_probe(scaled[~test], y[~test], scaled[test], y[test], seed=1)
    np.testing.assert_allclose(res2.weights, res.weights, atol=1e-5)
    with pytest.raises(ValueError, match="never occur in training"):
        balanced_linear_probe(x[:10], ["a"] * 5 + ["b"] * 5, x[:2], ["c", "a"])


def test_volcano_calls_the_planted_latent(units):
    table = paper_volcano(units, reps={"sae": "X_sae"}, control="healthy")
    called = table[table["called"]]
    assert "sae_6" in set(called.loc[called["mutant"] == "GBA", "feature"])
    assert "sae_7" not in set(table["feature"])  # dead latents are not tested


def test_paper_analysis_summary(units):
    out = paper_analysis(units, control="healthy", n_pcs=5, n_neighbors=10)
    s = out["summary"]
    for key in (
        "knn_sd_ratio_k5_cnn",
        "morans_i_sae",
        "death_r2_cnn",
        "dpt_spearman_sae",
        "dpt_spearman_root_sd_sae",
        "dpt_jt_p_root_max_cnn",
        "de_features_sae",
    ):
        assert key in s
    assert "paper" in units.uns


def test_unknown_control_is_named(units):
    with pytest.raises(ValueError, match="control level 'ctrl'"):
        paper_geometry(units, control="ctrl")


def test_small_classes_keep_the_neighbourhoods_that_fit(units):
    small = units[np.r_[0:80, 80:92, 160:240]].copy()  # 12 SNCA units
    table = paper_geometry(small, control="healthy", reps={"cnn": "X_cnn"})
    snca = table[(table["class"] == "SNCA") & (table["metric"] == "knn_sd_ratio")]
    assert set(snca["k"]) == {5, 10}  # k + 2 units are needed
    gba = table[(table["class"] == "GBA") & (table["metric"] == "knn_sd_ratio")]
    assert set(gba["k"]) == {5, 10, 15, 20, 25}
