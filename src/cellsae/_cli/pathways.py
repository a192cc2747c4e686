"""``cellsae pathways``: expression → nested gene-module hierarchy → enrichment → files."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

logger = logging.getLogger("cellsae.cli")


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None or not text.strip():
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


def _ints(text: str | None, what: str) -> list[int] | None:
    values = _floats(text, what)
    if values is None:
        return None
    if any(v != int(v) for v in values):
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}")
    return [int(v) for v in values]


def pathways(
    expression: Path = typer.Argument(..., help="Cells × genes .h5ad: raw counts, log-normalised "
                                      "or GW-imputed expression."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created; files in it are "
                             "written atomically)."),
    resolutions: str = typer.Option(None, "--resolutions", "-r",
                                    help="Comma-separated, strictly increasing Leiden "
                                    "resolutions, one level each, e.g. '0.3,1.5,4'. Default: "
                                    "chosen automatically from a resolution scan."),
    n_levels: str = typer.Option("auto", "--n-levels",
                                 help="Automatic choice: how many levels (the widest stable "
                                 "plateaus of the scan), or 'auto' for every clear plateau."),
    n_modules: str = typer.Option(None, "--n-modules",
                                  help="Automatic choice: target module counts, e.g. '3,7,17' "
                                  "(the plateau with the nearest count for each)."),
    gmt: Path = typer.Option(None, "--gmt", help="Gene sets (GMT) for over-representation "
                             "per module; background = the tested genes."),
    genes: Path = typer.Option(None, "--genes", help="Text file, one gene per line, e.g. the "
                               "genes the GW-map predicts well. Default: highly variable genes."),
    n_top_genes: int = typer.Option(200, "--n-top-genes", min=2,
                                    help="Highly variable genes to use without --genes."),
    layer: str = typer.Option(None, "--layer", help="Use this layer instead of X."),
    normalize: str = typer.Option("auto", "--normalize",
                                  help="auto (log-normalise integer counts), yes or no."),
    objective: str = typer.Option("modularity", "--objective",
                                  help="Leiden objective: modularity or cpm."),
    power: float = typer.Option(3.0, "--power", min=0.1,
                                help="Edge weight = correlation ** POWER (a soft threshold, as "
                                "in WGCNA); higher separates fine modules sooner."),
    min_module_size: int = typer.Option(5, "--min-module-size", min=1,
                                        help="Smaller modules are dissolved (genes unassigned)."),
    n_bootstrap: int = typer.Option(20, "--bootstrap", min=0,
                                    help="Bootstrap resamples of cells for module stability "
                                    "(0: skip)."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Draw the tree (tree.png)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for Leiden and the bootstrap."),
) -> None:
    """Find nested gene modules in expression and test them against gene sets.

    Genes (given with --genes, or the most variable) are correlated across cells
    (Ledoit–Wolf shrinkage), linked in a weighted gene graph and clustered with Leiden at
    several resolutions; each finer module is attached to the coarser module that holds
    most of its genes. Without --resolutions the levels are the stable plateaus of a
    resolution scan (ranges of resolutions giving the same modules).

    Writes to OUT: hierarchy.json (levels, modules, genes, parents, stability,
    enrichment; load with cellsae.pathways.Hierarchy.load), modules.tsv (one row per
    module), genes.tsv (each gene's module per level), modules.gmt (every module as a gene
    set), enrichment.tsv (with --gmt) and tree.png.
    """
    import anndata as ad

    from .._utils import atomic_path, require_file
    from ..pathways.genesets import read_gmt, write_gmt
    from ..tl.pathways import gene_modules, get_hierarchy

    require_file(expression, what="expression file")
    resolution_list = _floats(resolutions, "--resolutions")
    module_counts = _ints(n_modules, "--n-modules")
    levels: int | str = n_levels
    if n_levels != "auto":
        try:
            levels = int(n_levels)
        except ValueError:
            raise typer.BadParameter(f"--n-levels must be an integer or 'auto', got "
                                     f"{n_levels!r}") from None
    norm = {"auto": "auto", "yes": True, "no": False}.get(normalize)
    if norm is None:
        raise typer.BadParameter(f"--normalize must be auto, yes or no, got {normalize!r}")
    if resolution_list is not None:
        from ..pathways.modules import check_resolutions

        check_resolutions(resolution_list)
    gene_sets = read_gmt(gmt) if gmt is not None else None  # fail on a bad GMT before any work
    gene_list = None
    if genes is not None:
        text = require_file(genes, what="gene list").read_text(encoding="utf-8")
        gene_list = [g.strip() for g in text.splitlines() if g.strip() and not g.startswith("#")]
        if not gene_list:
            raise ValueError(f"gene list '{genes}' is empty")
    adata = ad.read_h5ad(expression)
    logger.info("%s: %d cells x %d genes", expression, adata.n_obs, adata.n_vars)
    gene_modules(adata, genes=gene_list, n_top_genes=n_top_genes, layer=layer, normalize=norm,
                 resolutions=resolution_list, n_levels=levels, n_modules=module_counts,
                 objective=objective, power=power, min_module_size=min_module_size,
                 n_bootstrap=n_bootstrap, gene_sets=gene_sets, seed=seed)
    hierarchy = get_hierarchy(adata)
    out.mkdir(parents=True, exist_ok=True)
    hierarchy.save(out / "hierarchy.json")
    with atomic_path(out / "modules.tsv") as tmp:
        hierarchy.module_table().to_csv(tmp, sep="\t", index=False)
    with atomic_path(out / "genes.tsv") as tmp:
        hierarchy.gene_table().to_csv(tmp, sep="\t")
    modules = {name: genes for name, genes in hierarchy.all_modules().items() if genes}
    if modules:
        write_gmt(modules, out / "modules.gmt",
                  descriptions={n: f"cellsae module, {len(g)} genes" for n, g in modules.items()})
    if hierarchy.enrichment is not None:
        with atomic_path(out / "enrichment.tsv") as tmp:
            hierarchy.enrichment.to_csv(tmp, sep="\t", index=False)
    if plot and sum(hierarchy.n_modules):
        import matplotlib

        matplotlib.use("Agg")
        from ..pl.pathways import module_tree

        fig = module_tree(hierarchy)
        with atomic_path(out / "tree.png") as tmp:
            fig.savefig(tmp, dpi=150)
    logger.info("%s modules per level (resolutions %s), nesting consistency %.3f; wrote %s",
                hierarchy.n_modules, [round(r, 4) for r in hierarchy.resolutions],
                hierarchy.nesting_consistency, out)


def register(app: typer.Typer) -> None:
    app.command("pathways")(pathways)
