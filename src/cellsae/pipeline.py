"""The end-to-end pipeline: one YAML config drives the stages into a run folder.

Stages, in order: ``world`` (synthetic data, optional) → ``ingest`` → ``embed`` → ``sae``
→ ``analyze`` → ``align`` → ``pathways`` → ``report``. Each stage writes into
``<run>/<stage>/`` with a ``manifest.json`` (parameters, input and output checksums,
package versions, timings, figures). A stage whose parameters and inputs are unchanged
is skipped; ``from_stage`` and ``force`` re-run on demand. A stage builds its outputs in
a temporary folder that replaces the old one only on success, so an interrupted run
never leaves half-written outputs; training stages keep checkpoints in
``<run>/.checkpoints/<stage>`` and resume from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from . import __version__
from ._utils import atomic_write_text
from .config import ConfigError, StrictModel, load_yaml, validate_config

logger = logging.getLogger(__name__)

STAGES = ("world", "ingest", "embed", "sae", "analyze", "align", "pathways", "report")
MANIFEST_VERSION = 1

# -- configuration ------------------------------------------------------------------------


class RunSection(StrictModel):
    out: Path = Path("runs/cellsae")
    seed: int = Field(0, ge=0)
    title: str = "cellsae run"
    device: str = "auto"


class WorldSection(StrictModel):
    """Generate the synthetic world (with truth) as the run's input."""

    enabled: bool = False
    n_cells: int = Field(2000, ge=50)
    seed: int = Field(0, ge=0)
    crop_size: int = Field(64, ge=32)
    n_rna_cells: int | None = Field(None, ge=50)
    design: Literal["balanced", "confounded"] = "balanced"
    plates: bool = True
    plate_cells: int = Field(300, ge=10)


class InputsSection(StrictModel):
    """Bring-your-own inputs; each one lets the run skip the stage that would make it."""

    plates_dir: Path | None = None
    platemap: Path | None = None
    crops: Path | None = None            # .h5sc: skip ingest
    embeddings: Path | None = None       # .h5ad with obsm[embeddings_key]: skip embed
    embeddings_key: str = "X_cnn"
    sae_checkpoint: Path | None = None   # a saved SAE: skip its training
    rna: Path | None = None              # scRNA-seq .h5ad (raw counts in X or layers)
    gmt: Path | None = None              # gene sets for enrichment
    label_key: str = "genotype"
    donor_key: str = "donor"
    phenotype_key: str = "dead"


class IngestSection(StrictModel):
    enabled: bool = True
    unit: Literal["cell", "tile"] = "cell"  # tile: the paper's grid tiles (images.tiles)
    use_for_analysis: bool = False  # True: analyse ingested crops instead of inputs.crops
    settings: dict[str, Any] = Field(default_factory=lambda: {"crop_size": 64, "n_workers": 2})


class EmbedSection(StrictModel):
    enabled: bool = True
    encoder: dict[str, Any] = Field(default_factory=lambda: {"arch": "resnet"})
    train: dict[str, Any] = Field(default_factory=dict)
    split_mode: str = "donor"
    split_fractions: tuple[float, float, float] | None = None  # (train, val, test) shares
    tokens: bool = False               # also write the spatial token store (tokens.zarr)
    token_layer: str | None = None     # tap for the tokens (default: the embedding's layer)
    tta: Literal["dihedral", "rot90", "none"] = "dihedral"  # test-time views (embed.extract)


class SAESection(StrictModel):
    enabled: bool = True
    arch: str = "batchtopk"
    d_sae: int = Field(1024, ge=2)
    k: int | None = Field(16, ge=1)
    preset: str | None = None
    n_epochs: float | None = Field(100, gt=0)
    batch_size: int = Field(256, ge=2)
    input: Literal["embedding", "tokens"] = "embedding"  # tokens: needs embed.tokens
    pool: Literal["mean", "max", "sum"] = "mean"         # token codes → cell codes
    # tokens only: the paper's normalisation (cellsae.sae.tokennorm), at training and encoding
    token_norm: Literal["none", "paper", "paper_batch"] = "none"
    settings: dict[str, Any] = Field(default_factory=dict)  # more keyword arguments of sae.train


