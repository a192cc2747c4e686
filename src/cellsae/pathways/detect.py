"""From expression to a module hierarchy: similarity → gene graph → Leiden levels → tree."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from .._utils import SeedLike, as_rng, progress
from .hierarchy import Hierarchy, build_hierarchy
from .modules import (
    _leiden,
    _to_igraph,
    check_resolutions,
    choose_levels,
    coclustering,
    scan_resolutions,
)
from .similarity import gene_knn_graph, shrunk_correlation

logger = logging.getLogger(__name__)

__all__ = ["find_hierarchy", "bootstrap_coclustering"]


def _check_inputs(x, genes, min_module_size: int) -> tuple[np.ndarray, list[str]]:
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expression must be a 2-D (n_cells, n_genes) array, got shape {x.shape}")
    genes = [str(g) for g in genes]
    if len(genes) != x.shape[1]:
        raise ValueError(f"got {len(genes)} gene names for {x.shape[1]} expression columns")
    if not isinstance(min_module_size, int | np.integer) or min_module_size < 1:
        raise ValueError(f"min_module_size must be a positive int, got {min_module_size!r}")
    if x.shape[1] < max(2, min_module_size):
        raise ValueError(
            f"only {x.shape[1]} gene(s) to cluster, fewer than the minimum module size "
            f"(min_module_size={min_module_size}, and at least 2); select more genes or lower "
            "min_module_size"
        )
    return x, genes


def find_hierarchy(
    x,
    genes: Sequence[str],
    *,
    resolutions: Sequence[float] | None = None,
    n_levels: int | str = "auto",
    n_modules: Sequence[int] | None = None,
    grid: Sequence[float] | None = None,
    objective: str = "modularity",
    k: int | None = 100,
    min_similarity: float = 0.0,
    power: float = 3.0,
    shrinkage: float | str = "auto",
    min_module_size: int = 5,
    n_seeds: int = 2,
    n_bootstrap: int = 0,
    gene_sets=None,
    seed: SeedLike = 0,
) -> Hierarchy:
    """Nested gene modules at several resolutions from expression across cells.

    The gene–gene correlation (Ledoit–Wolf shrunk) becomes a weighted gene kNN graph,
    Leiden clusters it at each level's resolution, and each finer module is attached to
    the coarser module holding most of its genes.

    Levels are either given (``resolutions``) or chosen from a scan over ``grid``: the
    plateaus of the scan (neighbouring resolutions giving the same modules, reproducibly
    across seeds) are ranked by width × seed stability, and the best ones become levels
    (``n_levels``: how many, or ``"auto"`` for every clear plateau; ``n_modules``: the
    plateau with the module count nearest each target).

    Parameters
    ----------
    x : (n_cells, n_genes) array or sparse matrix
        Expression, log-normalised (e.g. ``log1p`` of library-size-normalised counts) or
        imputed expression; no constant columns.
    genes : n_genes gene names
    resolutions
        Explicit levels, strictly increasing (coarse to fine); skips the automatic choice.
    n_levels, n_modules
        The automatic choice; ``n_modules`` (e.g. ``(3, 7, 17)``) overrides ``n_levels``.
    grid
        Resolutions to scan; default :func:`cellsae.pathways.modules.default_resolutions`.
    objective
        ``"modularity"`` (default; scanpy's Leiden objective, whose degree-normalised null
        model copes with genes whose correlations are all damped by sampling noise, as
        for sparse counts) or ``"cpm"`` (resolution = a correlation threshold; genes
        correlated with no module stay unassigned; best for dense, homogeneous data).
    k, min_similarity, power
        The gene graph, see :func:`cellsae.pathways.gene_knn_graph`. Edge weights are
        correlations raised to ``power``, like WGCNA's soft threshold: it keeps the strong
        within-module correlations and damps the weak ones, so fine modules separate
        before weakly attached genes break off (on the synthetic world, ``power=3`` lifts
        the level-2 ARI from 0.85 to 1.0 on two of three worlds; see benchmarks/pathways.py).
    shrinkage
        ``"auto"`` (Ledoit–Wolf) or a fixed intensity in [0, 1].
    min_module_size
        Smaller modules are dissolved (their genes unassigned).
    n_seeds
        Leiden seeds per resolution in the scan and at each level (the best-quality
        partition is kept).
    n_bootstrap
        Resamples of cells (with replacement) for module stability; 0 to skip.
    gene_sets
        Optional ``{name: genes}`` or GMT path for over-representation per module.
    seed
        Seed for Leiden and the bootstrap.

    Returns
    -------
    :class:`Hierarchy`; with ``n_bootstrap > 0`` its ``module_stability`` and
    ``gene_stability`` are set. The per-pair co-clustering matrices (``n_genes²`` each)
    are not kept; :func:`bootstrap_coclustering` returns them.
    """
    x, genes = _check_inputs(x, genes, min_module_size)
    rng = as_rng(seed)
    if resolutions is not None:
        resolutions = check_resolutions(resolutions)
    if n_modules is not None:
        n_modules = _check_counts(n_modules)
    correlation, delta = shrunk_correlation(x, shrinkage=shrinkage)
    graph = gene_knn_graph(correlation, k=k, min_similarity=min_similarity, power=power)
    params = {"objective": objective, "k": k, "min_similarity": min_similarity, "power": power,
              "shrinkage": shrinkage, "shrinkage_used": delta, "min_module_size": min_module_size,
              "n_seeds": n_seeds, "n_bootstrap": n_bootstrap, "n_cells": int(x.shape[0]),
              "seed": seed if isinstance(seed, int) else None}
    if resolutions is None:
        scan = scan_resolutions(graph, grid, objective=objective, n_seeds=n_seeds, seed=rng,
                                min_module_size=min_module_size)
        max_modules = max(2, len(genes) // min_module_size)
        if n_modules is not None:
            indices = _levels_for_counts(scan, n_modules)
        else:
            indices = choose_levels(scan, n_levels=n_levels, max_modules=max_modules)
        resolutions = [scan.resolutions[i] for i in indices]
        partitions = [scan.partitions[i] for i in indices]
        params["selection"] = "n_modules" if n_modules is not None else f"n_levels={n_levels}"
        params["scan"] = scan.to_frame().round(6).to_dict(orient="list")
    else:
        from .modules import _best_of_seeds

        g = _to_igraph(graph)
        seeds = rng.integers(0, 2**31 - 1, size=max(1, n_seeds))
        partitions = [_best_of_seeds(g, r, seeds, objective=objective,
                                     min_module_size=min_module_size)[0] for r in resolutions]
        params["selection"] = "resolutions"
    hierarchy = build_hierarchy(partitions, genes, resolutions, params=params)
    empty = [i + 1 for i, n in enumerate(hierarchy.n_modules) if n == 0]
    if empty:
        logger.warning("level(s) %s have no module of at least %d genes at their resolution",
                       empty, min_module_size)
    logger.info("hierarchy: %s modules at resolutions %s, nesting consistency %.3f",
                hierarchy.n_modules, [round(r, 4) for r in resolutions],
                hierarchy.nesting_consistency)
    if n_bootstrap:
        matrices = bootstrap_coclustering(
            x, hierarchy.resolutions, n_bootstrap=n_bootstrap, objective=objective, k=k,
            min_similarity=min_similarity, power=power, shrinkage=shrinkage, min_module_size=min_module_size,
            seed=rng)
        hierarchy = _with_stability(hierarchy, matrices)
    if gene_sets is not None:
        hierarchy = hierarchy.enrich(gene_sets)
    return hierarchy


def _check_counts(targets) -> list[int]:
    try:
        targets = [int(t) for t in targets]
    except (TypeError, ValueError):
        raise ValueError(f"n_modules must be a list of ints, got {targets!r}") from None
    if (not targets or any(b <= a for a, b in zip(targets, targets[1:], strict=False))
            or min(targets) < 1):
        raise ValueError(f"n_modules must be positive and strictly increasing, got {targets}")
    return targets


def _levels_for_counts(scan, targets: Sequence[int]) -> list[int]:
    """For each target module count, the best plateau with the nearest count."""
    targets = _check_counts(targets)
    table = scan.plateaus()
    indices = []
    for target in targets:
        distance = (table["n_modules"] - target).abs()
        best = table[distance == distance.min()].iloc[0]
        if best["n_modules"] != target:
            logger.warning("no resolution in the scan gives %d modules; using %d (resolution %.4g)",
                           target, best["n_modules"], best["resolution"])
        indices.append(int(best["index"]))
    if len(set(indices)) < len(indices) or indices != sorted(indices):
        logger.warning("the requested module counts %s map to resolutions %s, which are not "
                       "distinct and increasing", targets, [scan.resolutions[i] for i in indices])
        indices = sorted(set(indices))
    return indices


def bootstrap_coclustering(x, resolutions: Sequence[float], *, n_bootstrap: int = 20,
                           objective: str = "modularity", k: int | None = 100,
                           min_similarity: float = 0.0, power: float = 3.0,
                           shrinkage: float | str = "auto",
                           min_module_size: int = 5, seed: SeedLike = 0) -> list[np.ndarray]:
    """Co-clustering frequency of each gene pair over bootstrap resamples of cells.

    Each resample draws ``n_cells`` cells with replacement, recomputes the correlation and
    graph, and clusters at each of ``resolutions``.

    Returns
    -------
    list (one per resolution) of (n_genes, n_genes) float arrays in [0, 1].
    """
    x = x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=np.float64)
    resolutions = check_resolutions(resolutions)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    rng = as_rng(seed)
    n_cells = x.shape[0]
    per_level: list[list[np.ndarray]] = [[] for _ in resolutions]
    for _ in progress(range(n_bootstrap), desc="bootstrap"):
        sample = x[rng.integers(0, n_cells, size=n_cells)]
        varying = sample.std(0) > 0
        correlation = np.zeros((x.shape[1], x.shape[1]))
        sub, _ = shrunk_correlation(sample[:, varying], shrinkage=shrinkage)
        correlation[np.ix_(varying, varying)] = sub
        np.fill_diagonal(correlation, 1.0)
        g = _to_igraph(gene_knn_graph(correlation, k=k, min_similarity=min_similarity,
                                      power=power))
        leiden_seed = int(rng.integers(0, 2**31 - 1))
        for i, r in enumerate(resolutions):
            per_level[i].append(_leiden(g, r, objective=objective, seed=leiden_seed,
                                        min_module_size=min_module_size, n_iterations=-1))
    return [coclustering(parts) for parts in per_level]


def _with_stability(hierarchy: Hierarchy, matrices: list[np.ndarray]) -> Hierarchy:
    from dataclasses import replace

    module_stability, gene_stability = [], np.full(hierarchy.labels.shape, np.nan)
    for i, matrix in enumerate(matrices):
        labels = hierarchy.labels[i]
        values = []
        for m in range(len(hierarchy.module_names[i])):
            members = np.flatnonzero(labels == m)
            block = matrix[np.ix_(members, members)]
            n = members.size
            values.append(float((block.sum() - n) / (n * (n - 1))) if n > 1 else np.nan)
            if n > 1:
                gene_stability[i, members] = (block.sum(1) - 1) / (n - 1)
        module_stability.append(np.asarray(values))
    return replace(hierarchy, module_stability=module_stability, gene_stability=gene_stability)
