"""Gene-module hierarchies on AnnData: modules, module scores, links to SAE latents.

``gene_modules`` clusters genes of a cells × genes AnnData (measured scRNA-seq, or the
expression a GW-map imputes onto imaged cells) into a nested :class:`~cellsae.pathways.
Hierarchy`; ``module_scores`` scores every cell for every module (scanpy's
``score_genes``); ``map_module_scores`` carries scores from RNA cells onto imaged cells
through a GW coupling; ``module_latent_correlation`` links each module to the SAE latents
(and so to the image features and example crops) that follow it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from ..pathways.hierarchy import Hierarchy

logger = logging.getLogger(__name__)

__all__ = ["gene_modules", "get_hierarchy", "module_scores", "map_module_scores",
           "module_latent_correlation", "pathway_activity"]


def _matrix(adata, layer: str | None):
    if layer is None:
        if adata.X is None:
            raise KeyError("the AnnData has no X; pass layer= naming one of "
                           f"{list(adata.layers.keys())}")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found; layers are {list(adata.layers.keys())}")
    return adata.layers[layer]


def _looks_like_counts(x) -> bool:
    values = x.data if sparse.issparse(x) else np.asarray(x).ravel()
    values = values[: 100_000]
    if values.size == 0:
        return False
    return bool(np.all(values >= 0) and np.allclose(values, np.round(values)) and values.max() > 1)


def _log_normalize(x):
    """Library-size normalise to 10,000 and log1p, like ``sc.pp.normalize_total`` + ``log1p``."""
    x = sparse.csr_matrix(x, dtype=np.float64) if sparse.issparse(x) else np.asarray(x, float)
    totals = np.asarray(x.sum(1)).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    if sparse.issparse(x):
        x = sparse.diags(scale) @ x
        x.data = np.log1p(x.data)
        return x.tocsr()
    return np.log1p(x * scale[:, None])


def _prepared(adata, layer, normalize):
    x = _matrix(adata, layer)
    if normalize == "auto":
        normalize = _looks_like_counts(x)
        if normalize:
            logger.info("expression looks like raw counts: normalising to 10,000 per cell + log1p")
    elif not isinstance(normalize, bool):
        raise ValueError(f"normalize must be True, False or 'auto', got {normalize!r}")
    return (_log_normalize(x) if normalize else x), bool(normalize)


def _hvg(x, var_names, n_top: int) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(X=x.copy() if not sparse.issparse(x) else x.copy(),
                     var=pd.DataFrame(index=pd.Index(var_names).astype(str)))
    try:
        sc.pp.highly_variable_genes(tmp, n_top_genes=min(n_top, tmp.n_vars), flavor="seurat")
    except (ValueError, IndexError) as err:  # scanpy's binning fails on tiny inputs
        from ..pathways.selection import select_genes

        logger.warning("scanpy highly_variable_genes failed (%s); ranking genes by variance", err)
        return select_genes(var_names, x=x, n_top=n_top)
    return np.flatnonzero(tmp.var["highly_variable"].to_numpy())


def gene_modules(
    adata,
    *,
    genes: Sequence[str] | None = None,
    gene_table: pd.DataFrame | pd.Series | None = None,
    score: str | None = None,
    select: str | None = None,
    n_top_genes: int = 200,
    layer: str | None = None,
    normalize: bool | str = "auto",
    resolutions: Sequence[float] | None = None,
    n_levels: int | str = "auto",
    n_modules: Sequence[int] | None = None,
    objective: str = "modularity",
    k: int | None = 100,
    power: float = 3.0,
    shrinkage: float | str = "auto",
    min_module_size: int = 5,
    n_seeds: int = 2,
    n_bootstrap: int = 0,
    gene_sets=None,
    seed: int = 0,
    key_added: str = "gene_modules",
    copy: bool = False,
):
    """Nested gene modules of an AnnData's genes (see :func:`cellsae.pathways.find_hierarchy`).

    Gene selection, first that applies: ``genes`` (an explicit list, e.g. predictable
    genes); ``gene_table`` (a per-gene table such as GW-map predictability: the genes
    where boolean column ``select`` is true, or the ``n_top_genes`` highest in column
    ``score``); else scanpy's ``n_top_genes`` highly variable genes. Genes constant across
    cells are dropped with a warning.

    Parameters
    ----------
    adata : AnnData (n_cells, n_genes)
        Raw counts (detected and log-normalised when ``normalize="auto"``), log-normalised
        or imputed expression.
    layer
        Use this layer instead of ``X``.
    normalize
        ``True`` to normalise to 10,000 per cell + log1p, ``False`` to use as is,
        ``"auto"`` to normalise only non-negative integer data.
    resolutions, n_levels, n_modules, objective, k, power, shrinkage, min_module_size,
    n_seeds, n_bootstrap, gene_sets, seed
        See :func:`cellsae.pathways.find_hierarchy`.
    key_added
        ``adata.uns[key_added]`` gets ``{"hierarchy": <JSON text>, "params": ...}`` (read
        it back with :func:`get_hierarchy`); ``adata.var[f"{key_added}_level{i}"]`` the
        module of each gene at level ``i`` ("" if unassigned or not selected).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    The copy when ``copy=True``, else None.
    """
    from ..pathways.detect import find_hierarchy
    from ..pathways.selection import check_genes_present, select_genes

    adata = adata.copy() if copy else adata
    if adata.n_obs < 2:
        raise ValueError(f"gene modules need expression in at least 2 cells; the AnnData has "
                         f"{adata.n_obs}")
    if not adata.var_names.is_unique:
        dups = adata.var_names[adata.var_names.duplicated()].unique()
        raise ValueError(f"gene names must be unique: {len(dups)} are duplicated (e.g. "
                         f"{list(dups[:3])}); call adata.var_names_make_unique() or aggregate them")
    x, normalized = _prepared(adata, layer, normalize)
    values = x.data if sparse.issparse(x) else np.asarray(x)
    if not np.isfinite(values).all():
        raise ValueError("expression contains NaN or Inf; remove or impute those values "
                         "before finding gene modules")
    var_names = adata.var_names.astype(str)
    if genes is not None:
        idx = check_genes_present(genes, var_names, what="requested genes")
        how = "list"
    elif gene_table is not None:
        idx = select_genes(var_names, table=gene_table, score=score, select=select,
                           n_top=n_top_genes)
        how = f"table:{select or score}"
    else:
        idx = _hvg(x, var_names, n_top_genes)
        how = f"hvg:{n_top_genes}"
    sub = x[:, idx]
    sub = sub.toarray() if sparse.issparse(sub) else np.asarray(sub, dtype=np.float64)
    constant = sub.std(0) <= 0
    if constant.any():
        logger.warning("dropping %d gene(s) constant across cells: %s", int(constant.sum()),
                       var_names[idx[constant]][:10].tolist())
        idx, sub = idx[~constant], sub[:, ~constant]
    hierarchy = find_hierarchy(
        sub, var_names[idx].tolist(), resolutions=resolutions, n_levels=n_levels,
        n_modules=n_modules, objective=objective, k=k, power=power, shrinkage=shrinkage,
        min_module_size=min_module_size, n_seeds=n_seeds, n_bootstrap=n_bootstrap,
        gene_sets=gene_sets, seed=seed)
    table = hierarchy.gene_table()
    for level in range(1, hierarchy.n_levels + 1):
        column = pd.Series("", index=var_names, dtype=object)
        column[table.index] = table[f"level_{level}"].to_numpy()
        adata.var[f"{key_added}_level{level}"] = column.to_numpy()
    adata.uns[key_added] = {
        "hierarchy": json.dumps(hierarchy.to_dict()),
        "params": {"selection": how, "n_genes": int(len(idx)), "normalized": normalized,
                   "layer": layer or "X", "n_modules": list(hierarchy.n_modules),
                   "resolutions": list(hierarchy.resolutions),
                   "nesting_consistency": float(hierarchy.nesting_consistency)},
    }
    return adata if copy else None


def get_hierarchy(adata, key: str = "gene_modules") -> Hierarchy:
    """The :class:`~cellsae.pathways.Hierarchy` stored by :func:`gene_modules` under ``key``."""
    if key not in adata.uns or "hierarchy" not in adata.uns[key]:
        raise KeyError(f"no gene-module hierarchy under adata.uns[{key!r}]; run "
                       f"cellsae.tl.gene_modules(adata, key_added={key!r}) first")
    return Hierarchy.from_dict(json.loads(adata.uns[key]["hierarchy"]), source=f"uns[{key!r}]")


def _resolve_hierarchy(adata, hierarchy) -> Hierarchy:
    if isinstance(hierarchy, Hierarchy):
        return hierarchy
    if isinstance(hierarchy, str):
        return get_hierarchy(adata, hierarchy)
    raise TypeError(f"hierarchy must be a Hierarchy or a key of adata.uns, got "
                    f"{type(hierarchy).__name__}")


def module_scores(adata, hierarchy: Hierarchy | str = "gene_modules", *,
                  levels: Sequence[int] | None = None, layer: str | None = None,
                  normalize: bool | str = "auto", ctrl_size: int = 50, n_bins: int = 25,
                  seed: int = 0, key_added: str = "module_scores", copy: bool = False):
    """Score every cell for every module with scanpy's ``score_genes``.

    The score is the mean expression of the module's genes minus that of random control
    genes with matched mean expression. Use it on RNA cells, or on imaged cells carrying
    GW-imputed expression (rows are imaged cells), then link the scores to SAE latents with
    :func:`module_latent_correlation`.

    Parameters
    ----------
    adata : AnnData (n_cells, n_genes)
        Must contain every module gene.
    hierarchy
        A :class:`~cellsae.pathways.Hierarchy` or the ``uns`` key :func:`gene_modules` used.
    levels
        Levels to score (default: all).
    layer, normalize
        As in :func:`gene_modules`.
    ctrl_size, n_bins
        Passed to ``scanpy.tl.score_genes``.
    key_added
        ``adata.obsm[key_added]`` gets a (n_cells, n_modules) DataFrame with one column
        per module (named by the module), ``adata.uns[key_added]`` the module names,
        levels and parameters.

    Returns
    -------
    The copy when ``copy=True``, else None.
    """
    import anndata as ad
    import scanpy as sc

    from ..pathways.selection import check_genes_present

    hierarchy = _resolve_hierarchy(adata, hierarchy)
    adata = adata.copy() if copy else adata
    levels = list(range(1, hierarchy.n_levels + 1)) if levels is None else list(levels)
    modules: dict[str, list[str]] = {}
    module_level: list[int] = []
    for level in levels:
        for name, genes in hierarchy.modules(level).items():
            modules[name] = genes
            module_level.append(level)
    if not modules:
        raise ValueError("the hierarchy has no modules at the requested levels")
    check_genes_present(sorted({g for genes in modules.values() for g in genes}),
                        adata.var_names.astype(str), what="module genes")
    x, normalized = _prepared(adata, layer, normalize)
    tmp = ad.AnnData(X=x, obs=pd.DataFrame(index=adata.obs_names.copy()),
                     var=pd.DataFrame(index=adata.var_names.astype(str)))
    scores = pd.DataFrame(index=adata.obs_names.copy())
    for name, genes in modules.items():
        sc.tl.score_genes(tmp, genes, ctrl_size=ctrl_size, n_bins=n_bins, random_state=seed,
                          score_name="_score", use_raw=False)
        scores[name] = tmp.obs["_score"].to_numpy(dtype=np.float64)
    adata.obsm[key_added] = scores
    adata.uns[key_added] = {"modules": list(modules), "levels": module_level,
                            "params": {"ctrl_size": ctrl_size, "n_bins": n_bins, "seed": seed,
                                       "layer": layer or "X", "normalized": normalized}}
    return adata if copy else None


def map_module_scores(cells, rna, gw_result, *, scores_key: str = "module_scores",
                      key_added: str | None = None, copy: bool = False):
    """Carry module scores from RNA cells onto imaged cells through a GW coupling.

    Each imaged cell receives the coupling-weighted mean of the scores of the RNA cells it
    is coupled to (``GWResult.impute``, a barycentric projection).

    Parameters
    ----------
    cells : AnnData of the imaged cells (the coupling's source side, same order)
    rna : AnnData of the RNA cells with ``obsm[scores_key]`` from :func:`module_scores`
    gw_result : :class:`cellsae.align.GWResult` coupling ``cells`` (rows) to ``rna`` (columns)
    key_added : default ``scores_key``; ``cells.obsm[key_added]`` gets the mapped scores
    """
    if scores_key not in rna.obsm:
        raise KeyError(f"rna.obsm has no {scores_key!r}; run cellsae.tl.module_scores(rna) first")
    n_source, n_target = gw_result.shape
    if (n_source, n_target) != (cells.n_obs, rna.n_obs):
        raise ValueError(f"the coupling is {n_source} x {n_target} but there are {cells.n_obs} "
                         f"imaged cells and {rna.n_obs} RNA cells")
    scores = rna.obsm[scores_key]
    names = list(scores.columns) if isinstance(scores, pd.DataFrame) else \
        [f"module_{i}" for i in range(np.shape(scores)[1])]
    mapped = gw_result.impute(np.asarray(scores, dtype=np.float64))
    cells = cells.copy() if copy else cells
    key_added = key_added or scores_key
    cells.obsm[key_added] = pd.DataFrame(np.asarray(mapped), index=cells.obs_names.copy(),
                                         columns=names)
    cells.uns[key_added] = {**dict(rna.uns.get(scores_key, {})), "mapped_from": "gw_coupling"}
    return cells if copy else None


def module_latent_correlation(adata, *, scores_key: str = "module_scores",
                              use_rep: str | None = "X", method: str = "spearman",
                              n_top: int = 5, latent_names: Sequence[str] | None = None,
                              key_added: str = "module_latents", copy: bool = False):
    """Correlate each module's score with every SAE latent across the same cells.

    Parameters
    ----------
    adata : AnnData of imaged cells with module scores in ``obsm[scores_key]`` and latent
        activations in ``use_rep`` (``"X"``, an ``obsm`` key or ``"layers/NAME"``)
    method : ``"spearman"`` or ``"pearson"``
    n_top : latents kept per module in the summary table
    latent_names : names of the latents (default: ``var_names`` when ``use_rep`` is X)
    key_added
        ``adata.uns[key_added]`` gets ``{"correlation": (n_modules, n_latents) array,
        "modules": [...], "latents": [...], "top": DataFrame (module, rank, feature,
        correlation)}``; use the top latents' example crops (``cellsae.tl.top_cells``) to see
        what each module looks like.
    """
    from ..pathways.scores import correlate_scores, top_correlated
    from .latents import get_rep

    if scores_key not in adata.obsm:
        raise KeyError(f"adata.obsm has no {scores_key!r}; run cellsae.tl.module_scores (or "
                       "map_module_scores) first")
    adata = adata.copy() if copy else adata
    scores = adata.obsm[scores_key]
    modules = list(scores.columns) if isinstance(scores, pd.DataFrame) else \
        [f"module_{i}" for i in range(np.shape(scores)[1])]
    latents = get_rep(adata, use_rep)
    if latent_names is None:
        latent_names = (adata.var_names.astype(str).tolist() if use_rep in (None, "X")
                        else [f"{use_rep}_{j}" for j in range(latents.shape[1])])
    latent_names = list(latent_names)
    corr = correlate_scores(np.asarray(scores, dtype=np.float64), latents, method=method)
    adata.uns[key_added] = {"correlation": corr, "modules": modules, "latents": latent_names,
                            "top": top_correlated(corr, modules, latent_names, n_top=n_top),
                            "params": {"method": method, "use_rep": use_rep or "X"}}
    return adata if copy else None


def pathway_activity(adata, gene_sets, *, method: str = "ulm", layer: str | None = None,
                     normalize: bool | str = "auto", min_size: int = 5,
                     key_added: str = "pathway_activity", copy: bool = False, **kwargs):
    """Per-cell gene-set activity with decoupler's methods (optional dependency).

    Parameters
    ----------
    adata : AnnData (n_cells, n_genes)
    gene_sets
        ``{name: genes}``, a GMT path, or a :class:`~cellsae.pathways.Hierarchy` (every
        module of every level becomes a set).
    method
        A decoupler method: ``"ulm"``, ``"mlm"``, ``"wsum"``, ``"aucell"``, ``"ora"``, ...
    min_size
        Sets with fewer genes in ``adata`` are skipped (decoupler's ``tmin``).
    key_added
        ``adata.obsm[key_added]`` gets the (n_cells, n_sets) scores as a DataFrame, and
        ``adata.obsm[key_added + "_padj"]`` the adjusted p-values when the method gives them.

    Raises
    ------
    ImportError
        decoupler is not installed (``pip install decoupler``).
    """
    import os

    import anndata as ad

    from ..pathways.genesets import read_gmt, validate_gene_sets

    try:
        import decoupler as dc
    except ImportError:
        raise ImportError("pathway_activity needs decoupler: pip install decoupler "
                          "(over_representation and module_scores work without it)") from None
    if isinstance(gene_sets, Hierarchy):
        gene_sets = gene_sets.all_modules()
    elif isinstance(gene_sets, str | os.PathLike):
        gene_sets = read_gmt(gene_sets)
    sets = validate_gene_sets(gene_sets)
    net = pd.DataFrame([(name, g, 1.0) for name, genes in sets.items() for g in genes],
                       columns=["source", "target", "weight"])
    x, _ = _prepared(adata, layer, normalize)
    tmp = ad.AnnData(X=x, obs=pd.DataFrame(index=adata.obs_names.copy()),
                     var=pd.DataFrame(index=adata.var_names.astype(str)))
    if hasattr(dc, "mt"):  # decoupler >= 2
        if not hasattr(dc.mt, method):
            raise ValueError(f"decoupler has no method {method!r}")
        getattr(dc.mt, method)(tmp, net, tmin=min_size, **kwargs)
    else:  # decoupler 1.x
        runner = getattr(dc, f"run_{method}", None)
        if runner is None:
            raise ValueError(f"decoupler has no method {method!r}")
        runner(tmp, net, source="source", target="target", weight="weight", min_n=min_size,
               use_raw=False, **kwargs)
    score_key = next((k for k in (f"score_{method}", f"{method}_estimate") if k in tmp.obsm),
                     None)
    if score_key is None:
        raise RuntimeError(f"decoupler {method!r} left no scores (obsm keys: "
                           f"{list(tmp.obsm.keys())})")
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = pd.DataFrame(tmp.obsm[score_key], index=adata.obs_names.copy())
    padj_key = next((k for k in (f"padj_{method}", f"{method}_pvals") if k in tmp.obsm), None)
    if padj_key is not None:
        adata.obsm[f"{key_added}_padj"] = pd.DataFrame(tmp.obsm[padj_key],
                                                       index=adata.obs_names.copy())
    adata.uns[key_added] = {"method": method, "min_size": min_size,
                            "decoupler_version": getattr(dc, "__version__", "unknown")}
    return adata if copy else None
