"""``cellsae analyze``: latents as expression — graph, clusters, pseudotime, differential features."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

logger = logging.getLogger("cellsae.cli")


def _parse_group(text: str | None) -> dict | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"--root-group expects COLUMN=VALUE[,COLUMN=VALUE], got {text!r}")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def analyze(
    codes: Path = typer.Argument(..., help="Cells × latents AnnData (.h5ad) from 'cellsae sae encode', "
                                 "or any AnnData holding codes in an obsm key (see --use-rep)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created if needed)."),
    use_rep: str = typer.Option("X", "--use-rep", help="Where the codes are: 'X' or an obsm key such as X_sae."),
    transform: str = typer.Option("log1p", "--transform", help="Transform of X: log1p (default), sqrt or none."),
    groupby: str = typer.Option("genotype", "--groupby", help="Obs column for differential features."),
    reference: str = typer.Option("healthy", "--reference", help="Reference level of --groupby, or 'rest'."),
    donor_key: str = typer.Option(None, "--donor-key", help="Obs column of donors; adds the donor-level (pseudobulk) test."),
    de_method: str = typer.Option("wilcoxon", "--de-method", help="Cell-level test: wilcoxon or t-test."),
    phenotype: str = typer.Option(None, "--phenotype", help="Death column (0/1 or rate): live root cells and latent annotation."),
    root_group: str = typer.Option(None, "--root-group", help="Root candidates for pseudotime, e.g. 'genotype=healthy'. Default: --groupby=--reference."),
    n_comps: int = typer.Option(50, "--n-comps", min=2, help="PCA components of the z-scored latents."),
    n_neighbors: int = typer.Option(15, "--n-neighbors", min=2, help="k of the neighbour graph."),
    resolution: float = typer.Option(1.0, "--resolution", min=0.0, help="Leiden resolution."),
    umap: bool = typer.Option(True, "--umap/--no-umap", help="Also compute a UMAP."),
    knn: str = typer.Option("auto", "--knn", help="kNN backend: auto (exact; scanpy's own below 8,192 cells), exact or pynndescent."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for PCA, Leiden and UMAP."),
) -> None:
    """Analyse SAE latents the way one analyses genes in scRNA-seq.

    Filters dead and ubiquitous latents, runs z-scored PCA, neighbours, Leiden, PAGA
    (and UMAP), diffusion pseudotime from an extreme healthy live cell, differential
    features of each group vs the reference (cell-level test with BH-FDR, plus a
    donor-level test with --donor-key), and a per-latent annotation. Writes
    OUT/latents.h5ad, OUT/differential.csv, OUT/annotation.csv, OUT/volcano_<group>.png and
    OUT/summary.json.
    """
    import json

    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from .._utils import atomic_path, atomic_write_text, require_file
    from ..pl import volcano
    from ..tl import (
        annotate_latents,
        cluster_latents,
        count_significant,
        differential_features,
        latents_anndata,
        pca_latents,
        pseudotime,
    )

    require_file(codes, what="codes AnnData")
    if knn not in ("auto", "exact", "pynndescent"):
        raise ValueError(f"--knn must be 'auto', 'exact' or 'pynndescent', got {knn!r}")
    if de_method not in ("wilcoxon", "t-test"):
        raise ValueError(f"--de-method must be 'wilcoxon' or 't-test', got {de_method!r}")
    source = ad.read_h5ad(codes)
    if groupby not in source.obs:
        raise KeyError(f"--groupby {groupby!r} is not an obs column of {codes}; available: "
                       f"{', '.join(map(str, source.obs.columns)) or '(none)'}")
    lat = latents_anndata(source, use_rep=None if use_rep == "X" else use_rep, transform=transform)
    del source
    pca_latents(lat, n_comps=n_comps, seed=seed)
    cluster_latents(lat, n_neighbors=n_neighbors, resolution=resolution, umap=umap, knn=knn,
                    seed=seed)
    group = _parse_group(root_group) or (
        {groupby: reference} if reference != "rest" else None)
    pseudotime(lat, root_group=group, live_key=phenotype)
    tables = [differential_features(lat, groupby, reference=reference, method=de_method)]
    if donor_key:
        tables.append(differential_features(lat, groupby, reference=reference,
                                            method="pseudobulk", donor_key=donor_key,
                                            key_added="differential_pseudobulk"))
    de = pd.concat(tables, ignore_index=True)
    annotation = annotate_latents(lat, categorical=[groupby], death_key=phenotype)

    out.mkdir(parents=True, exist_ok=True)
    for g in pd.unique(tables[0]["group"]):
        fig = volcano(tables[0], group=g)
        with atomic_path(out / f"volcano_{g}.png") as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
        plt.close(fig)
    with atomic_path(out / "differential.csv") as tmp:
        de.to_csv(tmp, index=False)
    with atomic_path(out / "annotation.csv") as tmp:
        annotation.to_csv(tmp)
    with atomic_path(out / "latents.h5ad") as tmp:
        lat.write_h5ad(tmp)
    summary = {
        "n_cells": int(lat.n_obs), "n_latents_kept": int(lat.n_vars),
        "n_dead_latents": lat.uns["latents"]["n_dead"],
        "n_ubiquitous_latents": lat.uns["latents"]["n_ubiquitous"],
        "n_leiden_clusters": int(lat.obs["leiden"].nunique()),
        "dpt_root": lat.uns["dpt_root"]["name"],
        "significant_features": {t["method"].iloc[0]: {str(k): int(v) for k, v in
                                 pd.Series(count_significant(t)
                                           if t["group"].nunique() > 1 else
                                           {t["group"].iloc[0]: count_significant(t)}).items()}
                                 for t in tables},
        "params": {"use_rep": use_rep, "transform": transform, "groupby": groupby,
                   "reference": reference, "donor_key": donor_key, "phenotype": phenotype,
                   "n_comps": n_comps, "n_neighbors": n_neighbors, "resolution": resolution,
                   "knn": knn, "seed": seed},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    logger.info("analysed %d cells × %d latents → %s", lat.n_obs, lat.n_vars, out)
    logger.info("significant features: %s", summary["significant_features"])


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
