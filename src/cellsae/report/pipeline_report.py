"""The run report: one HTML page built from the run folder's stage outputs.

Each section reads files written by a stage (so a report can be rebuilt from a finished
run), draws its figures with :mod:`cellsae.pl`, and is skipped when its stage did not
run. A section that fails to draw says so in the page rather than sinking the report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .html import Report

logger = logging.getLogger(__name__)


def _manifest(run_dir: Path, stage: str) -> dict | None:
    path = run_dir / stage / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def _out(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "outputs"


def build_report(ctx) -> Path:
    """Assemble ``report.html`` (and the PNG figures) into the report stage's outputs."""
    cfg = ctx.config
    run_dir = ctx.run_dir
    report = Report(cfg.run.title, subtitle=f"run folder: {run_dir}",
                    figure_dir=ctx.out / "figures", svg=cfg.report.svg)
    manifests = {s: _manifest(run_dir, s) for s in
                 ("world", "ingest", "embed", "sae", "analyze", "align", "pathways")}
    sections = [
        ("Run summary", _summary), ("Data and quality control", _data),
        ("Encoder", _encoder), ("Sparse autoencoder", _sae),
        ("Latents as expression", _latents), ("Differential features", _differential),
        ("Geometric fidelity: CNN vs SAE", _geometry), ("GW-map to scRNA-seq", _align),
        ("Pathway hierarchy", _pathways), ("Scored against the truth", _truth),
    ]
    for title, fn in sections:
        report.section(title)
        try:
            fn(report, run_dir, manifests, cfg)
        except Exception as err:  # noqa: BLE001 - one broken figure must not sink the report
            logger.warning("report section %r failed: %s", title, err)
            report.warning(f"This section could not be drawn: {type(err).__name__}: {err}")
    path = report.write(ctx.out / "report.html")
    ctx.metrics["report"] = str(path)
    return path


def _metrics(manifests, stage) -> dict:
    m = manifests.get(stage)
    return dict(m["metrics"]) if m else {}


def _summary(report: Report, run_dir, manifests, cfg) -> None:
    report.text("cellsae turns single-cell crops into CNN embeddings, resolves them with a "
                "sparse autoencoder into latents analysed like genes, and maps imaged cells "
                "onto scRNA-seq by Gromov–Wasserstein transport. Each section below reads the "
                "files of one pipeline stage in the run folder.")
    rows = []
    for stage, m in manifests.items():
        if m:
            rows.append({"stage": stage, "seconds": m["seconds"], "finished": m["finished"],
                         "outputs": len(m["outputs"])})
    if rows:
        report.table(pd.DataFrame(rows).set_index("stage"), "Stages of this run.")
    kpis = {}
    for stage, key, label in (("world", "n_cells", "imaged cells"),
                              ("embed", "probe_acc_cnn", "CNN held-out-donor accuracy"),
                              ("sae", "l0", "SAE L0"), ("sae", "fvu", "SAE FVU"),
                              ("align", "label_transfer_barycentric", "label transfer"),
                              ("align", "foscttm", "FOSCTTM")):
        v = _metrics(manifests, stage).get(key)
        if v is not None:
            kpis[label] = v
    if kpis:
        report.kpis(kpis)
    params = json.loads((run_dir / "config.json").read_text()) if \
        (run_dir / "config.json").exists() else {}
    flat = pd.json_normalize(params, sep=".").T.rename(columns={0: "value"})
    report.table(flat, "Parameters of this run.", max_rows=80)


def _crops_adata(run_dir: Path, cfg):
    from ..crops import read_h5sc

    embed = _out(run_dir, "embed") / "cells.h5ad"
    if embed.exists():
        cells = ad.read_h5ad(embed)
        return cells, cells.uns.get("crops_path")
    if cfg.world.enabled:
        path = _out(run_dir, "world") / "cells.h5sc"
        return read_h5sc(path), str(path)
    return None, None


def _data(report: Report, run_dir, manifests, cfg) -> None:
    from ..crops import CropStore
    from ..pl import crops_gallery

    cells, crops_path = _crops_adata(run_dir, cfg)
    if cells is not None and crops_path:
        store = CropStore(crops_path)
        label = cfg.inputs.label_key
        fig = crops_gallery(store, cells.obs[label].astype(str).to_numpy(), n_per_group=10,
                            title=f"Single-cell crops by {label}")
        report.figure(fig, "Random crops per group; mitochondria red, lysosomes green, nuclei "
                      "blue, death dye yellow.", name="crops_gallery")
        counts = cells.obs.groupby(label, observed=True).agg(
            cells=(label, "size"), donors=(cfg.inputs.donor_key, "nunique"))
        if cfg.inputs.phenotype_key in cells.obs:
            counts["death rate"] = cells.obs.groupby(label, observed=True)[
                cfg.inputs.phenotype_key].mean()
        report.table(counts, f"Cells, donors and death rate per {label}.")
    m = _metrics(manifests, "ingest")
    if m:
        report.text("Ingestion: raw plate fields were projected, corrected, segmented and cut "
                    "into crops; per-cell death calls come from the death-dye channel.")
        report.table(pd.Series(m, name="value").to_frame(), "Ingestion figures.")
        qc_path = _out(run_dir, "ingest") / "cells.h5sc"
        if qc_path.exists():
            from ..crops import read_h5sc

            ing = read_h5sc(qc_path)
            qc = ing.uns.get("qc")
            if isinstance(qc, dict):
                qc = pd.DataFrame(qc)
            if isinstance(qc, pd.DataFrame) and len(qc):
                report.table(qc.head(30), "Field QC (first 30 fields).", index=False)


