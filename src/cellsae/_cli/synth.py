"""``cellsae synth``: write the synthetic neuron world to disk."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

logger = logging.getLogger("cellsae.cli")


def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created if needed)."),
    n_cells: int = typer.Option(2000, "--n-cells", "-n", min=1, help="Number of imaged cells."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed gives the same world."),
    crop_size: int = typer.Option(64, "--crop-size", min=32, help="Crop side in pixels (64 or 128)."),
    n_rna_cells: int = typer.Option(None, "--n-rna-cells", min=1,
                                    help="Sequenced cells; omit to pair RNA cell i with image cell i."),
    design: str = typer.Option("balanced", "--design",
                               help="'balanced' (every donor on every plate) or 'confounded' "
                                    "(each genotype on its own plate, like the paper's lines)."),
    plates: bool = typer.Option(False, "--plates", help="Also write raw plate images (TIFF fields, "
                                "plate map, true positions) under OUT/plates."),
    plate_cells: int = typer.Option(500, "--plate-cells", min=1,
                                    help="How many of the cells to place on the plates."),
    chunk_size: int = typer.Option(1024, "--chunk-size", min=16,
                                   help="Cells rendered per chunk (memory bound for huge worlds)."),
) -> None:
    """Generate the synthetic neuron world with full ground truth.

    Writes OUT/cells.h5sc (crops, scPortrait-compatible AnnData), OUT/rna.h5ad (raw
    counts), OUT/truth.json and OUT/truth.npz (hierarchy, factor names, pairing), a crops
    gallery OUT/gallery.png and OUT/summary.json; with --plates also OUT/plates/.
    Crops are streamed to disk, so N can be a million.
    """
    import json
    import time

    import anndata as ad

    from .._utils import atomic_write_text
    from ..crops import read_h5sc
    from ..datasets import write_neuron_world, write_world_plates
    from ..pl import crops_gallery

    t0 = time.perf_counter()
    kwargs = {"n_rna_cells": n_rna_cells, "design": design}
    write_neuron_world(out, n_cells, seed=seed, crop_size=crop_size, chunk_size=chunk_size, **kwargs)
    seconds = time.perf_counter() - t0
    cells = read_h5sc(out / "cells.h5sc")
    rna = ad.read_h5ad(out / "rna.h5ad", backed="r")
    fig = crops_gallery(cells, "genotype", n_per_group=10, title="Synthetic neurons by genotype")
    fig.savefig(out / "gallery.png", dpi=120, bbox_inches="tight")
    summary = {
        "n_cells": int(cells.n_obs), "n_rna_cells": int(rna.n_obs), "n_genes": int(rna.n_vars),
        "crop_size": crop_size, "seed": seed,
        "cells_per_genotype": cells.obs["genotype"].value_counts().to_dict(),
        "death_rate_per_genotype": {str(k): round(float(v), 4) for k, v in
                                    cells.obs.groupby("genotype", observed=True)["dead"].mean().items()},
        "n_donors": int(cells.obs["donor"].nunique()), "n_wells": int(cells.obs["well"].nunique()),
        "seconds": round(seconds, 2), "cells_per_s": round(n_cells / seconds, 1),
    }
    if plates:
        write_world_plates(out / "plates", n_cells, seed=seed, crop_size=crop_size,
                           max_cells=plate_cells, **kwargs)
        summary["plates"] = str(out / "plates")
    rna.file.close()
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=int))
    logger.info("world written to %s (%.1f s, %.0f cells/s)", out, seconds, n_cells / seconds)
    logger.info("death rate per genotype: %s", summary["death_rate_per_genotype"])


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
