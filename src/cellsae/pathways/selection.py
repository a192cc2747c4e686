"""Which genes to cluster: a given list, the top of a score table, or the most variable."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

logger = logging.getLogger(__name__)

__all__ = ["select_genes", "check_genes_present"]


def check_genes_present(genes: Iterable[str], var_names: Sequence[str], *,
                        what: str = "genes") -> np.ndarray:
    """Column indices of ``genes`` in ``var_names``; ValueError naming any that are absent."""
    genes = [str(g) for g in genes]
    index = pd.Index([str(v) for v in var_names])
    if len(genes) != len(set(genes)):
        dupes = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
        raise ValueError(f"{what} lists duplicated gene(s): {dupes[:10]}")
    positions = index.get_indexer(genes)
    missing = [g for g, p in zip(genes, positions, strict=True) if p < 0]
    if missing:
        lower = {v.lower(): v for v in index}
        near = [lower[g.lower()] for g in missing if g.lower() in lower][:3]
        hint = f" (a case mismatch? the matrix has {near})" if near else ""
        raise ValueError(
            f"{len(missing)} of {len(genes)} {what} are not in the expression matrix: "
            f"{missing[:10]}{'...' if len(missing) > 10 else ''}{hint}; the matrix has "
            f"{len(index)} genes, e.g. {index[:5].tolist()}"
        )
    return positions


def select_genes(var_names: Sequence[str], *, x=None, genes: Iterable[str] | None = None,
                 table: pd.DataFrame | pd.Series | None = None, score: str | None = None,
                 select: str | None = None, n_top: int | None = 200) -> np.ndarray:
    """Indices of the genes to cluster, in one of three ways (first that applies).

    Parameters
    ----------
    var_names : the matrix's gene names
    x : (n_cells, n_genes) array, needed only for the variance ranking
    genes
        An explicit list (e.g. predictable genes); every one must be in ``var_names``.
    table
        A per-gene table indexed by gene (e.g. GW-map predictability). With ``select``,
        the genes where that boolean column is true; with ``score``, the ``n_top`` genes
        with the highest value of that column (NaN last). A Series is used as the score.
    score, select
        Columns of ``table``.
    n_top
        How many genes for the ``score`` or variance ranking (None: all).

    Returns
    -------
    (n_selected,) int array of column indices, in ``var_names`` order for rankings and in
    the given order for an explicit list.

    Without ``genes`` or ``table``, the ``n_top`` genes with the highest variance of ``x``
    (which should be log-normalised) are chosen; :func:`cellsae.tl.gene_modules` uses
    scanpy's highly-variable-gene selection instead.
    """
    var_names = [str(v) for v in var_names]
    if genes is not None:
        return check_genes_present(genes, var_names, what="requested genes")
    if table is not None:
        if isinstance(table, pd.Series):
            table = table.to_frame(score or table.name or "score")
            score = score or table.columns[0]
        check_genes_present(table.index.astype(str), var_names, what="genes of the gene table")
        if select is not None:
            if select not in table.columns:
                raise KeyError(f"column {select!r} not in the gene table; columns are "
                               f"{list(table.columns)}")
            chosen = table.index[table[select].astype(bool).to_numpy()].astype(str)
        elif score is not None:
            if score not in table.columns:
                raise KeyError(f"column {score!r} not in the gene table; columns are "
                               f"{list(table.columns)}")
            values = pd.to_numeric(table[score], errors="coerce")
            chosen = values.sort_values(ascending=False, na_position="last").index[:n_top]
            chosen = chosen.astype(str)
        else:
            raise ValueError("with a gene table, name a boolean column (select=) or a score "
                             "column (score=)")
        if len(chosen) == 0:
            raise ValueError("the gene table selects no genes")
        positions = check_genes_present(chosen, var_names, what="selected genes")
        return np.sort(positions)
    if x is None:
        raise ValueError("pass genes=, table=, or x= for the variance ranking")
    x = x.tocsc() if sparse.issparse(x) else np.asarray(x, dtype=np.float64)
    if sparse.issparse(x):
        mean = np.asarray(x.mean(0)).ravel()
        variance = np.asarray(x.multiply(x).mean(0)).ravel() - mean**2
    else:
        variance = x.var(0)
    order = np.argsort(-variance, kind="stable")
    order = order[variance[order] > 0]
    if n_top is not None:
        order = order[:n_top]
    return np.sort(order)