class AnalyzeSection(StrictModel):
    enabled: bool = True
    n_neighbors: int = Field(15, ge=2)
    leiden_resolution: float = Field(0.5, gt=0)
    knn_k: int = Field(5, ge=1)
    n_bootstrap: int = Field(200, ge=0)
    differential_alpha: float = Field(0.05, gt=0, lt=1)
    preset: Literal["paper"] | None = None  # paper: cellsae.tl.paper.paper_analysis
    paper: dict[str, Any] = Field(default_factory=dict)  # its keyword arguments


class AlignSection(StrictModel):
    enabled: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of tl.gw_map
    n_permutations: int = Field(20, ge=0)


class PathwaysSection(StrictModel):
    enabled: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)


class ReportSection(StrictModel):
    enabled: bool = True
    svg: bool = False


class PipelineConfig(StrictModel):
    preset: Literal["paper"] | None = None  # cellsae.presets: merged under the user's values
    run: RunSection = RunSection()
    world: WorldSection = WorldSection()
    inputs: InputsSection = InputsSection()
    ingest: IngestSection = IngestSection()
    embed: EmbedSection = EmbedSection()
    sae: SAESection = SAESection()
    analyze: AnalyzeSection = AnalyzeSection()
    align: AlignSection = AlignSection()
    pathways: PathwaysSection = PathwaysSection()
    report: ReportSection = ReportSection()


def load_pipeline_config(source: str | Path | dict, **overrides) -> PipelineConfig:
    """Validate a YAML file or mapping; every problem is reported before any work."""
    data = load_yaml(source) if not isinstance(source, dict) else dict(source)
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    from .presets import apply_preset

    data = apply_preset(data)
    cfg = validate_config(PipelineConfig, data, source=str(source) if not isinstance(source, dict)
                          else "config")
    _check_inputs(cfg)
    return cfg


def _check_inputs(cfg: PipelineConfig) -> None:
    problems = []
    inp = cfg.inputs
    for name in ("plates_dir", "platemap", "crops", "embeddings", "sae_checkpoint", "rna", "gmt"):
        path = getattr(inp, name)
        if path is not None and not Path(path).exists():
            problems.append(f"  - inputs.{name}: '{path}' does not exist")
    if not cfg.world.enabled:
        if inp.crops is None and inp.plates_dir is None and inp.embeddings is None:
            problems.append("  - no image input: set inputs.crops, inputs.plates_dir or "
                            "inputs.embeddings (or world.enabled: true for the synthetic world)")
        if cfg.align.enabled and inp.rna is None:
            problems.append("  - align is enabled but inputs.rna is not set (or disable align)")
        if cfg.ingest.enabled and inp.plates_dir is None:
            problems.append("  - ingest is enabled but inputs.plates_dir is not set "
                            "(set ingest.enabled: false to start from crops)")
    if cfg.sae.enabled and cfg.sae.input == "tokens" and not cfg.embed.tokens:
        problems.append("  - sae.input is 'tokens' but embed.tokens is false; set embed.tokens: "
                        "true so the embed stage writes the token store")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


