"""compare_representations: planted smooth vs scrambled, CIs, seeds, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from cellsae.tl.compare import compare_representations


@pytest.fixture
def cells(rng):
    n = 300
    factors = rng.normal(size=(n, 4))
    p_dead = 1 / (1 + np.exp(-3 * factors[:, 0]))
    dead = (rng.uniform(size=n) < p_dead).astype(int)
    good = factors @ rng.normal(size=(4, 12)) + 0.05 * rng.normal(size=(n, 12))
    adata = ad.AnnData(obs=pd.DataFrame({"dead": dead, "rate": p_dead,
                                         "donor": (np.arange(n) % 6).astype(str),
                                         "genotype": np.where(np.arange(n) % 2, "A", "B")}))
    adata.obs_names = adata.obs_names.astype(str)
    adata.obsm["X_good"] = good
    adata.obsm["X_bad"] = good[rng.permutation(n)]
    adata.obsm["X_good2"] = good + 0.05 * rng.normal(size=good.shape)
    adata.obsm["X_sparse"] = sparse.csr_matrix(np.maximum(np.c_[good, -good], 0))
    adata.obsm["factors"] = factors
    return adata


def test_smooth_beats_scrambled_with_intervals(cells):
    table = compare_representations(cells, ["X_good", "X_bad", "X_sparse"], "rate", k=5,
                                    n_bootstrap=200, n_permutations=49, n_components=10,
                                    factors_key="factors", groups_key="donor", seed=0)
    g, b = table.loc["X_good"], table.loc["X_bad"]
    assert g.knn_sd_ratio < b.knn_sd_ratio
    assert g.morans_i > b.morans_i and g.morans_p < 0.05
    assert g.phenotype_r2 > 0.8 > 0.2 > b.phenotype_r2
    assert g.trustworthiness > b.trustworthiness
    for m in ("knn_sd_ratio", "morans_i", "phenotype_r2"):
        assert (table[f"{m}_ci_low"] <= table[m]).all() and (table[m] <= table[f"{m}_ci_high"]).all()
        assert (table[f"{m}_ci_high"] - table[f"{m}_ci_low"] < 0.3).all()
    assert table.loc["X_sparse", "phenotype_r2"] > 0.5
    assert "values" in table.attrs and "table" in cells.uns["compare_representations"]


def test_seeds_mapping_and_strata(cells):
    table = compare_representations(
        cells, {"good": ["X_good", "X_good2"], "bad": "X_bad"}, "dead", n_bootstrap=0,
        n_permutations=0, strata_key="genotype", metrics=["knn_sd_ratio", "morans_i"])
    assert list(table.index) == ["good", "bad"]
    assert np.isfinite(table.loc["good", "knn_sd_ratio_ci_low"])
    assert np.isnan(table.loc["bad", "knn_sd_ratio_ci_low"])  # one seed, no bootstrap
    assert table.loc["good", "n_seeds"] == 2


def test_bad_inputs(cells):
    with pytest.raises(KeyError, match="available: X, X_good"):
        compare_representations(cells, ["X_cnn"], "dead")
    with pytest.raises(KeyError, match="available: dead, rate"):
        compare_representations(cells, ["X_good"], "death")
    cells.obsm["X_zero"] = np.zeros((cells.n_obs, 3))
    with pytest.raises(ValueError, match="all zero"):
        compare_representations(cells, ["X_zero"], "dead", n_bootstrap=0)
    with pytest.raises(ValueError, match="unknown metrics"):
        compare_representations(cells, ["X_good"], "dead", metrics=["auc"])
