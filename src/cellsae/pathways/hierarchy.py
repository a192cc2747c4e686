"""The module hierarchy: levels of gene modules, each finer module under a coarser parent.

Partitions found independently at increasing resolutions need not nest. Each module at a
finer level is attached to the coarser module that holds most of its genes, and the
*nesting consistency* says how well the levels actually nest: the fraction of genes
assigned at a finer level whose coarser module is their fine module's parent (1 for a
perfect tree).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils import atomic_write_text, require_file

__all__ = ["Hierarchy", "build_hierarchy", "nesting_consistency", "HIERARCHY_FORMAT"]

HIERARCHY_FORMAT = "cellsae.pathways.Hierarchy"
HIERARCHY_VERSION = 1


def _parents(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """For each fine module, the coarse module holding most of its genes (-1 if none)."""
    n_fine = int(fine.max()) + 1 if (fine >= 0).any() else 0
    parents = np.full(n_fine, -1, dtype=np.int64)
    for module in range(n_fine):
        up = coarse[(fine == module) & (coarse >= 0)]
        if up.size:
            values, counts = np.unique(up, return_counts=True)
            parents[module] = values[np.argmax(counts)]  # ties: the lower (larger) module
    return parents


def nesting_consistency(coarse: np.ndarray, fine: np.ndarray) -> float:
    """Fraction of genes assigned at the fine level whose coarse module is their parent's.

    Parameters
    ----------
    coarse, fine : (n_genes,) int arrays of module labels, -1 for unassigned genes

    Returns
    -------
    float in [0, 1]; NaN if no gene is assigned at the fine level. A gene assigned at the
    fine level but unassigned at the coarse level counts as not nested.
    """
    coarse = np.asarray(coarse)
    fine = np.asarray(fine)
    if coarse.shape != fine.shape:
        raise ValueError(f"label arrays differ in shape: {coarse.shape} and {fine.shape}")
    assigned = fine >= 0
    if not assigned.any():
        return float("nan")
    parents = _parents(coarse, fine)
    return float(np.mean(coarse[assigned] == parents[fine[assigned]]))


@dataclass
class Hierarchy:
    """Gene modules at several levels, nested into a tree, with stability and enrichment.

    Levels are numbered from 1 (coarsest). Build one with
    :func:`cellsae.pathways.find_hierarchy` or :func:`build_hierarchy`; save with
    :meth:`save` (JSON) and read back with :meth:`load`.

    Attributes
    ----------
    genes : list of str, the tested genes (the clustering's universe and enrichment background)
    resolutions : list of float, one per level, increasing
    labels : (n_levels, n_genes) int array; module index per gene and level, -1 unassigned
    module_names : list (per level) of lists of str, e.g. ``"M2"``, ``"M2.1"``, ``"M2.1.3"``
    parents : list (per level) of (n_modules,) int arrays, index of the parent module in the
        level above (-1 at level 1 and for modules with no assigned gene above)
    module_stability : list (per level) of (n_modules,) float arrays, or None
        Mean bootstrap co-clustering frequency over pairs of the module's genes.
    gene_stability : (n_levels, n_genes) float array or None
        Mean bootstrap co-clustering of each gene with the other genes of its module.
    enrichment : DataFrame or None, see :func:`cellsae.pathways.over_representation`
        (with an added ``level`` column)
    params : dict, the parameters that produced it
    """

    genes: list[str]
    resolutions: list[float]
    labels: np.ndarray
    module_names: list[list[str]]
    parents: list[np.ndarray]
    module_stability: list[np.ndarray] | None = None
    gene_stability: np.ndarray | None = None
    enrichment: pd.DataFrame | None = None
    params: dict[str, Any] = field(default_factory=dict)

    # -- structure ------------------------------------------------------------------------

    @property
    def n_levels(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_modules(self) -> list[int]:
        """Modules per level, coarse to fine."""
        return [len(names) for names in self.module_names]

    def _level_index(self, level: int) -> int:
        if not isinstance(level, int | np.integer) or not 1 <= level <= self.n_levels:
            raise ValueError(f"level must be an int from 1 to {self.n_levels}, got {level!r}")
        return int(level) - 1

    def nesting(self) -> list[float]:
        """Nesting consistency of each level with the level above (levels 2..n)."""
        return [nesting_consistency(self.labels[i - 1], self.labels[i])
                for i in range(1, self.n_levels)]

    @property
    def nesting_consistency(self) -> float:
        """Over all levels below the first: fraction of assigned genes that nest (1 if one level)."""
        if self.n_levels < 2:
            return 1.0
        hits = total = 0
        for i in range(1, self.n_levels):
            assigned = self.labels[i] >= 0
            if assigned.any():
                score = nesting_consistency(self.labels[i - 1], self.labels[i])
                hits += score * assigned.sum()
                total += assigned.sum()
        return float(hits / total) if total else float("nan")

    def modules(self, level: int) -> dict[str, list[str]]:
        """``{module name: genes}`` at one level (1 = coarsest)."""
        i = self._level_index(level)
        genes = np.asarray(self.genes, dtype=object)
        return {name: genes[self.labels[i] == m].tolist()
                for m, name in enumerate(self.module_names[i])}

    def all_modules(self) -> dict[str, list[str]]:
        """Every module of every level, ``{name: genes}`` (names are unique across levels)."""
        out: dict[str, list[str]] = {}
        for level in range(1, self.n_levels + 1):
            out.update(self.modules(level))
        return out

    def parent_of(self, name: str) -> str | None:
        """The parent module's name, or None at level 1."""
        for i, names in enumerate(self.module_names):
            if name in names:
                p = int(self.parents[i][names.index(name)])
                return self.module_names[i - 1][p] if i > 0 and p >= 0 else None
        raise KeyError(f"no module named {name!r}; modules are {self._some_names()}")

    def _some_names(self) -> str:
        names = [n for level in self.module_names for n in level]
        return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")

    def gene_table(self) -> pd.DataFrame:
        """One row per gene, one column per level (``level_1``...) with its module ('' if none)."""
        data = {}
        for i in range(self.n_levels):
            names = np.asarray([*self.module_names[i], ""], dtype=object)
            data[f"level_{i + 1}"] = names[self.labels[i]]  # -1 indexes the trailing ''
        return pd.DataFrame(data, index=pd.Index(self.genes, name="gene"))

    def module_table(self) -> pd.DataFrame:
        """One row per module: level, name, parent, size, resolution, stability, top term, genes."""
        rows = []
        top = self._top_terms()
        for i in range(self.n_levels):
            sizes = np.bincount(self.labels[i][self.labels[i] >= 0],
                                minlength=len(self.module_names[i]))
            for m, name in enumerate(self.module_names[i]):
                p = int(self.parents[i][m])
                rows.append({
                    "level": i + 1, "module": name,
                    "parent": self.module_names[i - 1][p] if i > 0 and p >= 0 else "",
                    "size": int(sizes[m]), "resolution": float(self.resolutions[i]),
                    "stability": (float(self.module_stability[i][m])
                                  if self.module_stability is not None else np.nan),
                    "top_term": top.get(name, ("", np.nan))[0],
                    "top_term_fdr": top.get(name, ("", np.nan))[1],
                    "genes": ",".join(np.asarray(self.genes)[self.labels[i] == m]),
                })
        return pd.DataFrame(rows)

    def _top_terms(self) -> dict[str, tuple[str, float]]:
        if self.enrichment is None or self.enrichment.empty:
            return {}
        best = self.enrichment.sort_values("pvalue").drop_duplicates("module")
        return {r.module: (r.term, float(r.fdr)) for r in best.itertuples()}

    # -- enrichment -----------------------------------------------------------------------

    def enrich(self, gene_sets, **kwargs) -> Hierarchy:
        """A copy with an over-representation table for every module against ``gene_sets``.

        ``gene_sets`` is a ``{name: genes}`` mapping or a GMT path; the background is the
        tested genes (:attr:`genes`). Keyword arguments go to
        :func:`cellsae.pathways.over_representation`.
        """
        from .enrichment import over_representation
        from .genesets import read_gmt

        if isinstance(gene_sets, str | os.PathLike):
            gene_sets = read_gmt(gene_sets)
        tables = []
        for level in range(1, self.n_levels + 1):
            table = over_representation(self.modules(level), gene_sets, background=self.genes,
                                        **kwargs)
            table.insert(0, "level", level)
            tables.append(table)
        return replace(self, enrichment=pd.concat(tables, ignore_index=True))

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self, *, max_terms: int | None = 50) -> dict[str, Any]:
        """A JSON-ready dict: levels → modules (name, genes, parent, size, stability, enrichment).

        ``max_terms`` keeps each module's best (lowest p-value) enrichment rows, so a large
        GMT does not bloat the file; None keeps all (the full table is :attr:`enrichment`).
        """
        genes = np.asarray(self.genes, dtype=object)
        enrichment = {}
        if self.enrichment is not None:
            for name, group in self.enrichment.groupby("module", sort=False):
                if max_terms is not None:
                    group = group.sort_values("pvalue", kind="stable").head(max_terms)
                enrichment[name] = [_jsonable_row(r) for r in
                                    group.drop(columns=["module", "level"], errors="ignore")
                                    .to_dict(orient="records")]
        nest = [None, *self.nesting()]
        levels = []
        for i in range(self.n_levels):
            modules = []
            for m, name in enumerate(self.module_names[i]):
                p = int(self.parents[i][m])
                modules.append({
                    "name": name,
                    "parent": self.module_names[i - 1][p] if i > 0 and p >= 0 else None,
                    "size": int((self.labels[i] == m).sum()),
                    "genes": genes[self.labels[i] == m].tolist(),
                    "stability": (float(self.module_stability[i][m])
                                  if self.module_stability is not None else None),
                    "enrichment": enrichment.get(name, []) if self.enrichment is not None else None,
                })
            levels.append({
                "level": i + 1, "resolution": float(self.resolutions[i]),
                "n_modules": len(self.module_names[i]),
                "nesting_consistency": None if nest[i] is None or np.isnan(nest[i]) else nest[i],
                "n_unassigned": int((self.labels[i] < 0).sum()),
                "modules": modules,
                "gene_stability": (None if self.gene_stability is None else
                                   [None if np.isnan(v) else float(v)
                                    for v in self.gene_stability[i]]),
            })
        return {
            "format": HIERARCHY_FORMAT, "version": HIERARCHY_VERSION,
            "genes": list(map(str, self.genes)),
            "nesting_consistency": _nan_to_none(self.nesting_consistency),
            "n_modules": self.n_modules,
            "params": _jsonable(self.params),
            "levels": levels,
        }

    def save(self, path: str | os.PathLike, *, max_terms: int | None = 50) -> Path:
        """Write :meth:`to_dict` as JSON, atomically (``max_terms`` as in :meth:`to_dict`)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(max_terms=max_terms), indent=1))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "hierarchy") -> Hierarchy:
        if not isinstance(data, dict) or data.get("format") != HIERARCHY_FORMAT:
            raise ValueError(f"{source} is not a cellsae hierarchy (expected \"format\": "
                             f"\"{HIERARCHY_FORMAT}\")")
        if data.get("version", 0) > HIERARCHY_VERSION:
            raise ValueError(f"{source} has format version {data['version']}, newer than this "
                             f"cellsae reads ({HIERARCHY_VERSION}); upgrade cellsae")
        try:
            genes = list(data["genes"])
            index = {g: i for i, g in enumerate(genes)}
            levels = data["levels"]
            labels = np.full((len(levels), len(genes)), -1, dtype=np.int64)
            names, parents, stability, gene_stability, resolutions = [], [], [], [], []
            rows = []
            has_stability = all(m.get("stability") is not None for lv in levels
                                for m in lv["modules"])
            has_enrichment = any(m.get("enrichment") is not None for lv in levels
                                 for m in lv["modules"])
            for i, level in enumerate(levels):
                resolutions.append(float(level["resolution"]))
                level_names = [m["name"] for m in level["modules"]]
                names.append(level_names)
                for m, module in enumerate(level["modules"]):
                    labels[i, [index[g] for g in module["genes"]]] = m
                    for row in module.get("enrichment") or []:
                        rows.append({"level": i + 1, "module": module["name"], **row})
                above = names[i - 1] if i > 0 else []
                parents.append(np.asarray([above.index(m["parent"]) if m.get("parent") else -1
                                           for m in level["modules"]], dtype=np.int64))
                stability.append(np.asarray([m.get("stability") or np.nan
                                             for m in level["modules"]], dtype=float))
                gs = level.get("gene_stability")
                gene_stability.append(None if gs is None else
                                      np.asarray([np.nan if v is None else v for v in gs], float))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source} is malformed: {type(err).__name__}: {err}") from None
        enrichment = None
        if has_enrichment:
            enrichment = pd.DataFrame(rows) if rows else pd.DataFrame(
                columns=["level", "module", "term", "pvalue", "fdr"])
        return cls(
            genes=genes, resolutions=resolutions, labels=labels, module_names=names,
            parents=parents, module_stability=stability if has_stability else None,
            gene_stability=(np.vstack(gene_stability)
                            if gene_stability and all(g is not None for g in gene_stability)
                            else None),
            enrichment=enrichment, params=dict(data.get("params") or {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Hierarchy:
        """Read a hierarchy written by :meth:`save`."""
        path = require_file(path, what="hierarchy JSON")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"'{path}' is not valid JSON: {err}") from None
        return cls.from_dict(data, source=f"'{path}'")


def _nan_to_none(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _nan_to_none(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return _nan_to_none(value)
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def _jsonable_row(row: dict) -> dict:
    return {k: _jsonable(v) for k, v in row.items()}


def _name_modules(labels: np.ndarray, parents: list[np.ndarray]) -> list[list[str]]:
    """Tree names: level-1 modules M1, M2...; a child of M2 is M2.1, M2.2... by size."""
    names: list[list[str]] = []
    for i in range(labels.shape[0]):
        n_modules = len(parents[i])
        sizes = np.bincount(labels[i][labels[i] >= 0], minlength=n_modules)
        level_names = [""] * n_modules
        if i == 0:
            for m in range(n_modules):
                level_names[m] = f"M{m + 1}"
        else:
            for parent in np.unique(parents[i]):
                children = np.flatnonzero(parents[i] == parent)
                children = children[np.lexsort((children, -sizes[children]))]
                stem = names[i - 1][parent] if parent >= 0 else f"L{i + 1}.orphan"
                for j, child in enumerate(children, start=1):
                    level_names[child] = f"{stem}.{j}"
        names.append(level_names)
    return names


def build_hierarchy(partitions, genes, resolutions, *, params: dict | None = None) -> Hierarchy:
    """Nest partitions from coarse to fine into a :class:`Hierarchy`.

    Parameters
    ----------
    partitions : sequence of (n_genes,) int arrays, coarse to fine; -1 marks unassigned genes
    genes : sequence of n_genes gene names
    resolutions : the resolution of each partition, strictly increasing
    params : recorded in the result
    """
    from .modules import _relabel_by_size, check_resolutions

    genes = [str(g) for g in genes]
    if len(set(genes)) != len(genes):
        dupes = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
        raise ValueError(f"gene names must be unique; duplicated: {dupes[:10]}")
    resolutions = check_resolutions(resolutions)
    partitions = [np.asarray(p, dtype=np.int64) for p in partitions]
    if len(partitions) != len(resolutions):
        raise ValueError(f"got {len(partitions)} partitions but {len(resolutions)} resolutions")
    for i, p in enumerate(partitions):
        if p.shape != (len(genes),):
            raise ValueError(f"partition {i} has shape {p.shape}, expected ({len(genes)},)")
    labels = np.vstack([_relabel_by_size(p) for p in partitions])
    parents = [np.full(int(labels[0].max()) + 1 if (labels[0] >= 0).any() else 0, -1,
                       dtype=np.int64)]
    for i in range(1, labels.shape[0]):
        parents.append(_parents(labels[i - 1], labels[i]))
    return Hierarchy(genes=genes, resolutions=resolutions, labels=labels,
                     module_names=_name_modules(labels, parents), parents=parents,
                     params=dict(params or {}))
