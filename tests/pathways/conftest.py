"""A small planted hierarchical expression generator for the pathway tests."""

from __future__ import annotations

import numpy as np
import pytest

#: level-2 modules per level-1 module, and level-3 modules per level-2 module: 3 ⊃ 7 ⊃ 17.
LEVEL2_PER_LEVEL1 = (2, 2, 3)
LEVEL3_PER_LEVEL2 = (2, 3, 2, 3, 2, 2, 3)


def planted_hierarchy(rng: np.random.Generator, *, n_cells: int = 400, genes_per_module: int = 10,
                      n_background: int = 20, level_sd: tuple[float, float, float] = (0.7, 0.8, 1.0),
                      weight: float = 0.8, base_mean: float = 3.0, counts: bool = True):
    """Cells x genes expression with a planted 3 > 7 > 17 module hierarchy.

    Each level has its own program per module (level-1 N(0, s1), level-2 N(0, s2), level-3
    N(0, s3)); a gene of a level-3 module follows the sum of its module's programs at the
    three levels, times a gene weight. Background genes follow nothing. With ``counts``,
    expression is Poisson with log-mean ``log(base_mean) + signal`` (sparse, like
    scRNA-seq); otherwise it is ``signal + N(0, 0.6)``.

    Returns (x, genes, truth): x (n_cells, n_genes); genes, names; truth, a dict
    level -> (n_genes,) array of module names ("" for background genes).
    """
    parent2 = np.repeat(np.arange(len(LEVEL2_PER_LEVEL1)), LEVEL2_PER_LEVEL1)
    parent3 = np.repeat(np.arange(len(LEVEL3_PER_LEVEL2)), LEVEL3_PER_LEVEL2)
    own1 = rng.normal(0, level_sd[0], size=(n_cells, len(LEVEL2_PER_LEVEL1)))
    own2 = rng.normal(0, level_sd[1], size=(n_cells, len(parent2)))
    own3 = rng.normal(0, level_sd[2], size=(n_cells, len(parent3)))
    m3 = np.repeat(np.arange(len(parent3)), genes_per_module)
    m2 = parent3[m3]
    m1 = parent2[m2]
    w = weight * rng.uniform(0.8, 1.2, size=m3.size)
    signal = w * (0.8 * own1[:, m1] + 0.9 * own2[:, m2] + own3[:, m3])
    signal = np.concatenate([signal, np.zeros((n_cells, n_background))], axis=1)
    if counts:
        base = np.log(base_mean) + rng.normal(0, 0.3, size=signal.shape[1])
        x = rng.poisson(np.exp(base + signal)).astype(np.float32)
    else:
        x = signal + rng.normal(0, 0.6, size=signal.shape)
    genes = [f"G{i:04d}" for i in range(signal.shape[1])]
    pad = [""] * n_background
    truth = {
        1: np.array([f"L1_{i}" for i in m1] + pad, dtype=object),
        2: np.array([f"L2_{i}" for i in m2] + pad, dtype=object),
        3: np.array([f"L3_{i}" for i in m3] + pad, dtype=object),
    }
    return x, genes, truth


@pytest.fixture
def planted(rng):
    return planted_hierarchy(rng)


@pytest.fixture(scope="session")
def make_planted():
    """The generator itself, for tests that need other sizes."""
    return planted_hierarchy
