"""Gene modules by Leiden clustering of the gene graph, over a grid of resolutions.

The levels of the hierarchy are either given as resolutions, or chosen automatically as
the widest *plateaus* of a resolution scan: runs of consecutive resolutions that give the
same number of modules, reproducibly across Leiden seeds. A real hierarchy shows as a
staircase (e.g. 3 modules over a wide range of resolutions, then 7, then 17), which is
what makes the choice work on data where the number of modules is unknown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from .._utils import SeedLike, as_rng, progress

logger = logging.getLogger(__name__)

__all__ = [
    "leiden_partition", "ResolutionScan", "scan_resolutions", "choose_levels",
    "coclustering", "check_resolutions", "default_resolutions", "n_modules_of",
    "UNASSIGNED",
]

def check_resolutions(resolutions) -> list[float]:
    """Validate a user's resolutions: positive, finite and strictly increasing."""
    try:
        values = [float(r) for r in resolutions]
    except (TypeError, ValueError):
        raise ValueError(f"resolutions must be a list of numbers, got {resolutions!r}") from None
    if not values:
        raise ValueError("resolutions is empty; give at least one resolution, e.g. [0.1, 0.5, 1.0]")
    bad = [r for r in values if not np.isfinite(r) or r <= 0]
    if bad:
        raise ValueError(f"resolutions must be positive and finite, got {bad}")
    for a, b in zip(values, values[1:], strict=False):
        if not b > a:
            raise ValueError(
                f"resolutions must be strictly increasing (coarse to fine levels), got {values}: "
                f"{b} follows {a}; sort them and drop duplicates"
            )
    return values


def _to_igraph(graph: sparse.spmatrix):
    import igraph as ig

    upper = sparse.triu(sparse.csr_matrix(graph), k=1).tocoo()
    g = ig.Graph(n=graph.shape[0], edges=list(zip(upper.row.tolist(), upper.col.tolist(),
                                                  strict=True)),
                 directed=False)
    g.es["weight"] = upper.data.astype(float).tolist()
    return g


