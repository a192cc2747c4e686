import numpy as np
import pytest
from scipy import sparse

from cellsae.sae import pool_codes


def test_pooling_matches_a_dense_reference(rng):
    codes = sparse.random(40, 6, density=0.3, random_state=0, format="csr", dtype=np.float32)
    cells = rng.integers(0, 7, size=40)  # some cells may get no tokens
    dense = codes.toarray()
    for pool in ("max", "mean", "sum"):
        out = pool_codes(codes, cells, 8, pool=pool)
        assert out.shape == (8, 6)
        for c in range(8):
            rows = dense[cells == c]
            if len(rows) == 0:
                expected = np.zeros(6)
            else:
                expected = {"max": rows.max(0), "mean": rows.mean(0), "sum": rows.sum(0)}[pool]
            np.testing.assert_allclose(out[c].toarray().ravel(), expected, rtol=1e-6)


def test_pooling_rejects_bad_input():
    codes = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="pool"):
        pool_codes(codes, [0, 0, 1], pool="median")
    with pytest.raises(ValueError, match="one entry per token"):
        pool_codes(codes, [0, 1])
    with pytest.raises(ValueError, match="n_cells"):
        pool_codes(codes, [0, 1, 5], n_cells=3)
