"""Matching representation dimensions to known factors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from cellsae.metrics.truth import factor_correlations, match_factors


def test_permuted_monotone_copy_is_fully_recovered(rng):
    factors = rng.normal(size=(300, 5))
    perm = rng.permutation(5)
    z = np.exp(factors[:, perm])  # monotone, non-linear, permuted
    res = match_factors(np.c_[z, rng.normal(size=(300, 3))], factors, factor_names=list("abcde"))
    assert res.mcc == pytest.approx(1.0)
    assert res.n_recovered == 5
    np.testing.assert_array_equal(res.matched_dim[perm], np.arange(5))
    assert set(res.to_dict()["factors"]) == set("abcde")


def test_entangled_mixture_scores_lower(rng):
    factors = rng.normal(size=(500, 4))
    mixed = factors @ np.linalg.qr(rng.normal(size=(4, 4)))[0]
    res = match_factors(mixed, factors, method="pearson")
    assert res.mcc < 0.85
    assert res.n_recovered < 4


def test_fewer_dims_than_factors_count_zero(rng):
    factors = rng.normal(size=(200, 4))
    res = match_factors(factors[:, :2], factors)
    assert res.mcc == pytest.approx(0.5)
    assert (res.matched_dim[2:] == -1).all()


def test_sparse_codes_and_constant_columns(rng):
    factors = rng.normal(size=(200, 3))
    z = np.c_[np.maximum(factors, 0), np.zeros((200, 2))]
    corr = factor_correlations(sparse.csr_matrix(z), factors, chunk=2)
    assert corr.shape == (5, 3)
    assert (corr[3:] == 0).all()
    np.testing.assert_allclose(corr, factor_correlations(z, factors))


def test_bad_inputs(rng):
    with pytest.raises(ValueError, match="rows"):
        match_factors(rng.normal(size=(10, 2)), rng.normal(size=(12, 2)))
    with pytest.raises(ValueError, match="method"):
        factor_correlations(rng.normal(size=(10, 2)), rng.normal(size=(10, 2)), method="kendall")
    with pytest.raises(ValueError, match="NaN"):
        match_factors(rng.normal(size=(10, 2)), np.full((10, 2), np.nan))