# -- run folder, manifests ----------------------------------------------------------------


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, or of a folder's files (names and contents)."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"cellsae": __version__}
    for pkg in ("numpy", "scipy", "torch", "anndata", "scanpy", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class StageContext:
    """What a stage function gets: the config, its output folder, earlier stages' folders."""

    name: str
    config: PipelineConfig
    run_dir: Path
    out: Path                      # temporary output folder of this stage
    checkpoint_dir: Path
    metrics: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    inputs: list[Path] = field(default_factory=list)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def has(self, name: str) -> bool:
        return (self.run_dir / name / "manifest.json").exists()


@dataclass
class Stage:
    name: str
    fn: Callable[[StageContext], None]
    depends: tuple[str, ...]
    params: Callable[[PipelineConfig], dict]
    enabled: Callable[[PipelineConfig], bool]
    inputs: Callable[[PipelineConfig], list[Path]] = lambda cfg: []


class Pipeline:
    """Run stages into a run folder, skipping those already done with the same inputs."""

    def __init__(self, config: PipelineConfig, stages: Sequence[Stage] | None = None):
        from ._stages import default_stages

        self.config = config
        self.run_dir = Path(config.run.out)
        self.stages = list(stages or default_stages())

    def _manifest_path(self, name: str) -> Path:
        return self.run_dir / name / "manifest.json"

    def _fingerprint(self, stage: Stage) -> dict:
        upstream = {}
        for dep in stage.depends:
            path = self._manifest_path(dep)
            if path.exists():
                upstream[dep] = json.loads(path.read_text())["outputs_digest"]
        inputs = {str(p): file_digest(p) for p in stage.inputs(self.config) if Path(p).exists()}
        return {"params": json.loads(json.dumps(stage.params(self.config), default=str)),
                "upstream": upstream, "inputs": inputs}

    def is_current(self, stage: Stage) -> bool:
        path = self._manifest_path(stage.name)
        if not path.exists():
            return False
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError:
            return False
        if manifest.get("fingerprint") != self._fingerprint(stage):
            return False
        return manifest.get("outputs_digest") == file_digest(self.run_dir / stage.name /
                                                             "outputs") if \
            (self.run_dir / stage.name / "outputs").exists() else False

    def run(self, *, stages: Sequence[str] | None = None, from_stage: str | None = None,
            force: bool = False) -> dict:
        """Run the pipeline; returns ``{stage: "ran" | "skipped" | "disabled"}``."""
        names = [s.name for s in self.stages]
        for n in list(stages or []) + ([from_stage] if from_stage else []):
            if n not in names:
                raise ConfigError(f"unknown stage {n!r}; stages are: {', '.join(names)}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json",
                          self.config.model_dump_json(indent=1))
        status = {}
        rerun = False
        for stage in self.stages:
            if stages and stage.name not in stages:
                continue
            if not stage.enabled(self.config):
                status[stage.name] = "disabled"
                continue
            if from_stage == stage.name:
                rerun = True
            if not (force or rerun) and self.is_current(stage):
                logger.info("stage %-8s up to date, skipped", stage.name)
                status[stage.name] = "skipped"
                continue
            self._run_stage(stage)
            status[stage.name] = "ran"
            rerun = True  # downstream stages see new inputs
        return status

    def _run_stage(self, stage: Stage) -> None:
        final = self.run_dir / stage.name
        tmp = self.run_dir / f".{stage.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "outputs").mkdir(parents=True)
        # checkpoints are keyed by the stage's fingerprint: a changed parameter starts afresh,
        # an interrupted run with the same parameters resumes
        key = hashlib.sha256(json.dumps(self._fingerprint(stage), sort_keys=True)
                             .encode()).hexdigest()[:12]
        ctx = StageContext(stage.name, self.config, self.run_dir, tmp / "outputs",
                           self.run_dir / ".checkpoints" / stage.name / key)
        logger.info("stage %-8s running", stage.name)
        t0 = time.perf_counter()
        try:
            stage.fn(ctx)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - t0
        manifest = {
            "manifest_version": MANIFEST_VERSION, "stage": stage.name,
            "fingerprint": self._fingerprint(stage),
            "outputs_digest": file_digest(tmp / "outputs"),
            "outputs": sorted(str(p.relative_to(tmp / "outputs")) for p in
                              (tmp / "outputs").rglob("*") if p.is_file()),
            "seconds": round(seconds, 3), "metrics": ctx.metrics, "versions": _versions(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1, default=_jsonable))
        old = self.run_dir / f".{stage.name}.old"
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
        logger.info("stage %-8s done in %.1f s", stage.name, seconds)


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def run_pipeline(config: str | Path | dict | PipelineConfig, *, from_stage: str | None = None,
                 force: bool = False, stages: Sequence[str] | None = None) -> dict:
    """Validate ``config`` and run it; returns the status of each stage."""
    cfg = config if isinstance(config, PipelineConfig) else load_pipeline_config(config)
    return Pipeline(cfg).run(stages=stages, from_stage=from_stage, force=force)


def demo_config(out: str | Path = "demo_out", n_cells: int = 2000, seed: int = 0) -> PipelineConfig:
    """The configuration ``cellsae demo`` runs: the synthetic world through every stage."""
    return load_pipeline_config({
        "run": {"out": str(out), "seed": seed, "title": "cellsae demo: synthetic neurons"},
        "world": {"enabled": True, "n_cells": n_cells, "seed": seed},
        # a CPU-sized encoder run; the library default trains longer (see docs/config.md)
        "embed": {"train": {"epochs": 6}},
        # four (k, ε) candidates instead of nine keep the demo within a few minutes
        "align": {"settings": {"n_neighbors": [15, 30], "epsilon": [0.005, 0.01]},
                  "n_permutations": 10},
    })
