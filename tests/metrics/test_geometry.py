"""Geometric fidelity metrics: planted smooth vs scrambled phenotypes, invariants, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from sklearn.manifold import trustworthiness as sk_trustworthiness

from cellsae.metrics.geometry import (
    continuity,
    effective_rank,
    knn_indices,
    knn_sd_ratio,
    linear_cka,
    morans_i,
    phenotype_r2,
    trustworthiness,
)


@pytest.fixture
def planted(rng):
    """A phenotype smooth on one representation and scrambled on another."""
    n = 400
    latent = rng.normal(size=(n, 4))
    death = 1 / (1 + np.exp(-3 * latent[:, 0]))
    smooth = latent @ rng.normal(size=(4, 16)) + 0.05 * rng.normal(size=(n, 16))
    scrambled = smooth[rng.permutation(n)]
    return smooth, scrambled, death


def test_knn_indices_excludes_self_and_orders(rng):
    x = rng.normal(size=(50, 3))
    nb = knn_indices(x, 4)
    assert nb.shape == (50, 4)
    assert not (nb == np.arange(50)[:, None]).any()
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(np.sort(nb, 1), np.sort(np.argsort(d, 1)[:, :4], 1))


def test_knn_sd_ratio_separates_smooth_from_scrambled(planted):
    smooth, scrambled, death = planted
    good = knn_sd_ratio(smooth, death, k=5)
    bad = knn_sd_ratio(scrambled, death, k=5)
    assert good.ratio < 0.5 < 0.8 < bad.ratio
    assert good.per_cell_ratio.shape == (len(death),)
    np.testing.assert_allclose(good.ratio, good.per_cell_ratio.mean())


def test_knn_sd_ratio_is_permutation_equivariant(planted, rng):
    smooth, _, death = planted
    perm = rng.permutation(len(death))
    a = knn_sd_ratio(smooth, death)
    b = knn_sd_ratio(smooth[perm], death[perm])
    np.testing.assert_allclose(a.local_sd[perm], b.local_sd)
    assert a.ratio == pytest.approx(b.ratio)


def test_knn_sd_ratio_strata_use_stratum_sd(planted):
    smooth, _, death = planted
    strata = np.where(np.arange(len(death)) % 2 == 0, "a", "b")
    res = knn_sd_ratio(smooth, death, strata=strata)
    assert set(res.global_sd) == {"a", "b"}
    assert res.global_sd["a"] == pytest.approx(death[strata == "a"].std())


def test_knn_sd_ratio_constant_phenotype_errors(planted):
    smooth, _, _ = planted
    with pytest.raises(ValueError, match="constant"):
        knn_sd_ratio(smooth, np.ones(len(smooth)))


def test_sparse_and_dense_agree(planted):
    smooth, _, death = planted
    x = np.maximum(smooth, 0)
    a = knn_sd_ratio(x, death).ratio
    b = knn_sd_ratio(sparse.csr_matrix(x), death).ratio
    assert a == pytest.approx(b)


def test_morans_i_planted_and_null(planted):
    smooth, scrambled, death = planted
    good = morans_i(smooth, death, n_permutations=199, seed=1)
    bad = morans_i(scrambled, death, n_permutations=199, seed=1)
    assert good.i > 0.5 and good.p_value <= 0.01
    assert abs(bad.i) < 0.15 and bad.p_value > 0.01
    assert good.expected == pytest.approx(-1 / (len(death) - 1))


def test_morans_i_deterministic_with_seed_and_precomputed_neighbours(planted):
    smooth, _, death = planted
    nb = knn_indices(smooth, 5)
    a = morans_i(None, death, neighbors=nb, n_permutations=50, seed=3)
    b = morans_i(smooth, death, n_permutations=50, seed=3)
    assert a.i == b.i and a.p_value == b.p_value


def test_morans_i_bad_neighbours():
    with pytest.raises(ValueError, match="outside"):
        morans_i(None, np.arange(3.0), neighbors=np.array([[1], [2], [5]]), n_permutations=0)


def test_phenotype_r2_planted_and_scrambled(planted):
    smooth, scrambled, death = planted
    assert phenotype_r2(smooth, death, n_components=10).r2 > 0.8
    assert phenotype_r2(scrambled, death, n_components=10).r2 < 0.1


def test_phenotype_r2_grouped_folds_never_split_a_group(planted, rng):
    smooth, _, death = planted
    groups = rng.integers(0, 8, len(death))
    res = phenotype_r2(smooth, death, groups=groups, n_components=10)
    assert res.grouped and len(res.fold_r2) == 5 and res.r2 > 0.8
    with pytest.raises(ValueError, match="at least n_splits"):
        phenotype_r2(smooth, death, groups=groups % 3)


def test_phenotype_r2_sparse_input(planted):
    smooth, _, death = planted
    x = sparse.csr_matrix(np.maximum(np.c_[smooth, -smooth], 0))
    assert phenotype_r2(x, death, n_components=10).r2 > 0.7


def test_trustworthiness_matches_sklearn(rng):
    a = rng.normal(size=(150, 5))
    b = a[:, :2] + 0.2 * rng.normal(size=(150, 2))
    assert trustworthiness(a, b, k=7, chunk=40) == pytest.approx(
        sk_trustworthiness(a, b, n_neighbors=7))
    assert continuity(a, b, k=7) == pytest.approx(sk_trustworthiness(b, a, n_neighbors=7))
    assert trustworthiness(a, a, k=7) == pytest.approx(1.0)


def test_effective_rank_bounds_and_sparse(rng):
    x = rng.normal(size=(300, 6))
    assert 5.5 < effective_rank(x) <= 6
    assert effective_rank(sparse.csr_matrix(x)) == pytest.approx(effective_rank(x))
    assert effective_rank(np.outer(rng.normal(size=50), np.ones(4))) == pytest.approx(1.0)
    assert effective_rank(np.ones((10, 3))) == 0.0


def test_linear_cka_invariances(rng):
    x = rng.normal(size=(200, 8))
    q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    assert linear_cka(x, 3 * x @ q + 5) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(200, 8))) < 0.2
    wide = rng.normal(size=(20, 50))
    assert linear_cka(wide, wide) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rows"):
        linear_cka(x, x[:10])


@pytest.mark.parametrize("bad", [np.full((10, 2), np.nan), np.zeros(10)])
def test_bad_representation_errors(bad):
    with pytest.raises(ValueError):
        knn_sd_ratio(bad, np.arange(10.0))


def test_length_mismatch_errors(rng):
    with pytest.raises(ValueError, match="rows"):
        morans_i(rng.normal(size=(20, 2)), np.arange(10.0), n_permutations=0)
    with pytest.raises(ValueError, match="k="):
        knn_indices(rng.normal(size=(4, 2)), 4)
