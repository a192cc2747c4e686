"""Over-representation of gene sets in gene modules (hypergeometric test, BH-FDR)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from .genesets import validate_gene_sets

logger = logging.getLogger(__name__)

__all__ = ["over_representation", "benjamini_hochberg", "ENRICHMENT_COLUMNS"]

ENRICHMENT_COLUMNS = ["module", "term", "overlap", "module_size", "set_size", "background_size",
                      "expected", "fold_enrichment", "pvalue", "fdr", "genes"]


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (FDR), same order as the input.

    Parameters
    ----------
    pvalues : (n,) array of p-values in [0, 1]; NaNs are passed through.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if not ok.any():
        return out
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    values = p[ok]
    n = values.size
    order = np.argsort(values)
    ranked = values[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    result = np.empty(n)
    result[order] = np.clip(adjusted, 0, 1)
    out[ok] = result
    return out


def over_representation(modules: Mapping[str, Iterable[str]], gene_sets, *,
                        background: Iterable[str], min_set_size: int = 1,
                        max_set_size: int | None = None, min_overlap: int = 1) -> pd.DataFrame:
    """Hypergeometric over-representation of each gene set in each module.

    For a module of ``n`` genes, a set with ``K`` genes in the background of ``N`` genes,
    and ``x`` genes in both, the p-value is ``P(X >= x)`` for ``X ~ Hypergeometric(N, K, n)``.
    Gene sets are first restricted to the background (the genes that were tested: a gene
    that was never clustered cannot be in a module), and the FDR is Benjamini–Hochberg
    over the sets tested against each module.

    Parameters
    ----------
    modules
        ``{module name: genes}``; every gene must be in ``background``.
    gene_sets
        ``{set name: genes}`` (e.g. from :func:`cellsae.pathways.read_gmt`).
    background
        The tested genes.
    min_set_size, max_set_size
        Keep sets whose size within the background lies in this range.
    min_overlap
        Rows with a smaller overlap are left out of the table (their p-value is 1 when
        ``min_overlap`` is 1, but they still count in the FDR correction).

    Returns
    -------
    DataFrame with columns ``module, term, overlap, module_size, set_size,
    background_size, expected, fold_enrichment, pvalue, fdr, genes`` (the overlapping
    genes, comma-separated), sorted by module then p-value.

    Raises
    ------
    ValueError
        A module gene is not in the background, or no gene set shares a gene with the
        background (usually mismatched identifiers, e.g. symbols against Ensembl IDs).
    """
    from scipy.stats import hypergeom

    background = list(dict.fromkeys(map(str, background)))
    universe = set(background)
    n_background = len(universe)
    if n_background == 0:
        raise ValueError("the background is empty; pass the tested genes")
    sets = validate_gene_sets(gene_sets)
    restricted = {name: sorted(universe.intersection(genes)) for name, genes in sets.items()}
    if not any(restricted.values()):
        example = next(iter(sets.values()))[:3]
        raise ValueError(
            f"none of the {len(sets)} gene sets shares a gene with the {n_background} tested "
            f"genes (e.g. set genes {example} vs tested {background[:3]}); check that both use "
            "the same identifiers (symbols vs Ensembl IDs, case)"
        )
    upper = np.inf if max_set_size is None else max_set_size
    kept = {n: g for n, g in restricted.items() if min_set_size <= len(g) <= upper and g}
    dropped = len(sets) - len(kept)
    if dropped:
        logger.info("%d of %d gene sets left out (size within the tested genes outside [%d, %s])",
                    dropped, len(sets), min_set_size, max_set_size)
    if not kept:
        raise ValueError(f"no gene set has between {min_set_size} and {max_set_size} genes among "
                         "the tested genes; relax min_set_size / max_set_size")
    set_names = list(kept)
    set_members = [set(kept[n]) for n in set_names]
    set_sizes = np.asarray([len(s) for s in set_members])
    rows = []
    for module, genes in modules.items():
        genes = list(dict.fromkeys(map(str, genes)))
        missing = [g for g in genes if g not in universe]
        if missing:
            raise ValueError(f"module {module!r} has {len(missing)} gene(s) not in the background "
                             f"(e.g. {missing[:5]}); the background must contain every tested gene")
        n = len(genes)
        if n == 0:
            continue
        module_set = set(genes)
        overlaps = [sorted(module_set & s) for s in set_members]
        x = np.asarray([len(o) for o in overlaps])
        pvalues = hypergeom.sf(x - 1, n_background, set_sizes, n)
        pvalues = np.clip(pvalues, 0.0, 1.0)
        fdr = benjamini_hochberg(pvalues)
        expected = n * set_sizes / n_background
        for j, name in enumerate(set_names):
            if x[j] < min_overlap:
                continue
            rows.append({"module": module, "term": name, "overlap": int(x[j]), "module_size": n,
                         "set_size": int(set_sizes[j]), "background_size": n_background,
                         "expected": float(expected[j]),
                         "fold_enrichment": float(x[j] / expected[j]) if expected[j] else np.nan,
                         "pvalue": float(pvalues[j]), "fdr": float(fdr[j]),
                         "genes": ",".join(overlaps[j])})
    table = pd.DataFrame(rows, columns=ENRICHMENT_COLUMNS)
    if not table.empty:
        order = {m: i for i, m in enumerate(modules)}
        table = table.assign(_order=table["module"].map(order)).sort_values(
            ["_order", "pvalue", "term"]).drop(columns="_order").reset_index(drop=True)
    return table
