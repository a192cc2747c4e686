import numpy as np
import pytest

from cellsae.datasets.toy import toy_superposition


def test_toy_shapes_and_truth():
    toy = toy_superposition(64, 16, 4, 3000, seed=0)
    assert toy.X.shape == (3000, 16) and toy.X.dtype == np.float32
    assert toy.dictionary.shape == (64, 16) and toy.codes.shape == (3000, 64)
    np.testing.assert_allclose(np.linalg.norm(toy.dictionary, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(toy.X, toy.codes @ toy.dictionary, atol=1e-5)
    assert abs(toy.codes.getnnz() / 3000 - 4) < 0.3  # n_active on average
    assert (toy.codes.data > 0).all()


def test_frequencies_are_skewed_and_seeded():
    toy = toy_superposition(200, 32, 5, 5000, zipf_exponent=1.0, seed=3)
    freq = toy.frequencies
    assert freq[:10].mean() > 5 * freq[-50:].mean()
    again = toy_superposition(200, 32, 5, 5000, zipf_exponent=1.0, seed=3)
    np.testing.assert_array_equal(toy.X, again.X)
    other = toy_superposition(200, 32, 5, 5000, zipf_exponent=1.0, seed=4)
    assert not np.array_equal(toy.X, other.X)


def test_hierarchy_children_fire_only_with_parents():
    toy = toy_superposition(100, 32, 6, 4000, hierarchy=0.3, seed=1)
    active = toy.codes.toarray() > 0
    children = np.flatnonzero(toy.parents >= 0)
    assert len(children) == 30
    for c in children:
        assert not (active[:, c] & ~active[:, toy.parents[c]]).any()


def test_correlation_couples_features():
    indep = toy_superposition(60, 16, 6, 6000, correlation=0.0, seed=2)
    corr = toy_superposition(60, 16, 6, 6000, correlation=0.8, n_factors=3, seed=2)

    def mean_abs_offdiag(t):
        c = np.corrcoef((t.codes.toarray() > 0).T)
        return np.nanmean(np.abs(c[~np.eye(len(c), dtype=bool)]))

    assert mean_abs_offdiag(corr) > 2 * mean_abs_offdiag(indep)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_active"):
        toy_superposition(10, 4, 20)
    with pytest.raises(ValueError, match="correlation"):
        toy_superposition(10, 4, 2, correlation=1.0)
