"""A small planted hierarchical expression generator for the pathway tests."""

from __future__ import annotations

import numpy as np
import pytest

#: level-2 modules per level-1 module, and level-3 modules per level-2 module: 3 ⊃ 7 ⊃ 17.
LEVEL2_PER_LEVEL1 = (2, 2, 3)
LEVEL3_PER_LEVEL2 = (2, 3, 2, 3, 2, 2, 3)


def planted_hierarchy(rng: np.random.Generator, *, n_cells: int = 300, genes_per_module: int = 8,
                      n_background: int = 40, level_sd: tuple[float, float, float] = (1.0, 0.8, 0.7),
                      noise_sd: float = 0.6, counts: bool = False):
    """Cells x genes expression with a planted 3 > 7 > 17 module hierarchy.

    A level-1 program is N(0, s1); a level-2 program is its parent plus N(0, s2); a level-3
    program its parent plus N(0, s3). Each gene of a level-3 module is a loading times the
    program plus gene noise; background genes are noise only.

    Returns (x, genes, truth) with x (n_cells, n_genes) float (log-scale) or int counts,
    and truth a dict level -> (n_genes,) array of module names ("" for background).
    """
    parent2 = np.repeat(np.arange(len(LEVEL2_PER_LEVEL1)), LEVEL2_PER_LEVEL1)
    parent3 = np.repeat(np.arange(len(LEVEL3_PER_LEVEL2)), LEVEL3_PER_LEVEL2)
    a1 = rng.normal(0, level_sd[0], size=(n_cells, len(LEVEL2_PER_LEVEL1)))
    a2 = a1[:, parent2] + rng.normal(0, level_sd[1], size=(n_cells, len(parent2)))
    a3 = a2[:, parent3] + rng.normal(0, level_sd[2], size=(n_cells, len(parent3)))
    module3 = np.repeat(np.arange(len(parent3)), genes_per_module)
    loadings = rng.uniform(0.7, 1.3, size=module3.size)
    module_x = a3[:, module3] * loadings + rng.normal(0, noise_sd, size=(n_cells, module3.size))
    x = np.concatenate([module_x, rng.normal(0, 1.0, size=(n_cells, n_background))], axis=1)
    n_genes = x.shape[1]
    genes = [f"G{i:04d}" for i in range(n_genes)]
    m3 = module3
    m2 = parent3[m3]
    m1 = parent2[m2]
    pad = [""] * n_background
    truth = {
        1: np.array([f"L1_{i}" for i in m1] + pad, dtype=object),
        2: np.array([f"L2_{i}" for i in m2] + pad, dtype=object),
        3: np.array([f"L3_{i}" for i in m3] + pad, dtype=object),
    }
    if counts:
        rate = np.exp(1.0 + 0.35 * x)
        x = rng.poisson(rate).astype(np.float32)
    return x, genes, truth


@pytest.fixture
def planted(rng):
    return planted_hierarchy(rng)
