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
        ("Run parameters", _parameters),
    ]
    if _design_check_path(run_dir) is not None:  # the confounding check (cellsae.design)
        sections.insert(1, ("Study design", _design))
    if (_out(run_dir, "analyze") / "paper_summary.json").exists():
        sections.insert(-1, ("Paper analysis preset", _paper))
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


def _design_check_path(run_dir: Path) -> Path | None:
    for stage in ("analyze", "embed"):
        path = _out(run_dir, stage) / "design_check.json"
        if path.exists():
            return path
    return None


def _design(report: Report, run_dir, manifests, cfg) -> None:
    """A warning block when the studied factor is confounded with donor or plate."""
    check = json.loads(_design_check_path(run_dir).read_text())
    if check.get("confounded"):
        report.warning("Design warning: " + check["message"])
    else:
        report.text(f"Design check: every level of '{check['factor']}' has more than one "
                    "donor and shares plates with the others; no confounding with batch found.")
    rows = {lv: {"donors": ", ".join(check["donors_per_level"].get(lv, [])),
                 "plates": ", ".join(check["plates_per_level"].get(lv, []))}
            for lv in check["levels"]}
    report.table(pd.DataFrame(rows).T, f"Donors and plates per level of '{check['factor']}'.")


def _paper(report: Report, run_dir, manifests, cfg) -> None:
    """The paper's analysis preset (cellsae.tl.paper): geometry, trajectories, volcano."""
    out = _out(run_dir, "analyze")
    summary = json.loads((out / "paper_summary.json").read_text())
    report.text("The paper's own analysis, on the same units: within each mutant class the "
                "kNN local/global SD of the death rate (k 5), Moran's I on the directed kNN "
                "graph and death R² (scaler → PCA 250 → ridge, shuffled 5-fold CV); DPT per "
                "control + mutant pair rooted at the control unit nearest the control centroid; "
                "differential features by Mann–Whitney U, BH-FDR and |log2FC| ≥ 0.58. Units "
                "are the replicates here, as in the paper.")
    report.kpis({k: v for k, v in summary["summary"].items()})
    for name, caption in (("paper_trajectory.csv", "DPT vs death per mutant (Spearman ρ, "
                           "Jonckheere–Terpstra trend over 3 pseudotime bins)."),
                          ("paper_volcano_counts.csv", "Differential features per mutant.")):
        if (out / name).exists() and (out / name).stat().st_size > 1:
            report.table(pd.read_csv(out / name), caption, index=False)
    geo = out / "paper_geometry.csv"
    if geo.exists() and geo.stat().st_size > 1:
        table = pd.read_csv(geo)
        wide = table.pivot_table(index=["metric", "k"], columns=["rep", "class"],
                                 values="value", dropna=False)
        report.table(wide.round(3), "Geometry per representation and mutant class.")


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


def _parameters(report: Report, run_dir, manifests, cfg) -> None:
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
    info = json.loads((_out(run_dir, "embed") / "encoder_report.json").read_text())
    probe = info["probe"]
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
    hist = info["training"].get("history")
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
        for c in list(colours):
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
    ann_path = _out(run_dir, "analyze") / "latent_annotation.csv"
    if ann_path.exists():
        ann = pd.read_csv(ann_path, index_col=0)
        labelled = ann[ann["label"] != "unclear"] if "label" in ann else ann
        report.table((labelled if len(labelled) else ann).head(20),
                     "What latents appear to encode: best-correlated hand-crafted measurement, "
                     "genotype and death enrichment (BH-adjusted).")
        _latent_galleries(report, run_dir, adata, labelled if len(labelled) else ann, cfg)


def _latent_galleries(report: Report, run_dir, adata, ann: pd.DataFrame, cfg) -> None:
    from ..crops import CropStore
    from ..pl import latent_gallery

    emb = _out(run_dir, "embed") / "cells.h5ad"
    if not emb.exists():
        return
    crops_path = ad.read_h5ad(emb, backed="r").uns.get("crops_path")
    if not crops_path or not Path(crops_path).exists():
        return
    store = CropStore(crops_path)
    score = ann.get("genotype_effect", pd.Series(0, index=ann.index)).abs() + \
        ann.get("death_effect", pd.Series(0, index=ann.index)).abs()
    for latent in score.sort_values(ascending=False).index[:4]:
        if latent not in adata.var_names:
            continue
        fig = latent_gallery(adata, latent, store, n=8, ncols=8,
                             title=f"{latent}: {ann.loc[latent, 'label']}" if "label" in ann
                             else latent)
        report.figure(_figure_of(fig), f"Top-activating cells of {latent}.",
                      name=f"latent_{latent}", width=900)


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
    from .. import pl
    from ..align import load_result

    m = _metrics(manifests, "align")
    if not m:
        return
    out = _out(run_dir, "align")
    report.text("GW-map couples imaged cells with sequenced cells using only the geometry of "
                "each space (no shared features, no pairing). Hyperparameters (kNN size, "
                "entropic ε) are chosen without labels; labels and the true pairing are used "
                "only to score the result.")
    keys = [k for k in ("label_transfer_argmax", "label_transfer_barycentric", "foscttm",
                        "n_predictable_genes", "median_r2") if k in m]
    report.kpis({k.replace("_", " "): m[k] for k in keys})
    result = load_result(out / "gw.npz")
    cells = ad.read_h5ad(out / "cells.h5ad")
    rna = ad.read_h5ad(out / "rna_map.h5ad")
    label = cfg.inputs.label_key
    if label in cells.obs and label in rna.obs:
        fig = pl.coupling_heatmap(result, cells.obs[label].astype(str).to_numpy(),
                                  rna.obs[label].astype(str).to_numpy())
        report.figure(_figure_of(fig), "Coupling mass between image groups (rows) and RNA "
                      "groups (columns), each row normalised.", name="gw_coupling", width=520)
        pred_col = f"gw_map_{label}"
        if pred_col in cells.obs:
            fig = pl.gw_confusion(cells.obs[label].astype(str).to_numpy(),
                                  cells.obs[pred_col].astype(str).to_numpy())
            report.figure(_figure_of(fig), "Labels transferred from RNA to image cells "
                          "(rows: the image cell's own label).", name="gw_confusion", width=480)
    if "X_gw_map" in cells.obsm and "X_gw_map" in rna.obsm:
        fig = pl.gw_joint_embedding(cells, rna, color_img=label if label in cells.obs else None,
                                    color_rna=label if label in rna.obs else None)
        report.figure(_figure_of(fig), "Image cells projected into RNA space through the "
                      "coupling, over the RNA cells.", name="gw_joint", width=620)
    pred_path = out / "predictability.csv"
    if pred_path.exists():
        pred = pd.read_csv(pred_path, index_col=0)
        report.figure(_figure_of(pl.gw_predictability(pred)), "Genes ranked by how well image "
                      "features predict their imputed expression (cross-validated R², with a "
                      "permutation null).", name="gw_predictability")
        report.table(pred.sort_values("r2", ascending=False).head(15),
                     "Most predictable genes.")


def _figure_of(obj):
    """pl functions return a Figure or an Axes; the report wants the Figure."""
    return obj.figure if hasattr(obj, "figure") and not hasattr(obj, "savefig") else obj


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
