"""Benchmark: synthetic world generation speed (cells with crops per second).

Usage: python benchmarks/synth_world.py [--quick] [--out FILE]
The last line printed is one JSON object of flat figures.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit  # benchmarks/_common.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under 60 s")
    parser.add_argument("--out", type=Path, help="also write the JSON figures here")
    args = parser.parse_args()

    from cellsae.datasets import neuron_world, write_neuron_world

    n = 2000 if args.quick else 20000
    figures: dict[str, float | int | str] = {"n_cells": n, "crop_size": 64}
    neuron_world(50, seed=0)  # warm-up (imports, FFT plans)
    t0 = time.perf_counter()
    world = neuron_world(n, seed=0)
    seconds = time.perf_counter() - t0
    figures["seconds_in_memory"] = round(seconds, 3)
    figures["cells_per_s"] = round(n / seconds, 1)
    x = world.rna.X
    figures["rna_zero_fraction"] = round(1 - x.nnz / np.prod(x.shape), 4)
    figures["death_rate"] = round(float(world.cells.obs["dead"].mean()), 4)
    del world
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_neuron_world(Path(tmp) / "w", n, seed=0, chunk_size=1024)
        seconds = time.perf_counter() - t0
        figures["seconds_streamed"] = round(seconds, 3)
        figures["cells_per_s_streamed"] = round(n / seconds, 1)
        if not args.quick:
            t0 = time.perf_counter()
            write_neuron_world(Path(tmp) / "w128", 2000, seed=0, crop_size=128)
            figures["cells_per_s_crop128"] = round(2000 / (time.perf_counter() - t0), 1)
    figures["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)
    emit(figures, args.out)


if __name__ == "__main__":
    main()
