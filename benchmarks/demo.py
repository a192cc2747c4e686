"""Benchmark: wall time per stage and in total for the demo pipeline, and peak memory.

Usage: python benchmarks/demo.py [--quick] [--out FILE] [--n-cells N]
``--quick`` runs the demo on 400 cells; the default is the demo's 2,000 cells.
The last line printed is one JSON object of flat figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from _common import emit  # benchmarks/_common.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="400 cells, under a minute or two")
    parser.add_argument("--n-cells", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from cellsae.pipeline import Pipeline, demo_config

    n_cells = args.n_cells or (400 if args.quick else 2000)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = demo_config(Path(tmp) / "demo", n_cells=n_cells)
        t0 = time.perf_counter()
        status = Pipeline(cfg).run()
        total = time.perf_counter() - t0
        figures: dict = {"n_cells": n_cells, "total_seconds": round(total, 2)}
        for stage in status:
            manifest = json.loads((Path(tmp) / "demo" / stage / "manifest.json").read_text())
            figures[f"{stage}_seconds"] = manifest["seconds"]
            for key in ("probe_acc_cnn", "probe_acc_measure", "fvu", "l0", "foscttm",
                        "label_transfer_barycentric", "detection_f1", "death_call_accuracy"):
                if key in manifest["metrics"]:
                    figures[key] = manifest["metrics"][key]
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    figures["peak_rss_gb"] = round(max(own, kids) / 1e6, 3)
    emit(figures, args.out)


if __name__ == "__main__":
    main()