UNASSIGNED = -1
OBJECTIVES = ("cpm", "modularity")


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel so module 0 is the largest (ties: first gene first); -1 stays unassigned."""
    out = np.full(labels.shape, UNASSIGNED, dtype=np.int64)
    assigned = labels >= 0
    if not assigned.any():
        return out
    uniq, first, counts = np.unique(labels[assigned], return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = np.empty(uniq.max() + 1, dtype=np.int64)
    mapping[uniq[order]] = np.arange(len(uniq))
    out[assigned] = mapping[labels[assigned]]
    return out


def _partition_type(objective: str):
    import leidenalg

    if objective == "cpm":
        return leidenalg.CPMVertexPartition
    if objective == "modularity":
        return leidenalg.RBConfigurationVertexPartition
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _leiden(g, resolution: float, *, objective: str, seed: int, min_module_size: int,
            n_iterations: int, return_quality: bool = False):
    import leidenalg

    partition = leidenalg.find_partition(
        g, _partition_type(objective), weights="weight", resolution_parameter=float(resolution),
        n_iterations=n_iterations, seed=int(seed),
    )
    labels = np.asarray(partition.membership, dtype=np.int64)
    counts = np.bincount(labels)
    labels = np.where(counts[labels] >= max(1, min_module_size), labels, UNASSIGNED)
    labels = _relabel_by_size(labels)
    return (labels, float(partition.quality())) if return_quality else labels


def _best_of_seeds(g, resolution: float, seeds, *, objective: str,
                   min_module_size: int) -> tuple[np.ndarray, float]:
    """The highest-quality partition over Leiden seeds, and the seeds' agreement with it.

    Leiden is a local optimiser: at low resolutions on dense graphs a seed can stop in a
    poorer optimum, so the best objective value wins (not a vote). The agreement (mean
    ARI of the other seeds' partitions with the best) measures how reproducible it is.
    """
    from sklearn.metrics import adjusted_rand_score

    runs = [_leiden(g, resolution, objective=objective, seed=int(s),
                    min_module_size=min_module_size, n_iterations=-1, return_quality=True)
            for s in seeds]
    best = int(np.argmax([q for _, q in runs]))
    labels = runs[best][0]
    others = [adjusted_rand_score(labels, r) for i, (r, _) in enumerate(runs) if i != best]
    return labels, float(np.mean(others)) if others else 1.0


def leiden_partition(graph: sparse.spmatrix, resolution: float, *, objective: str = "cpm",
                     seed: SeedLike = 0, min_module_size: int = 1,
                     n_iterations: int = -1) -> np.ndarray:
    """Leiden clustering of a weighted gene graph at one resolution.

    Parameters
    ----------
    graph : (n_genes, n_genes) sparse symmetric matrix of non-negative weights
    resolution
        Higher gives more, smaller modules. With ``objective="cpm"`` (the constant Potts
        model) the resolution is a density threshold in the weights' own units: on a
        correlation graph, a module is a set of genes whose mean pairwise correlation
        exceeds it, whatever the number of genes (no resolution limit), and genes
        correlated with nothing stay on their own.
    objective
        ``"cpm"`` or ``"modularity"`` (Reichardt–Bornholdt modularity with a resolution,
        what ``scanpy.tl.leiden`` optimises; resolutions of about 0.1–2).
    seed
        Seed for Leiden's random node order.
    min_module_size
        Modules with fewer genes are dissolved: their genes are marked unassigned (-1).
    n_iterations
        Leiden iterations; -1 iterates until the partition no longer changes.

    Returns
    -------
    (n_genes,) int array of module labels 0..n_modules-1 (module 0 the largest), -1 for
    unassigned genes.
    """
    rng = as_rng(seed)
    return _leiden(_to_igraph(graph), resolution, objective=objective,
                   seed=int(rng.integers(0, 2**31 - 1)), min_module_size=min_module_size,
                   n_iterations=n_iterations)


def n_modules_of(labels: np.ndarray) -> int:
    """Number of modules in a label array (unassigned genes, -1, not counted)."""
    labels = np.asarray(labels)
    return int(np.unique(labels[labels >= 0]).size)


@dataclass
class ResolutionScan:
    """Leiden over a grid of resolutions: module counts, seed stability, partitions.

    Attributes
    ----------
    resolutions : list of float
    n_modules : (n_resolutions,) int array, modules in the consensus partition
    seed_stability : (n_resolutions,) float array, mean ARI of the other Leiden seeds'
        partitions with the best one
    partitions : list of (n_genes,) int arrays, the best partition (highest Leiden quality)
        over seeds at each resolution
    """

    resolutions: list[float]
    n_modules: np.ndarray
    seed_stability: np.ndarray
    partitions: list[np.ndarray] = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"resolution": self.resolutions, "n_modules": self.n_modules,
                             "seed_stability": self.seed_stability,
                             "unassigned": [float(np.mean(p < 0)) for p in self.partitions]})

    def adjacent_agreement(self) -> np.ndarray:
        """(n_resolutions - 1,) ARI between the partitions at neighbouring resolutions."""
        from sklearn.metrics import adjusted_rand_score

        return np.asarray([adjusted_rand_score(a, b) for a, b in
                           zip(self.partitions, self.partitions[1:], strict=False)])

    def plateaus(self, *, min_agreement: float = 0.9) -> pd.DataFrame:
        """Runs of neighbouring resolutions giving the same modules, best first.

        A run continues while the module count stays the same and neighbouring partitions
        agree (ARI >= ``min_agreement``, unassigned genes counted as one class).

        Columns: ``n_modules``, ``start``, ``stop`` (indices into the grid, stop exclusive),
        ``width`` (number of resolutions), ``stability`` (mean seed stability over the run),
        ``score`` (width × stability), ``index`` and ``resolution`` (the run's
        representative: the resolution leaving the fewest genes unassigned, then the one
        nearest the middle).
        """
        agreement = self.adjacent_agreement()
        rows = []
        start = 0
        n = len(self.resolutions)
        for stop in range(1, n + 1):
            if (stop == n or self.n_modules[stop] != self.n_modules[start]
                    or agreement[stop - 1] < min_agreement):
                idx = np.arange(start, stop)
                stability = float(np.mean(self.seed_stability[idx]))
                # the run's representative: fewest unassigned genes, then nearest the middle
                unassigned = np.asarray([np.mean(self.partitions[i] < 0) for i in idx])
                centre = (idx[0] + idx[-1]) / 2
                middle = int(idx[np.lexsort((np.abs(idx - centre), unassigned))[0]])
                rows.append({"n_modules": int(self.n_modules[start]), "start": start, "stop": stop,
                             "width": int(idx.size), "stability": stability,
                             "unassigned": float(np.mean([np.mean(self.partitions[i] < 0)
                                                          for i in idx])),
                             "score": idx.size * stability,
                             "resolution": float(self.resolutions[middle]), "index": middle})
                start = stop
        frame = pd.DataFrame(rows)
        return frame.sort_values(["score", "n_modules"], ascending=[False, True],
                                 ignore_index=True)


def default_resolutions(objective: str = "modularity") -> list[float]:
    """The scan's default grid.

    Modularity: 70 log-spaced resolutions from 0.02 to 20 (the scan stops early once most
    genes are left in fragments). CPM: 49 steps of 0.02 from 0.01 (correlation units).
    """
    if objective == "cpm":
        return [float(r) for r in np.round(np.arange(0.01, 0.98, 0.02), 4)]
    _partition_type(objective)
    return [float(r) for r in np.round(np.geomspace(0.02, 20.0, 70), 5)]


def scan_resolutions(graph: sparse.spmatrix, resolutions=None, *, objective: str = "modularity",
                     n_seeds: int = 2, seed: SeedLike = 0, min_module_size: int = 1,
                     stop_unassigned: float = 0.2) -> ResolutionScan:
    """Run Leiden with ``n_seeds`` seeds at each resolution of a grid.

    Parameters
    ----------
    graph : (n_genes, n_genes) sparse symmetric weights
    resolutions
        Strictly increasing positive resolutions; ``None`` for :func:`default_resolutions`.
    objective
        ``"cpm"`` or ``"modularity"``, as in :func:`leiden_partition`.
    n_seeds
        Leiden seeds per resolution; the partition with the highest quality is kept and
        the others' agreement with it is the seed stability.
    seed, min_module_size
        As in :func:`leiden_partition`.
    stop_unassigned
        Stop the scan (skip higher resolutions) after two resolutions in a row leave this
        fraction of the genes more unassigned than the least so far: past that point the
        graph only fragments into pieces smaller than ``min_module_size``.
    """
    resolutions = check_resolutions(default_resolutions(objective) if resolutions is None
                                    else resolutions)
    _partition_type(objective)
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    rng = as_rng(seed)
    seeds = rng.integers(0, 2**31 - 1, size=n_seeds)
    g = _to_igraph(graph)
    partitions, counts, stability = [], [], []
    fragmented = 0
    least: float | None = None
    for resolution in progress(resolutions, desc="resolution scan"):
        best, agreement = _best_of_seeds(g, resolution, seeds, objective=objective,
                                         min_module_size=min_module_size)
        partitions.append(best)
        counts.append(n_modules_of(best))
        stability.append(agreement)
        unassigned = float(np.mean(best < 0))
        least = unassigned if least is None else min(least, unassigned)
        fragmented = fragmented + 1 if unassigned > least + stop_unassigned else 0
        if fragmented >= 2:
            break
    n = len(partitions)
    return ResolutionScan(resolutions[:n], np.asarray(counts), np.asarray(stability), partitions)


def choose_levels(scan: ResolutionScan, *, n_levels: int | str = "auto", max_modules: int | None = None,
                  min_width: int = 2, min_stability: float = 0.9,
                  max_extra_unassigned: float = 0.1) -> list[int]:
    """Pick the hierarchy's levels from a resolution scan: the widest stable plateaus.

    Parameters
    ----------
    scan
        From :func:`scan_resolutions`.
    n_levels
        An int keeps the ``n_levels`` best-scoring plateaus (distinct module counts, at
        least 2 modules each); ``"auto"`` keeps every plateau at least ``min_width``
        resolutions wide with seed stability at least ``min_stability``.
    max_modules
        Ignore plateaus with more modules than this (e.g. ``n_genes // min_module_size``).
    min_width, min_stability
        The ``"auto"`` criteria.
    max_extra_unassigned
        Ignore plateaus leaving more than this fraction of genes unassigned beyond the
        least any plateau leaves (high resolutions shatter modules into fragments).

    Returns
    -------
    Indices into ``scan.resolutions`` of the chosen levels, coarse to fine.
    """
    table = scan.plateaus()
    table = table[table["n_modules"] >= 2]
    # fragments: many more genes left unassigned than at the cleanest resolution
    table = table[table["unassigned"] <= table["unassigned"].min() + max_extra_unassigned]
    # one plateau per module count (the best-scoring), so levels differ in resolution of detail
    table = table.drop_duplicates("n_modules", keep="first")
    if max_modules is not None:
        table = table[table["n_modules"] <= max_modules]
    if table.empty:
        raise ValueError(
            "no resolution in the scan split the genes into 2 or more modules; the gene graph "
            "may have no structure, or the grid is too coarse: pass larger resolutions"
        )
    if isinstance(n_levels, str):
        if n_levels != "auto":
            raise ValueError(f"n_levels must be a positive int or 'auto', got {n_levels!r}")
        chosen = table[(table["width"] >= min_width) & (table["stability"] >= min_stability)]
        if chosen.empty:
            logger.warning("no plateau is %d resolutions wide with seed stability >= %.2f; "
                           "keeping the best-scoring one", min_width, min_stability)
            chosen = table.head(1)
    else:
        if not isinstance(n_levels, int | np.integer) or n_levels < 1:
            raise ValueError(f"n_levels must be a positive int or 'auto', got {n_levels!r}")
        if len(table) < n_levels:
            logger.warning("asked for %d levels but the scan has only %d distinct module counts "
                           "(%s); using those", n_levels, len(table),
                           sorted(table["n_modules"].tolist()))
        chosen = table.head(int(n_levels))
    # coarse to fine by resolution; a level must have more modules than the one before it
    kept: list[pd.Series] = []
    for _, row in chosen.sort_values("resolution").iterrows():
        if kept and row["n_modules"] <= kept[-1]["n_modules"]:
            if row["score"] > kept[-1]["score"]:
                kept[-1] = row
            continue
        kept.append(row)
    chosen = pd.DataFrame(kept)
    logger.info("levels chosen from the scan: %s modules at resolutions %s",
                chosen["n_modules"].tolist(), [round(r, 4) for r in chosen["resolution"]])
    return chosen["index"].astype(int).tolist()


def coclustering(partitions: list[np.ndarray]) -> np.ndarray:
    """Fraction of partitions in which each pair of genes shares a module.

    Parameters
    ----------
    partitions : list of (n_genes,) int arrays; -1 (unassigned) never co-clusters

    Returns
    -------
    (n_genes, n_genes) float array in [0, 1], unit diagonal.
    """
    if not partitions:
        raise ValueError("coclustering needs at least one partition")
    n = len(partitions[0])
    total = np.zeros((n, n))
    for labels in partitions:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"all partitions must have {n} labels, got shape {labels.shape}")
        total += (labels[:, None] == labels[None, :]) & (labels >= 0)[:, None]
    out = total / len(partitions)
    np.fill_diagonal(out, 1.0)
    return out
