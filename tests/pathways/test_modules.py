import numpy as np
import pytest
from scipy import sparse
from sklearn.metrics import adjusted_rand_score

from cellsae.pathways import (
    check_resolutions,
    choose_levels,
    coclustering,
    leiden_partition,
    scan_resolutions,
)


def nested_block_graph(rng, noise=0.02):
    """Weights: 0.9 within 8 blocks of 6 genes, 0.45 within 2 groups of 4 blocks, else ~0."""
    fine = np.repeat(np.arange(8), 6)
    coarse = fine // 4
    w = np.where(fine[:, None] == fine[None, :], 0.9,
                 np.where(coarse[:, None] == coarse[None, :], 0.45, 0.0))
    w = w + noise * rng.random(w.shape)
    w = (w + w.T) / 2
    np.fill_diagonal(w, 0)
    return sparse.csr_matrix(w), coarse, fine


@pytest.mark.parametrize("bad, message", [
    ([1.0, 0.5], "strictly increasing"),
    ([0.5, 0.5], "strictly increasing"),
    ([], "empty"),
    ([0.1, -1.0], "positive"),
    (["a"], "list of numbers"),
])
def test_check_resolutions_names_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        check_resolutions(bad)


def test_leiden_recovers_blocks_at_two_resolutions(rng):
    graph, coarse, fine = nested_block_graph(rng)
    low = leiden_partition(graph, 0.5, objective="modularity", seed=0)
    high = leiden_partition(graph, 3.0, objective="modularity", seed=0)
    assert adjusted_rand_score(coarse, low) == 1.0
    assert adjusted_rand_score(fine, high) == 1.0
    # labels are 0..n-1 with module 0 the largest
    assert set(np.unique(high)) == set(range(8))


def test_cpm_resolution_is_a_weight_threshold(rng):
    graph, coarse, fine = nested_block_graph(rng)
    assert adjusted_rand_score(coarse, leiden_partition(graph, 0.3, objective="cpm")) == 1.0
    assert adjusted_rand_score(fine, leiden_partition(graph, 0.7, objective="cpm")) == 1.0
    # above every weight, no module of 2+ genes survives: all unassigned
    labels = leiden_partition(graph, 2.0, objective="cpm", min_module_size=2)
    assert (labels == -1).all()


def test_small_modules_are_unassigned(rng):
    graph, _, _ = nested_block_graph(rng)
    labels = leiden_partition(graph, 3.0, objective="modularity", min_module_size=7)
    assert (labels == -1).all()
    with pytest.raises(ValueError, match="objective must be one of"):
        leiden_partition(graph, 1.0, objective="louvain")


def test_scan_and_automatic_levels_find_both_block_levels(rng):
    graph, coarse, fine = nested_block_graph(rng)
    scan = scan_resolutions(graph, np.geomspace(0.2, 8, 20), objective="modularity", n_seeds=2,
                            seed=0, min_module_size=3)
    assert len(scan.partitions) == len(scan.resolutions) == len(scan.n_modules)
    assert scan.seed_stability.min() >= 0.0 and scan.seed_stability.max() <= 1.0
    chosen = choose_levels(scan, n_levels=2)
    assert [scan.n_modules[i] for i in chosen] == [2, 8]
    assert adjusted_rand_score(coarse, scan.partitions[chosen[0]]) == 1.0
    assert adjusted_rand_score(fine, scan.partitions[chosen[1]]) == 1.0
    auto = choose_levels(scan)
    assert {2, 8} <= {int(scan.n_modules[i]) for i in auto}
    assert list(scan.plateaus().columns[:4]) == ["n_modules", "start", "stop", "width"]


def test_choose_levels_without_structure_is_an_error():
    graph = sparse.csr_matrix(np.ones((6, 6)) - np.eye(6))
    scan = scan_resolutions(graph, [0.1, 0.2], objective="modularity", n_seeds=1)
    with pytest.raises(ValueError, match="no resolution in the scan split"):
        choose_levels(scan)


def test_coclustering():
    a = np.array([0, 0, 1, -1])
    b = np.array([0, 1, 1, -1])
    c = coclustering([a, b])
    np.testing.assert_allclose(np.diag(c), 1.0)
    assert c[0, 1] == 0.5 and c[1, 2] == 0.5 and c[0, 2] == 0.0
    assert c[3, 3] == 1.0 and c[2, 3] == 0.0  # unassigned genes never co-cluster
    with pytest.raises(ValueError, match="4 labels"):
        coclustering([a, np.zeros(3)])
