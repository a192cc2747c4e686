"""Differential features: planted differences found, FDR, effect sizes, donor-level test."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from cellsae.tl.differential import (
    benjamini_hochberg,
    count_significant,
    differential_features,
    pseudobulk_test,
    rank_features,
)


def planted_adata(rng, n_donors=4, cells_per_donor=60, n_features=30, donor_sd=0.0):
    """Features 0-4 are higher in SNCA; the rest are null. Genotype is a donor property."""
    rows, obs = [], []
    for d in range(2 * n_donors):
        geno = "SNCA" if d < n_donors else "healthy"
        offset = donor_sd * rng.normal(size=n_features)
        x = rng.exponential(1.0, size=(cells_per_donor, n_features)) + offset.clip(0)
        if geno == "SNCA":
            x[:, :5] += 1.5
        rows.append(x * (rng.uniform(size=x.shape) < 0.6))
        obs += [{"genotype": geno, "donor": f"d{d}"}] * cells_per_donor
    adata = ad.AnnData(sparse.csr_matrix(np.vstack(rows)), obs=pd.DataFrame(obs))
    adata.obs_names = adata.obs_names.astype(str)
    return adata


@pytest.mark.parametrize("method", ["wilcoxon", "t-test", "pseudobulk"])
def test_planted_features_are_found(rng, method):
    adata = planted_adata(rng, n_donors=6)
    table = differential_features(adata, "genotype", reference="healthy", method=method,
                                  donor_key="donor")
    sig = set(table.loc[table.significant, "feature"])
    assert {str(i) for i in range(5)} <= sig
    assert len(sig - {str(i) for i in range(5)}) <= 2
    assert (table.loc[table.feature.isin(list("01234")), "effect_size"] > 0).all()
    assert "table" in adata.uns["differential"] and adata.uns["differential"]["params"]["method"] == method


def test_pseudobulk_resists_donor_batch_that_cell_tests_call_significant(rng):
    """With strong donor effects and few donors, cell-level tests produce many false calls."""
    adata = planted_adata(rng, n_donors=3, donor_sd=2.0)
    cells = differential_features(adata, "genotype", reference="healthy", method="t-test")
    donors = differential_features(adata, "genotype", reference="healthy", method="pseudobulk",
                                   donor_key="donor")
    null = ~cells.feature.isin(list("01234"))
    assert cells.loc[null, "significant"].sum() > donors.loc[
        ~donors.feature.isin(list("01234")), "significant"].sum()


def test_wilcoxon_effect_is_rank_biserial(rng):
    x = np.r_[np.ones((10, 1)) * 2, np.zeros((10, 1))]
    res = rank_features(x, np.r_[np.ones(10, bool), np.zeros(10, bool)],
                        np.r_[np.zeros(10, bool), np.ones(10, bool)])
    assert res.effect_size.iloc[0] == pytest.approx(1.0)


def test_constant_features_untestable_and_signed_features_no_log2fc(rng):
    x = np.c_[np.zeros(20), rng.normal(size=20)]
    g = np.arange(20) < 10
    res = rank_features(x, g, ~g, method="t-test")
    assert np.isnan(res.pvalue.iloc[0]) and np.isnan(res.padj.iloc[0])
    assert res.log2fc.isna().all()


def test_bh_matches_definition():
    p = np.array([0.01, 0.04, 0.03, 0.5, np.nan])
    q = benjamini_hochberg(p)
    np.testing.assert_allclose(q[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert np.isnan(q[4])


def test_too_few_cells_or_donors_errors(rng):
    adata = planted_adata(rng, n_donors=2, cells_per_donor=20)
    adata.obs["genotype"] = adata.obs["genotype"].astype(str)
    adata.obs.iloc[0, adata.obs.columns.get_loc("genotype")] = "GBA"
    with pytest.raises(ValueError, match="group 'GBA' has 1 cells"):
        differential_features(adata, "genotype", reference="healthy")
    with pytest.raises(ValueError, match="donor"):
        pseudobulk_test(adata.X, (adata.obs.genotype == "SNCA").to_numpy(),
                        (adata.obs.genotype == "healthy").to_numpy(), adata.obs.donor,
                        min_donors=3)
    with pytest.raises(ValueError, match="not a level"):
        differential_features(adata, "genotype", reference="control")
    with pytest.raises(ValueError, match="donor_key"):
        differential_features(adata, "genotype", method="pseudobulk")
    with pytest.raises(KeyError, match="available"):
        differential_features(adata, "genotype", use_rep="X_cnn")


def test_obsm_representation_and_count(rng):
    adata = planted_adata(rng)
    adata.obsm["X_cnn"] = adata.X.toarray() - 1.0
    table = differential_features(adata, "genotype", reference="healthy", use_rep="X_cnn")
    assert table.feature.iloc[0].startswith("X_cnn_")
    assert count_significant(table) >= 5
