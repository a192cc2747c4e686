"""The ``cellsae`` command line.

Each stage registers its commands from its own module in ``cellsae._cli`` (one file per
stage, each with ``register(app)``), so stages can grow independently. Heavy imports
(torch, scanpy) happen inside commands, keeping ``cellsae --help`` fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

import typer

from . import __version__
from ._utils import set_progress, setup_logging

app = typer.Typer(
    name="cellsae",
    help=(
        "cellsae: interpretable cell states from single-cell microscopy.\n\n"
        "Images → crops → CNN embeddings → sparse autoencoder latents → scanpy-style "
        "analysis → Gromov–Wasserstein map to scRNA-seq → gene-module hierarchy.\n\n"
        "Every command reads and writes ordinary files (h5sc/h5ad, safetensors, JSON), so "
        "you can enter or leave the flow at any stage."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Stage command modules, in the order they appear in --help.
_COMMAND_MODULES = ("synth", "ingest", "embed", "sae", "analyze", "align", "pathways", "run")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cellsae {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bars."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    setup_logging(level)
    set_progress(not quiet)


for _name in _COMMAND_MODULES:
    _mod = f"{__package__}._cli.{_name}"
    if importlib.util.find_spec(_mod) is not None:
        importlib.import_module(_mod).register(app)


def main() -> None:
    """Entry point: run the app, turning expected user errors into a one-line message."""
    import sys

    from .config import ConfigError

    try:
        app()
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        typer.secho(f"error: {msg}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover - python -m cellsae.cli
    main()