def _encoder(report: Report, run_dir, manifests, cfg) -> None:
    import matplotlib.pyplot as plt

    path = _out(run_dir, "embed") / "cells.h5ad"
    if not path.exists():
        report.text("The encoder stage did not run (embeddings were given as input).")
        return
    cells = ad.read_h5ad(path)
    probe = cells.uns.get("probe", {})
    rows = {name: {"accuracy": p["accuracy"], "balanced accuracy": p["balanced_accuracy"],
                   "test cells": p["n_test"]} for name, p in probe.items()}
    report.table(pd.DataFrame(rows).T, "Linear probe of genotype on held-out donors: CNN "
                 "embedding vs hand-crafted crop statistics vs PCA of pixels.")
    if "cnn" in probe:
        p = probe["cnn"]
        conf = np.asarray(p["confusion"], float)
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(p["classes"])), p["classes"], rotation=45, ha="right")
        ax.set_yticks(range(len(p["classes"])), p["classes"])
        for i in range(len(conf)):
            for j in range(len(conf)):
                ax.text(j, i, int(conf[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("CNN probe, held-out donors")
        report.figure(fig, "Confusion matrix of the CNN probe on cells of held-out donors.",
                      name="encoder_confusion")
    hist = cells.uns.get("encoder_training", {}).get("history")
    if hist:
        h = pd.DataFrame(hist)
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.plot(h["epoch"], h["loss"], "o-", label="training loss")
        if "val_acc" in h:
            ax2 = ax.twinx()
            ax2.plot(h["epoch"], h["val_acc"], "s--", color="C1", label="validation accuracy")
            ax2.set_ylabel("validation accuracy")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        report.figure(fig, "Encoder training.", name="encoder_training")


def _sae(report: Report, run_dir, manifests, cfg) -> None:
    m = _metrics(manifests, "sae")
    if not m:
        return
    report.text("Quality of the sparse autoencoder on the CNN embeddings: reconstruction "
                "(FVU, fraction of variance unexplained), sparsity (L0: active latents per "
                "cell), dead and dense latents, and how distinct the dictionary atoms are.")
    report.table(pd.Series(m, name="value").to_frame(), "SAE figures.")


def _latents_adata(run_dir):
    path = _out(run_dir, "analyze") / "latents.h5ad"
    return ad.read_h5ad(path) if path.exists() else None


def _latents(report: Report, run_dir, manifests, cfg) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    adata = _latents_adata(run_dir)
    if adata is None:
        return
    label = cfg.inputs.label_key
    colours = [c for c in (label, cfg.inputs.phenotype_key, "dpt_pseudotime", "leiden", "t")
               if c in adata.obs]
    if "X_umap" in adata.obsm:
        for c in colours:
            if adata.obs[c].dtype == bool:
                adata.obs[c] = adata.obs[c].astype(str).astype("category")
        fig, axes = plt.subplots(1, len(colours), figsize=(4.2 * len(colours), 3.8))
        for ax, c in zip(np.atleast_1d(axes), colours, strict=True):
            sc.pl.umap(adata, color=c, ax=ax, show=False, frameon=False, size=12)
        report.figure(fig, "UMAP of SAE latents, coloured by genotype, death, diffusion "
                      "pseudotime, Leiden cluster (and the true progression t in the demo).",
                      name="umap")
    if "paga" in adata.uns:
        fig, ax = plt.subplots(figsize=(5, 4))
        sc.pl.paga(adata, ax=ax, show=False, fontsize=9)
        report.figure(fig, "PAGA graph between Leiden clusters of SAE latents.", name="paga")
    table_path = None
    if "latent_annotation" in adata.uns:
        table_path = adata.uns["latent_annotation"]
    if isinstance(table_path, dict):
        report.table(pd.DataFrame(table_path).head(20), "What the top latents encode.")


def _differential(report: Report, run_dir, manifests, cfg) -> None:
    from ..pl import volcano

    path = _out(run_dir, "analyze") / "differential_sae.csv"
    if not path.exists():
        return
    table = pd.read_csv(path)
    m = _metrics(manifests, "analyze")
    report.kpis({"significant SAE latents": m.get("de_features_sae"),
                 "significant CNN dimensions": m.get("de_features_cnn")})
    groups = [g for g in table["group"].unique()] if "group" in table else [None]
    for g in groups[:3]:
        fig = volcano(table, group=g)
        report.figure(fig, f"Volcano of SAE latents, {g} vs reference (Wilcoxon, BH-FDR).",
                      name=f"volcano_{g}", width=520)
    top = table.sort_values("padj").head(20) if "padj" in table else table.head(20)
    report.table(top, "Most significant latents.", index=False)


def _geometry(report: Report, run_dir, manifests, cfg) -> None:
    from ..pl import comparison_plot

    path = _out(run_dir, "analyze") / "geometry.csv"
    if not path.exists():
        return
    table = pd.read_csv(path, index_col=0)
    report.text("Does a phenotype (death) vary smoothly over each representation's neighbour "
                "graph? Lower local/global SD ratio and higher Moran's I mean smoother; R² is "
                "cross-validated prediction of the phenotype.")
    report.table(table, "Geometric fidelity per representation (with confidence intervals).")
    report.figure(comparison_plot(table), "The same, as a plot.", name="geometry")


def _align(report: Report, run_dir, manifests, cfg) -> None:
    m = _metrics(manifests, "align")
    if not m:
        return
    report.text("GW-map couples imaged cells with sequenced cells using only the geometry of "
                "each space (no shared features, no pairing).")
    report.table(pd.Series(m, name="value").to_frame(), "GW-map figures.")
    try:
        from .. import pl
        from ..align import load_result

        result = load_result(_out(run_dir, "align") / "gw")
        cells = ad.read_h5ad(_out(run_dir, "align") / "cells.h5ad")
        rna = _rna_for_report(run_dir, cfg)
        label = cfg.inputs.label_key
        if hasattr(pl, "coupling_heatmap") and rna is not None:
            fig = pl.coupling_heatmap(result, cells.obs[label].astype(str).to_numpy(),
                                      rna.obs[label].astype(str).to_numpy())
            report.figure(fig, "Coupling mass between image groups (rows) and RNA groups.",
                          name="gw_coupling")
    except (ImportError, FileNotFoundError, KeyError) as err:
        report.warning(f"coupling figure unavailable: {err}")


def _rna_for_report(run_dir, cfg):
    if cfg.inputs.rna is not None:
        return ad.read_h5ad(cfg.inputs.rna, backed="r")
    path = _out(run_dir, "world") / "rna.h5ad"
    return ad.read_h5ad(path, backed="r") if path.exists() else None


def _pathways(report: Report, run_dir, manifests, cfg) -> None:
    from ..pathways import Hierarchy
    from ..pl import module_tree

    path = _out(run_dir, "pathways") / "hierarchy.json"
    if not path.exists():
        return
    h = Hierarchy.load(path)
    report.figure(module_tree(h), "Nested gene modules found at increasing resolution.",
                  name="pathways_tree")
    m = _metrics(manifests, "pathways")
    if m:
        report.table(pd.Series(m, name="value").to_frame(), "Pathway figures.")


def _truth(report: Report, run_dir, manifests, cfg) -> None:
    if not cfg.world.enabled:
        report.text("No ground truth for this run (real data).")
        return
    rows = []

    def add(stage, key, what, target, op):
        v = _metrics(manifests, stage).get(key)
        if v is not None:
            rows.append((what, v, target, bool(op(v))))

    add("ingest", "detection_f1", "cell detection F1 vs true positions", "≥ 0.9", lambda v: v >= 0.9)
    add("ingest", "death_call_accuracy", "death-call accuracy", "≥ 0.9", lambda v: v >= 0.9)
    add("embed", "probe_acc_cnn", "CNN genotype probe (held-out donors)", "> baselines",
        lambda v: v > max(_metrics(manifests, "embed").get("probe_acc_measure", 0),
                          _metrics(manifests, "embed").get("probe_acc_pixels", 0)))
    add("analyze", "factor_mcc_sae", "SAE latents ↔ true visual factors (MCC)", "> CNN",
        lambda v: v > _metrics(manifests, "analyze").get("factor_mcc_cnn", 1))
    add("analyze", "dpt_t_spearman", "pseudotime vs true progression t (Spearman)", "≥ 0.5",
        lambda v: abs(v) >= 0.5)
    add("align", "foscttm", "GW-map FOSCTTM vs true pairing", "≤ 0.3", lambda v: v <= 0.3)
    add("align", "label_transfer_barycentric", "genotype label transfer", "> 0.5",
        lambda v: v > 0.5)
    for key in ("ari_level1", "ari_level2", "ari_level3"):
        add("pathways", key, f"module ARI vs planted hierarchy ({key[-6:]})", "≥ 0.5",
            lambda v: v >= 0.5)
    if rows:
        report.checks(rows, "Every measurable step scored against the synthetic world's truth.")
