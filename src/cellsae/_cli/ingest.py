"""``cellsae ingest``: plate images → single-cell crops, measurements and death calls."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

logger = logging.getLogger("cellsae.cli")

_CHANNELS_HELP = (
    "Channel map: which file channel holds which stain, in the order the crops should "
    "carry them. Give 'id=name' pairs, e.g. '3=mito,4=lyso,1=nucleus,2=death' (the "
    "default: the paper's scanner numbering, crops ordered mito, lyso, nucleus, death), or "
    "bare names for channels 1, 2, 3, ... in file order, e.g. 'nucleus,death,mito,lyso'. "
    "Channels not named are not read."
)


def ingest(
    plate_dir: Path = typer.Argument(
        ...,
        help="A plate folder, or a folder of plate folders "
        "(one plate per sub-folder, named after it).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Output .h5sc file (written atomically; "
        "finished fields are kept in OUT.parts/ until the end).",
    ),
    platemap: Path = typer.Option(
        None,
        "--platemap",
        "-p",
        help="Plate-map CSV with a 'well' column (B03) and "
        "optionally 'plate', donor, genotype, condition. Default: "
        "PLATE_DIR/platemap.csv when it exists.",
    ),
    channels: str = typer.Option(
        "3=mito,4=lyso,1=nucleus,2=death", "--channels", "-c", help=_CHANNELS_HELP
    ),
    pattern: str = typer.Option(
        "phenix",
        "--pattern",
        help="File-name pattern: a preset (phenix, operetta, "
        "metaxpress, cellvoyager, stack), a template such as "
        "'r{row}c{col}f{field}p{plane}-ch{channel}sk1fk1fl1.tiff', "
        "or a regular expression with named groups.",
    ),
    projection: str = typer.Option(
        "max", "--projection", help="z projection: max, mean, sum, median or best_focus."
    ),
    crop_size: int = typer.Option(128, "--crop-size", min=8, help="Crop side S in pixels."),
    border: str = typer.Option(
        "pad",
        "--border",
        help="Cells at the field edge: 'pad' (zero-pad and flag in obs.touches_border) or 'drop'.",
    ),
    nucleus_channel: str = typer.Option(
        "nucleus", "--nucleus-channel", help="Channel name used to segment nuclei."
    ),
    cytoplasm_channel: str = typer.Option(
        "mito",
        "--cytoplasm-channel",
        help="Channel name used to grow cell bodies ('none' for a ring around each nucleus).",
    ),
    death_channel: str = typer.Option(
        "death", "--death-channel", help="Death-dye channel name ('none' to skip calls)."
    ),
    death_threshold: float = typer.Option(
        None,
        "--death-threshold",
        help="Fixed death-dye threshold (corrected intensity units); default: automatic per plate.",
    ),
    backend: str = typer.Option(
        "classical",
        "--backend",
        help="Nucleus segmentation: classical (built in), cellpose "
        "or stardist (need their package installed).",
    ),
    workers: int = typer.Option(
        2, "--workers", "-j", min=0, help="Worker processes (0 or 1: run in this process)."
    ),
    dask: str = typer.Option(
        None,
        "--dask",
        help="Process fields on dask: 'local' (a LocalCluster of --workers workers) or a "
        "scheduler address such as tcp://host:8786 (workers must see PLATE_DIR and OUT at "
        "the same paths). Needs pip install 'cellsae[dask]'.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing OUT and stale OUT.parts/."
    ),
    strict_platemap: bool = typer.Option(
        False,
        "--strict-platemap",
        help="Stop when a well with images is absent from "
        "the plate map (default: skip it, recorded in QC).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for choosing the calibration fields."),
) -> None:
    """Turn plate images into single-cell crops, measurements and death calls.

    For each field: read the z-stacks lazily, project (max by default), correct
    illumination (flat-field per plate and channel), subtract background, normalise,
    check quality (focus, saturation, empty/debris), segment nuclei and cell bodies, cut
    crops centred on each nucleus with the cell mask as an extra channel, and measure
    morphology, intensities, texture and mito/lyso puncta. Dead cells are called from
    the death dye with a per-plate automatic threshold.

    Writes OUT (.h5sc: crops in obsm['single_cell_images'], measurements in
    obsm['X_measure'], QC and death rates in uns) and OUT's stem + '.qc.csv' (one row per
    field, with the reason of every skip). Re-running the same command resumes an
    interrupted run.
    """
    from ..images.pipeline import ingest as run_ingest

    if platemap is None and (plate_dir / "platemap.csv").exists():
        platemap = plate_dir / "platemap.csv"
        logger.info("using plate map %s", platemap)
    none = {"none", "null", ""}
    try:
        result = run_ingest(
            plate_dir,
            out,
            platemap=platemap,
            overwrite=overwrite,
            channels=channels,
            pattern=pattern,
            projection=projection,
            crop_size=crop_size,
            border=border,
            nucleus_channel=nucleus_channel,
            cytoplasm_channel=None if cytoplasm_channel.lower() in none else cytoplasm_channel,
            death_channel=None if death_channel.lower() in none else death_channel,
            death_threshold=death_threshold,
            segmentation_backend=backend,
            n_workers=workers,
            dask=dask,
            unmapped_wells="error" if strict_platemap else "skip",
            seed=seed,
        )
    except (FileExistsError, ImportError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"{result.n_cells} cells from {result.n_fields} fields "
        f"({result.n_fields_skipped} skipped) → {result.path}"
    )


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
