"""Benchmark of the image ingestion stage (``cellsae.images``).

1. Segmentation accuracy of the DEFAULT classical nucleus segmentation on real,
   hand-annotated nuclei (``../shared/data/nuclei_groundtruth``): F1 at IoU 0.5 and mean
   matched IoU on the 512x512 stardist image, and on the napari 3-D stack both on its
   maximum projection (labels projected the same way) and per z-slice (counts pooled
   over slices that hold labels).
2. On synthetic plates written by the synthetic neuron world (``--plates DIR`` or
   generated here): cell detection F1 against the true positions (a hit is within 5 px),
   death-call accuracy against the true dead/alive state of matched cells, and
   throughput of ``cellsae.images.ingest`` in fields/s and cells/s with 2 workers
   (wall clock; ``cells_per_cpu_s`` divides by CPU time of this process and its workers,
   which is steadier on a shared machine).

Usage::

    python benchmarks/images_pipeline.py [--quick] [--plates DIR] [--out FILE]

The last line printed is one JSON object of flat figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import emit  # benchmarks/_common.py, beside this script

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLSAE_SHARED_DATA", REPO.parent / "shared" / "data"))


def segmentation_figures() -> dict:
    import tifffile

    from cellsae.images import segment_nuclei
    from cellsae.metrics.segmentation import match_instances

    folder = DATA / "nuclei_groundtruth"
    if not folder.exists():
        print(f"annotated nuclei not found at {folder}", file=sys.stderr)
        return {}
    out: dict = {}
    image = tifffile.imread(folder / "stardist_img2d.tif")
    truth = tifffile.imread(folder / "stardist_mask2d.tif")
    t0 = time.perf_counter()
    pred = segment_nuclei(image)
    out["seg_seconds_stardist_img2d"] = time.perf_counter() - t0
    r = match_instances(truth, pred)
    out.update(
        seg_f1_stardist_img2d=r.f1,
        seg_mean_iou_stardist_img2d=r.mean_matched_iou,
        seg_precision_stardist_img2d=r.precision,
        seg_recall_stardist_img2d=r.recall,
        seg_n_true_stardist_img2d=r.n_true,
        seg_n_pred_stardist_img2d=r.n_pred,
    )

    volume = tifffile.imread(folder / "napari_nuclei3d.tif")
    labels = tifffile.imread(folder / "napari_nuclei3d_label.tif")
    r = match_instances(labels.max(0), segment_nuclei(volume.max(0)))
    out.update(
        seg_f1_napari_nuclei=r.f1,
        seg_mean_iou_napari_nuclei=r.mean_matched_iou,
        seg_n_true_napari_nuclei=r.n_true,
        seg_n_pred_napari_nuclei=r.n_pred,
    )
    tp = fp = fn = 0
    ious = []
    for z in range(volume.shape[0]):
        if labels[z].max() == 0:
            continue
        rz = match_instances(labels[z], segment_nuclei(volume[z]))
        tp, fp, fn = tp + rz.tp, fp + rz.fp, fn + rz.fn
        if rz.tp:
            ious.append((rz.mean_matched_iou, rz.tp))
    out["seg_f1_napari_nuclei_per_slice"] = 2 * tp / max(2 * tp + fp + fn, 1)
    out["seg_mean_iou_napari_nuclei_per_slice"] = sum(m * n for m, n in ious) / max(
        sum(n for _, n in ious), 1
    )
    return out


def synthetic_figures(plates: Path | None, quick: bool, workdir: Path) -> dict:
    import pandas as pd

    from cellsae.crops import read_h5sc
    from cellsae.images import ingest, score_ingestion

    out: dict = {}
    if plates is None:
        try:
            from cellsae.datasets import write_world_plates
        except ImportError:
            print("synthetic world not available: synthetic figures not measured", file=sys.stderr)
            return {}
        plates = workdir / "plates"
        n_cells, field_size = (60, 256) if quick else (500, 512)
        t0 = time.perf_counter()
        write_world_plates(plates, n_cells=n_cells, seed=0, field_size=field_size)
        out["synthetic_generation_seconds"] = time.perf_counter() - t0
        out["synthetic_field_size"] = field_size
    truth = pd.read_csv(plates / "truth_positions.csv")
    import resource

    target = workdir / "cells.h5sc"

    def cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    cpu0, t0 = cpu(), time.perf_counter()
    result = ingest(
        plates, target, platemap=plates / "platemap.csv", n_workers=2, crop_size=64, overwrite=True
    )
    seconds = time.perf_counter() - t0
    cpu_seconds = cpu() - cpu0
    obs = read_h5sc(target).obs
    scores = score_ingestion(obs, truth, max_distance=5.0)
    n_fields = result.n_fields
    out.update(
        synthetic_detection_f1=scores["detection_f1"],
        synthetic_detection_precision=scores["detection_precision"],
        synthetic_detection_recall=scores["detection_recall"],
        death_call_accuracy=scores["death_call_accuracy"],
        synthetic_true_death_rate=scores["true_death_rate"],
        synthetic_called_death_rate=scores["called_death_rate"],
        synthetic_n_true_cells=int(len(truth)),
        synthetic_n_cells=int(result.n_cells),
        synthetic_n_fields=int(n_fields),
        synthetic_fields_skipped=int(result.n_fields_skipped),
        ingest_seconds=seconds,
        fields_per_s=n_fields / seconds,
        cells_per_s=result.n_cells / seconds,
        ingest_workers=2,
        ingest_cpu_seconds=cpu_seconds,
        cells_per_cpu_s=result.n_cells / max(cpu_seconds, 1e-9),
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small synthetic plates (<60 s)")
    parser.add_argument(
        "--plates",
        type=Path,
        default=None,
        help="existing synthetic plates folder (from `cellsae synth --plates`)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("CELLSAE_NO_PROGRESS", "1")
    t0 = time.perf_counter()
    figures: dict = {"quick": bool(args.quick)}
    figures.update(segmentation_figures())
    with tempfile.TemporaryDirectory(prefix="cellsae_images_bench_") as tmp:
        figures.update(synthetic_figures(args.plates, args.quick, Path(tmp)))
    figures["total_seconds"] = time.perf_counter() - t0
    figures = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}
    emit(figures, args.out)
    return 0 if "seg_f1_stardist_img2d" in figures else 1


if __name__ == "__main__":
    sys.exit(main())
