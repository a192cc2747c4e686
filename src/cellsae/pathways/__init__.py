"""Gene-module hierarchies from expression, with gene-set enrichment.

Expression across cells (measured, or imputed onto imaged cells by the GW-map) →
shrunk gene–gene correlation → weighted gene kNN graph → Leiden at several resolutions
(given, or chosen automatically as the stable plateaus of a resolution scan) → modules
nested into a :class:`Hierarchy` (each finer module under the coarser module holding most
of its genes) → bootstrap stability → over-representation against the user's GMT.

The AnnData-facing layer is :func:`cellsae.tl.gene_modules` and
:func:`cellsae.tl.module_scores`; the tree plot is :func:`cellsae.pl.module_tree`.
"""

from .detect import bootstrap_coclustering, find_hierarchy
from .enrichment import benjamini_hochberg, over_representation
from .genesets import GMTError, read_gmt, validate_gene_sets, write_gmt
from .hierarchy import Hierarchy, build_hierarchy, nesting_consistency
from .modules import (
    ResolutionScan,
    check_resolutions,
    choose_levels,
    coclustering,
    default_resolutions,
    leiden_partition,
    scan_resolutions,
)
from .scores import correlate_scores, top_correlated
from .selection import select_genes
from .similarity import gene_knn_graph, shrunk_correlation

__all__ = [
    "GMTError", "Hierarchy", "ResolutionScan", "benjamini_hochberg", "bootstrap_coclustering",
    "build_hierarchy", "check_resolutions", "choose_levels", "coclustering", "correlate_scores",
    "default_resolutions", "find_hierarchy", "gene_knn_graph", "leiden_partition",
    "nesting_consistency", "over_representation", "read_gmt", "scan_resolutions",
    "select_genes", "shrunk_correlation", "top_correlated", "validate_gene_sets", "write_gmt",
]
from .truth import match_levels
