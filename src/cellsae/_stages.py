"""The pipeline's stage bodies. Each reads earlier stages' outputs from the run folder and
writes its own into ``ctx.out``; numbers worth reporting go into ``ctx.metrics``.

These are thin: every computation lives in the library (``images``, ``embed``, ``sae``,
``tl``, ``align``, ``pathways``); a stage only wires files to functions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ._utils import atomic_path, atomic_write_text
from .pipeline import PipelineConfig, Stage, StageContext

logger = logging.getLogger(__name__)


def _outputs(ctx: StageContext, stage: str) -> Path:
    path = ctx.run_dir / stage / "outputs"
    if not path.exists():
        raise FileNotFoundError(f"stage '{ctx.name}' needs the outputs of stage '{stage}', "
                                f"which has not run in {ctx.run_dir} (run it, or give the "
                                "matching inputs.* path in the config)")
    return path


def _write_h5ad(adata: ad.AnnData, path: Path) -> None:
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def _json(path: Path, data) -> None:
    from .pipeline import _jsonable

    atomic_write_text(path, json.dumps(data, indent=1, default=_jsonable))


def _world_dir(ctx: StageContext) -> Path | None:
    if not ctx.config.world.enabled:
        return None
    return _outputs(ctx, "world")


# -- world --------------------------------------------------------------------------------


def stage_world(ctx: StageContext) -> None:
    from .datasets import write_neuron_world, write_world_plates

    w = ctx.config.world
    kwargs = {"n_rna_cells": w.n_rna_cells, "design": w.design}
    write_neuron_world(ctx.out, w.n_cells, seed=w.seed, crop_size=w.crop_size, **kwargs)
    if w.plates:
        write_world_plates(ctx.out / "plates", w.n_cells, seed=w.seed, crop_size=w.crop_size,
                           max_cells=w.plate_cells, **kwargs)
    cells = ad.read_h5ad(ctx.out / "cells.h5sc", backed="r")
    ctx.metrics.update({"n_cells": cells.n_obs,
                        "death_rate": float(np.mean(cells.obs["dead"].to_numpy()))})
    cells.file.close()


# -- ingest -------------------------------------------------------------------------------


def stage_ingest(ctx: StageContext) -> None:
    from .images import ingest

    cfg = ctx.config
    world = _world_dir(ctx)
    plates_dir = cfg.inputs.plates_dir or (world / "plates" if world else None)
    platemap = cfg.inputs.platemap or (world / "plates" / "platemap.csv" if world else None)
    settings = dict(cfg.ingest.settings)
    settings.setdefault("seed", cfg.run.seed)
    if cfg.ingest.unit == "tile":  # the paper's grid tiles (cellsae.images.tiles)
        from .images.tiles import ingest_tiles

        if "crop_size" in settings:
            settings.setdefault("tile_size", settings.pop("crop_size"))
        result = ingest_tiles(plates_dir, ctx.out / "cells.h5sc", platemap=platemap,
                              config=settings)
        ctx.metrics.update({k: v for k, v in result.to_dict().items()
                            if isinstance(v, int | float) and k != "path"})
        return
    result = ingest(plates_dir, ctx.out / "cells.h5sc", platemap=platemap, config=settings)
    ctx.metrics.update({k: v for k, v in result.to_dict().items()
                        if isinstance(v, int | float) and k != "path"})
    if world is not None:
        ctx.metrics.update(_score_ingest(ctx.out / "cells.h5sc", world / "plates"))


def _score_ingest(cells_path: Path, plates: Path) -> dict:
    """Detection F1 and death-call accuracy against the world's true positions."""
    from .crops import read_h5sc
    from .images import score_ingestion

    truth = pd.read_csv(plates / "truth_positions.csv")
    return score_ingestion(read_h5sc(cells_path).obs, truth)


# -- embed --------------------------------------------------------------------------------


def _crops_path(ctx: StageContext) -> Path:
    cfg = ctx.config
    if cfg.ingest.use_for_analysis and ctx.has("ingest"):
        return _outputs(ctx, "ingest") / "cells.h5sc"
    if cfg.inputs.crops is not None:
        return Path(cfg.inputs.crops)
    world = _world_dir(ctx)
    if world is not None:
        return world / "cells.h5sc"
    if ctx.has("ingest"):
        return _outputs(ctx, "ingest") / "cells.h5sc"
    raise FileNotFoundError("no crops: set inputs.crops, or run ingest on inputs.plates_dir")


