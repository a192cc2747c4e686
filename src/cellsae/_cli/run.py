"""``cellsae run`` and ``cellsae demo``: the whole pipeline from one config."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

logger = logging.getLogger("cellsae.cli")


def run(
    config: Path = typer.Argument(..., exists=False, help="Pipeline YAML config (see examples/)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder; overrides run.out in the config."),
    from_stage: str = typer.Option(None, "--from", help="Re-run from this stage on (world, ingest, "
                                   "embed, sae, analyze, align, pathways, report)."),
    force: bool = typer.Option(False, "--force", help="Re-run every stage, even if up to date."),
    seed: int = typer.Option(None, "--seed", min=0, help="Overrides run.seed."),
) -> None:
    """Run the pipeline described by CONFIG into its run folder.

    Stages whose parameters and inputs are unchanged since the last run are skipped;
    an interrupted run resumes (training from its last checkpoint) and never leaves
    half-written outputs. Every config problem is reported before any work starts.
    """
    from ..pipeline import load_pipeline_config, run_pipeline

    overrides = {}
    if out is not None:
        overrides["run.out"] = str(out)
    if seed is not None:
        overrides["run.seed"] = seed
    cfg = load_pipeline_config(config, **overrides)
    status = run_pipeline(cfg, from_stage=from_stage, force=force)
    report = Path(cfg.run.out) / "report" / "outputs" / "report.html"
    logger.info("stages: %s", ", ".join(f"{k} {v}" for k, v in status.items()))
    if report.exists():
        typer.echo(f"report: {report}")


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Run folder."),
    n_cells: int = typer.Option(2000, "--n-cells", "-n", min=100, help="Imaged cells in the world."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed."),
    force: bool = typer.Option(False, "--force", help="Re-run every stage."),
) -> None:
    """Build the synthetic world (with raw plates) and run every stage on it.

    Writes OUT/report/outputs/report.html, a self-contained page with every figure, and
    each stage's files under OUT/<stage>/outputs. Re-running skips finished stages.
    """
    from ..pipeline import demo_config, run_pipeline

    cfg = demo_config(out, n_cells=n_cells, seed=seed)
    run_pipeline(cfg, force=force)
    typer.echo(f"report: {Path(out) / 'report' / 'outputs' / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
