import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cellsae.pathways import bootstrap_coclustering, find_hierarchy
from cellsae.tl.pathways import _log_normalize

GRID = np.round(np.geomspace(0.02, 10, 32), 4)


@pytest.fixture(scope="module")
def planted_small(make_planted):
    rng = np.random.default_rng(1)
    x, genes, truth = make_planted(rng, n_cells=300, genes_per_module=6, n_background=0)
    return _log_normalize(x), genes, truth


def test_planted_three_level_hierarchy_is_recovered(planted_small):
    x, genes, truth = planted_small
    h = find_hierarchy(x, genes, n_modules=(3, 7, 17), grid=GRID, min_module_size=3, seed=0)
    assert h.n_modules == [3, 7, 17]
    for level in (1, 2, 3):
        assert adjusted_rand_score(truth[level], h.labels[level - 1]) >= 0.9
    assert h.nesting_consistency >= 0.95
    assert h.params["selection"] == "n_modules" and "scan" in h.params


def test_automatic_levels_include_the_planted_ones(planted_small):
    x, genes, truth = planted_small
    h = find_hierarchy(x, genes, grid=GRID, min_module_size=3, seed=0)
    assert h.n_levels >= 2
    assert list(h.resolutions) == sorted(h.resolutions)
    assert all(a < b for a, b in zip(h.n_modules, h.n_modules[1:], strict=False))
    best = {lv: max(adjusted_rand_score(truth[lv], h.labels[i]) for i in range(h.n_levels))
            for lv in (1, 2, 3)}
    assert best[2] >= 0.9 and best[3] >= 0.9


def test_explicit_resolutions_and_gene_permutation(planted_small):
    x, genes, truth = planted_small
    resolutions = [0.3, 1.5]
    h = find_hierarchy(x, genes, resolutions=resolutions, min_module_size=3, seed=0)
    assert h.resolutions == resolutions and h.params["selection"] == "resolutions"
    perm = np.random.default_rng(0).permutation(len(genes))
    hp = find_hierarchy(x[:, perm], [genes[i] for i in perm], resolutions=resolutions,
                        min_module_size=3, seed=0)
    table, table_p = h.gene_table(), hp.gene_table().loc[h.gene_table().index]
    for level in (1, 2):
        assert adjusted_rand_score(table[f"level_{level}"], table_p[f"level_{level}"]) >= 0.95


def test_bootstrap_stability_is_high_for_planted_modules(planted_small):
    x, genes, _ = planted_small
    h = find_hierarchy(x, genes, resolutions=[0.3, 1.5], min_module_size=3, n_bootstrap=3,
                       seed=0)
    for stability in h.module_stability:
        assert np.all((stability >= 0) & (stability <= 1))
        assert np.nanmean(stability) > 0.8
    assert h.gene_stability.shape == (2, len(genes))
    matrices = bootstrap_coclustering(x[:, :20], [0.5], n_bootstrap=2, min_module_size=2)
    assert matrices[0].shape == (20, 20)
    np.testing.assert_allclose(matrices[0], matrices[0].T)


def test_enrichment_through_find_hierarchy(planted_small):
    x, genes, truth = planted_small
    sets = {name: [g for g, t in zip(genes, truth[2], strict=True) if t == name]
            for name in sorted(set(truth[2]))}
    sets["DECOY"] = genes[::7]
    h = find_hierarchy(x, genes, resolutions=[1.5], min_module_size=3, gene_sets=sets)
    top = h.module_table().set_index("module")["top_term"]
    recovered = {t for t in top if t.startswith("L2_")}
    assert len(recovered) >= 6


def test_bad_input_is_named(planted_small):
    x, genes, _ = planted_small
    with pytest.raises(ValueError, match="fewer than the minimum module size"):
        find_hierarchy(x[:, :4], genes[:4], min_module_size=5)
    with pytest.raises(ValueError, match="strictly increasing"):
        find_hierarchy(x, genes, resolutions=[1.0, 0.5])
    with pytest.raises(ValueError, match="gene names for"):
        find_hierarchy(x, genes[:-1])
    with pytest.raises(ValueError, match="n_modules must be positive and strictly increasing"):
        find_hierarchy(x, genes, n_modules=(7, 3), grid=GRID)
    with pytest.raises(ValueError, match="min_module_size"):
        find_hierarchy(x, genes, min_module_size=0)