def _donor_holdout(labels: np.ndarray, donors: np.ndarray, seed: int) -> np.ndarray:
    """train/test per cell: about a third of each label's donors (at least one) held out."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    for label in np.unique(labels):
        ds = np.unique(donors[labels == label])
        if len(ds) < 2:
            raise ValueError(f"label '{label}' has a single donor ({ds[0]}); a held-out-donor "
                             "evaluation needs at least two donors per label")
        test = rng.choice(ds, max(1, round(len(ds) / 3)), replace=False)
        split[(labels == label) & np.isin(donors, test)] = "test"
    return split.astype(str)


def stage_embed(ctx: StageContext) -> None:
    from .crops import CropStore, read_h5sc
    from .embed import linear_probe, measurement_features, pixel_pca, save_encoder, train_encoder
    from .embed.extract import extract

    cfg = ctx.config
    crops_path = _crops_path(ctx)
    cells = read_h5sc(crops_path)
    store = CropStore(crops_path)
    labels = cells.obs[cfg.inputs.label_key].astype(str).to_numpy()
    donors = cells.obs[cfg.inputs.donor_key].astype(str).to_numpy()
    _design_check(ctx, cells.obs)
    split = _donor_holdout(labels, donors, cfg.run.seed) if cfg.embed.split_mode == "donor" \
        else None
    fractions = tuple(cfg.embed.split_fractions or (0.6, 0.2, 0.2))
    if cfg.embed.split_mode in ("field", "well", "plate"):
        from .embed.splits import make_split

        split = make_split(cells.obs, cfg.embed.split_mode, label_key=cfg.inputs.label_key,
                           fractions=fractions, seed=cfg.run.seed)
    result = train_encoder(store, labels, donors=donors if split is None or
                           cfg.embed.split_mode == "donor" else None, split=split,
                           fractions=fractions,
                           split_mode=cfg.embed.split_mode, encoder=dict(cfg.embed.encoder),
                           config=dict(cfg.embed.train), out_dir=ctx.checkpoint_dir, resume=True,
                           device=cfg.run.device, seed=cfg.run.seed)
    save_encoder(result.model, ctx.out / "encoder.safetensors")
    emb = extract(result.model, store, device=cfg.run.device,
                  tokens_out=ctx.out / "tokens.zarr" if cfg.embed.tokens else None,
                  tokens_layer=cfg.embed.token_layer, tta=cfg.embed.tta)
    cells.obsm["X_cnn"] = emb.embeddings.astype(np.float32)
    ctx.metrics["extract_crops_per_s"] = float(emb.crops_per_s)
    if cfg.embed.tokens:
        ctx.metrics["tokens_per_cell"] = int(emb.tokens_per_cell)
        ctx.metrics["token_dim"] = int(emb.token_dim)
    measure, measure_names = measurement_features(store, channel_names=store.channel_names)
    cells.obsm["X_measure"] = np.nan_to_num(measure).astype(np.float32)
    cells.uns["X_measure_names"] = [str(n) for n in measure_names]
    cells.obs["split"] = result.split
    held_out = result.split == "test"
    cells.obsm["X_pixels"] = pixel_pca(store, np.flatnonzero(~held_out), n_components=50,
                                       seed=cfg.run.seed).astype(np.float32)
    probes = {}
    for name, key in (("cnn", "X_cnn"), ("measure", "X_measure"), ("pixels", "X_pixels")):
        res = linear_probe(cells.obsm[key][~held_out], labels[~held_out],
                           cells.obsm[key][held_out], labels[held_out],
                           groups_test=donors[held_out])
        probes[name] = res
        ctx.metrics[f"probe_acc_{name}"] = float(res.accuracy)
    _json(ctx.out / "encoder_report.json",
          {"probe": {name: res.to_dict() for name, res in probes.items()},
           "training": result.to_dict()})
    ctx.metrics["train_crops_per_s"] = float(result.train_crops_per_s)
    cells.uns.pop("h5sc_path", None)
    cells.uns["crops_path"] = str(Path(crops_path).resolve())
    _write_h5ad(cells, ctx.out / "cells.h5ad")


def _embedded_cells(ctx: StageContext) -> ad.AnnData:
    cfg = ctx.config
    if cfg.inputs.embeddings is not None:
        cells = ad.read_h5ad(cfg.inputs.embeddings)
        if cfg.inputs.embeddings_key not in cells.obsm:
            raise KeyError(f"'{cfg.inputs.embeddings}' has no obsm['{cfg.inputs.embeddings_key}']; "
                           f"available: {list(cells.obsm)}")
        cells.obsm["X_cnn"] = np.asarray(cells.obsm[cfg.inputs.embeddings_key], np.float32)
        return cells
    return ad.read_h5ad(_outputs(ctx, "embed") / "cells.h5ad")


# -- sae ----------------------------------------------------------------------------------

# cell representations carried from the cells' AnnData onto the latents' AnnData
CARRIED_REPS = ("X_cnn", "X_measure", "X_pixels", "factors", "programs")


def _carry_reps(source, target) -> None:
    for key in CARRIED_REPS:
        if key in source.obsm:
            target.obsm[key] = np.asarray(source.obsm[key])


def stage_sae(ctx: StageContext) -> None:
    from . import sae as sae_mod
    from .tl import sae_encode

    cfg = ctx.config
    s = cfg.sae
    cells = _embedded_cells(ctx)
    x = np.asarray(cells.obsm["X_cnn"], np.float32)
    # sae.input "tokens": train on every spatial token of the CNN map and pool the token
    # codes per cell (the paper's SAE); "embedding": train on the pooled cell embedding
    data, key, store = x, None, None
    if s.token_norm != "none" and s.input != "tokens":
        raise ValueError(f"sae.token_norm is {s.token_norm!r} but sae.input is {s.input!r}; "
                         "token normalisation applies to spatial tokens (sae.input: tokens)")
    if s.input == "tokens":
        from .sae.tokennorm import NormalizedTokenStore, normalized_source

        path = _outputs(ctx, "embed") / "tokens.zarr"
        if not path.exists():
            raise FileNotFoundError(f"sae.input is 'tokens' but the embed stage wrote no token "
                                    f"store ({path}); set embed.tokens: true and re-run embed")
        # one pass gathers each unit's GAP vector; the same normalised view feeds training,
        # evaluation and encoding, so the SAE never sees tokens normalised another way
        store = NormalizedTokenStore(path, s.token_norm)
        data = normalized_source(path, s.token_norm, store=store)
    if cfg.inputs.sae_checkpoint is not None:
        model = sae_mod.load(cfg.inputs.sae_checkpoint)
        trained_with = (getattr(model, "train_info", {}) or {}).get("token_norm", "none")
        if s.input == "tokens" and trained_with != s.token_norm:
            raise ValueError(f"the SAE '{cfg.inputs.sae_checkpoint}' was trained on tokens "
                             f"with token_norm {trained_with!r} but sae.token_norm is "
                             f"{s.token_norm!r}; set sae.token_norm: {trained_with}")
    else:
        n_rows = sae_mod.open_source(data, key=key).n
        settings = {"batch_size": min(s.batch_size, max(16, n_rows // 4)), **s.settings}
        resume = ctx.checkpoint_dir if any(ctx.checkpoint_dir.glob("step_*.json")) else None
        model = sae_mod.train(data, s.arch, s.d_sae, s.k, preset=s.preset, key=key,
                              n_epochs=s.n_epochs, seed=cfg.run.seed, device=cfg.run.device,
                              checkpoint_dir=ctx.checkpoint_dir, checkpoint_every=100,
                              resume=resume, **settings)
        if s.input == "tokens":
            model.train_info["token_norm"] = s.token_norm
    model.save(ctx.out / "sae.safetensors")
    report = sae_mod.evaluate(model, data, key=key)
    ctx.metrics.update({k: v for k, v in report.to_dict().items()
                        if isinstance(v, int | float)})
    if s.input == "tokens":
        from .tl import token_codes
        from .tl.sae import latent_anndata

        # whole units, about 64k tokens at a time: codes are dense while encoded
        per_batch = max(1, 65_536 // max(1, store.tokens_per_cell))
        latents = latent_anndata(token_codes(model, store, pool=s.pool,
                                             cells_per_batch=per_batch), model,
                                 obs=cells.obs.copy(),
                                 params={"use_rep": "tokens", "pool": s.pool,
                                         "token_norm": s.token_norm})
        latents.uns["tokens_path"] = str(path.resolve())
    else:
        latents = sae_encode(cells, model, use_rep="X_cnn")
    _carry_reps(cells, latents)
    if "X_measure_names" in cells.uns:
        latents.uns["X_measure_names"] = [str(n) for n in cells.uns["X_measure_names"]]
    latents.uns["crops_path"] = cells.uns.get("crops_path", "")
    _write_h5ad(latents, ctx.out / "latents.h5ad")


# -- analyze ------------------------------------------------------------------------------


def stage_analyze(ctx: StageContext) -> None:
    from . import tl
    from .tl.differential import significant_mask

    cfg = ctx.config
    a = cfg.analyze
    raw = ad.read_h5ad(_outputs(ctx, "sae") / "latents.h5ad")
    _design_check(ctx, raw.obs)
    if a.preset == "paper":
        return _analyze_paper(ctx, raw)
    adata = _clustered_latents(raw, cfg)
    label, donor = cfg.inputs.label_key, cfg.inputs.donor_key
    phenotype = cfg.inputs.phenotype_key
    healthy = "healthy" if "healthy" in set(adata.obs[label].astype(str)) else None
    tl.pseudotime(adata, root_group={label: healthy} if healthy else None,
                  live_key=phenotype if phenotype in adata.obs else None)
    tables = {}
    for name, rep in (("sae", None), ("cnn", "X_cnn")):
        de = tl.differential_features(adata, label, reference=healthy or "rest", use_rep=rep,
                                      alpha=a.differential_alpha, key_added=f"differential_{name}")
        mask = significant_mask(de, alpha=a.differential_alpha)
        ctx.metrics[f"de_features_{name}"] = int(de.loc[mask, "feature"].nunique())
        tables[name] = de
    tables["sae"].to_csv(ctx.out / "differential_sae.csv", index=False)
    tables["cnn"].to_csv(ctx.out / "differential_cnn.csv", index=False)
    if phenotype in adata.obs:
        reps = [r for r in ("X_cnn", "X_sae", "X_measure") if r in adata.obsm]
        table = tl.compare_representations(
            adata, reps=reps, phenotype=phenotype, k=a.knn_k, strata_key=label,
            groups_key=donor if donor in adata.obs else None,
            factors_key="factors" if "factors" in adata.obsm else None,
            n_bootstrap=a.n_bootstrap, seed=cfg.run.seed)
        table.to_csv(ctx.out / "geometry.csv")
        for rep in reps:
            for metric in ("knn_sd_ratio", "morans_i", "phenotype_r2", "factor_mcc"):
                if metric in table.columns:
                    ctx.metrics[f"{metric}_{rep[2:]}"] = float(table.loc[rep, metric])
    if "t" in adata.obs and "dpt_pseudotime" in adata.obs:
        from scipy.stats import spearmanr

        ctx.metrics["dpt_t_spearman"] = float(spearmanr(adata.obs["dpt_pseudotime"],
                                                        adata.obs["t"]).statistic)
    names = raw.uns.get("X_measure_names")
    if "X_measure" in adata.obsm and names is not None:
        adata.obsm["measurements"] = pd.DataFrame(adata.obsm["X_measure"], index=adata.obs_names,
                                                  columns=[str(n) for n in names])
    annotation = tl.annotate_latents(adata, measurements="measurements" if "measurements" in
                                     adata.obsm else None, categorical=[label],
                                     death_key=phenotype if phenotype in adata.obs else None)
    annotation.to_csv(ctx.out / "latent_annotation.csv")
    adata.obsm.pop("measurements", None)
    _write_h5ad(adata, ctx.out / "latents.h5ad")


def _design_check(ctx: StageContext, obs: pd.DataFrame) -> None:
    """Warn (log, metrics, ``design_check.json``) when genotype is confounded with batch."""
    from .design import check_design

    cfg = ctx.config
    if cfg.inputs.label_key not in obs.columns:
        return
    check = check_design(obs, cfg.inputs.label_key, donor_key=cfg.inputs.donor_key)
    ctx.metrics["design_confounded"] = check.confounded
    _json(ctx.out / "design_check.json", check.to_dict())


def _analyze_paper(ctx: StageContext, raw: ad.AnnData) -> None:
    """The analysis preset ``paper`` (cellsae.tl.paper): the paper's geometry within each
    mutant class, DPT per control + mutant pair and the volcano, on units with a death rate."""
    from .tl.paper import paper_analysis

    cfg = ctx.config
    a = cfg.analyze
    adata = _clustered_latents(raw, cfg)
    label = cfg.inputs.label_key
    settings = {"label_key": label, "phenotype": cfg.inputs.phenotype_key,
                "seed": cfg.run.seed, **a.paper}
    if "control" not in settings:
        levels = set(adata.obs[label].astype(str))
        settings["control"] = "healthy" if "healthy" in levels else sorted(levels)[0]
    result = paper_analysis(adata, **settings)
    adata.uns.pop("paper", None)
    result["geometry"].to_csv(ctx.out / "paper_geometry.csv", index=False)
    result["trajectory"].to_csv(ctx.out / "paper_trajectory.csv", index=False)
    result["volcano_counts"].to_csv(ctx.out / "paper_volcano_counts.csv", index=False)
    _json(ctx.out / "paper_summary.json", {"summary": result["summary"],
                                           "params": result["params"]})
    ctx.metrics.update(result["summary"])
    _write_h5ad(adata, ctx.out / "latents.h5ad")


# -- align --------------------------------------------------------------------------------


def _rna(ctx: StageContext) -> ad.AnnData:
    cfg = ctx.config
    if cfg.inputs.rna is not None:
        return ad.read_h5ad(cfg.inputs.rna)
    world = _world_dir(ctx)
    if world is None:
        raise FileNotFoundError("no scRNA-seq input: set inputs.rna")
    return ad.read_h5ad(world / "rna.h5ad")


def stage_align(ctx: StageContext) -> None:
    from . import tl

    cfg = ctx.config
    cells = ad.read_h5ad(_outputs(ctx, "analyze") / "latents.h5ad")
    rna = _rna(ctx)
    label = cfg.inputs.label_key
    settings = {"seed": cfg.run.seed, "device": cfg.run.device, **cfg.align.settings}
    if label in rna.obs:
        settings.setdefault("labels_key", label)
    result = tl.gw_map(cells, rna, use_rep_img="X_sae", **settings)
    result.save(ctx.out / "gw.npz")
    _json(ctx.out / "gw_summary.json", cells.uns.pop("gw_map", {}))
    rna.uns.pop("gw_map", None)
    ctx.metrics.update({k: v for k, v in result.to_dict().items()
                        if isinstance(v, int | float | bool) and not isinstance(v, bool)})
    if label in rna.obs and label in cells.obs:
        for method in ("argmax", "barycentric"):
            ctx.metrics[f"label_transfer_{method}"] = result.label_transfer_accuracy(
                cells.obs[label].astype(str).to_numpy(), rna.obs[label].astype(str).to_numpy(),
                method=method)
    if "rna_index" in cells.obs and (cells.obs["rna_index"].to_numpy() >= 0).all():
        ctx.metrics["foscttm"] = result.foscttm(cells.obs["rna_index"].to_numpy())
    # imputed expression on image cells (log-normalised RNA), and which genes images predict
    import scanpy as sc

    norm = rna.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    imputed = ad.AnnData(X=result.impute(norm).astype(np.float32), obs=cells.obs.copy(),
                         var=rna.var.copy())
    pred = result.predictability(np.asarray(cells.obsm["X_sae"]), norm,
                                 n_permutations=cfg.align.n_permutations, seed=cfg.run.seed)
    pred.to_csv(ctx.out / "predictability.csv")
    imputed.var = imputed.var.join(pred.add_prefix("predict_"), how="left")
    ctx.metrics["n_predictable_genes"] = int(pred["predictable"].sum())
    ctx.metrics["median_r2"] = float(pred["r2"].median())
    _write_h5ad(imputed, ctx.out / "imputed.h5ad")
    _write_h5ad(cells, ctx.out / "cells.h5ad")
    rna_map = ad.AnnData(obs=rna.obs.copy(), obsm={"X_gw_map": rna.obsm["X_gw_map"]})
    _write_h5ad(rna_map, ctx.out / "rna_map.h5ad")


# -- pathways -----------------------------------------------------------------------------


def stage_pathways(ctx: StageContext) -> None:
    from . import tl

    cfg = ctx.config
    align_out = _outputs(ctx, "align")
    expr_path = align_out / "imputed.h5ad"
    expr = ad.read_h5ad(expr_path) if expr_path.exists() else _rna(ctx)
    settings = {"seed": cfg.run.seed, **cfg.pathways.settings}
    if cfg.inputs.gmt is not None:
        from .pathways import read_gmt

        settings["gene_sets"] = read_gmt(cfg.inputs.gmt)
    tl.gene_modules(expr, **settings)
    hierarchy = tl.get_hierarchy(expr)
    hierarchy.save(ctx.out / "hierarchy.json")
    ctx.metrics["n_modules_per_level"] = [int(n) for n in hierarchy.n_modules]
    ctx.metrics["nesting_consistency"] = float(hierarchy.nesting_consistency)
    truth_cols = [c for c in ("module_level1", "module_level2", "module_level3") if c in expr.var]
    if truth_cols:  # the synthetic world's planted hierarchy
        from .pathways import match_levels

        var = expr.var.reindex(hierarchy.genes)
        truth = {c[-6:]: var[c].fillna("").astype(str).to_numpy() for c in truth_cols}
        for level, (_, ari) in match_levels(hierarchy, truth).items():
            ctx.metrics[f"ari_{level}"] = ari
        ctx.metrics["n_module_genes_tested"] = int((var[truth_cols[0]].fillna("") != "").sum())


# -- report -------------------------------------------------------------------------------


def stage_report(ctx: StageContext) -> None:
    from .report.pipeline_report import build_report

    build_report(ctx)


def default_stages() -> list[Stage]:
    def section(name):
        return lambda cfg: getattr(cfg, name).model_dump(mode="json")

    def with_inputs(*names):
        def params(cfg: PipelineConfig) -> dict:
            return {"inputs": {n: str(getattr(cfg.inputs, n)) for n in names},
                    "run_seed": cfg.run.seed}
        return params

    def merge(*fns):
        return lambda cfg: {k: v for fn in fns for k, v in fn(cfg).items()}

    return [
        Stage("world", stage_world, (), section("world"), lambda c: c.world.enabled),
        Stage("ingest", stage_ingest, ("world",),
              merge(section("ingest"), with_inputs("plates_dir", "platemap")),
              lambda c: c.ingest.enabled and (c.world.plates or c.inputs.plates_dir is not None),
              lambda c: [p for p in (c.inputs.platemap,) if p]),
        Stage("embed", stage_embed, ("world", "ingest"),
              merge(section("embed"), with_inputs("crops", "label_key", "donor_key"),
                    lambda c: {"device": c.run.device}),
              lambda c: c.embed.enabled and c.inputs.embeddings is None,
              lambda c: [p for p in (c.inputs.crops,) if p]),
        Stage("sae", stage_sae, ("embed",),
              merge(section("sae"), with_inputs("embeddings", "embeddings_key", "sae_checkpoint")),
              lambda c: c.sae.enabled,
              lambda c: [p for p in (c.inputs.embeddings, c.inputs.sae_checkpoint) if p]),
        Stage("analyze", stage_analyze, ("sae",),
              merge(section("analyze"), with_inputs("label_key", "phenotype_key")),
              lambda c: c.analyze.enabled),
        Stage("align", stage_align, ("analyze", "world"),
              merge(section("align"), with_inputs("rna", "label_key")),
              lambda c: c.align.enabled,
              lambda c: [p for p in (c.inputs.rna,) if p]),
        Stage("pathways", stage_pathways, ("align",),
              merge(section("pathways"), with_inputs("gmt")),
              lambda c: c.pathways.enabled,
              lambda c: [p for p in (c.inputs.gmt,) if p]),
        Stage("report", stage_report,
              ("world", "ingest", "embed", "sae", "analyze", "align", "pathways"),
              merge(section("report"), section("run")), lambda c: c.report.enabled),
    ]


def _clustered_latents(raw, cfg):
    """Latents as an analysis AnnData (carried representations, dense ``X_sae``), PCA, Leiden."""
    from scipy import sparse

    from . import tl

    a = cfg.analyze
    adata = tl.latents_anndata(raw)
    _carry_reps(raw, adata)
    acts = adata.layers["activations"] if "activations" in adata.layers else adata.X
    adata.obsm["X_sae"] = (acts.toarray() if sparse.issparse(acts) else np.asarray(acts)
                           ).astype(np.float32)
    tl.pca_latents(adata, n_comps=min(50, adata.n_vars - 1), seed=cfg.run.seed)
    tl.cluster_latents(adata, n_neighbors=a.n_neighbors, resolution=a.leiden_resolution,
                       seed=cfg.run.seed)
    return adata
