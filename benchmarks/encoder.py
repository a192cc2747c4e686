"""Encoder benchmark on the synthetic neuron world.

Held-out-donor genotype accuracy of a linear probe (logistic regression) on three
representations of the same cells:

- ``cnn``: the pooled embedding of a CNN trained with ``cellsae.embed.train_encoder`` on
  the training donors only, extracted with ``cellsae.embed.extract``'s default test-time
  augmentation (mean over the 8 rotations / reflections; ``probe_acc_cnn_no_tta`` is the
  same model without it),
- ``measure``: hand-crafted measurements (``segment``: each crop segmented and measured
  with ``cellsae.images``; ``statistics``: simple per-channel crop statistics),
- ``pixels``: PCA of the raw pixels, fitted on the training donors.

Donor folds: the world has ``--donors-per-genotype`` donors (lines) per genotype, 6 by
default; fold f holds out the f-th donor of every genotype as the test set and trains the
CNN and every probe on the others, so test donors are never seen. Why 6 and not the
world's default 3: with 3, each fold trains on only 2 donors per genotype, and every
representation then learns donor-level cues that do not carry over (figures below); a
study that wants to say what distinguishes patient from healthy neurons needs several
lines per genotype, and so does this benchmark. ``--donors-per-genotype 3`` gives the
old, degenerate design. Also reported: training and extraction throughput (crops/s) on
the device used.

Usage::

    python benchmarks/encoder.py --quick            # < 60 s on 2 cores (1600 cells, 1 fold)
    python benchmarks/encoder.py --out results.json # 2000 cells, all donor folds

The last line printed is one JSON object of flat figures.

Measured on 2026-11-26, quiet 2-core machine, 6 donors per genotype (the default): full run
(2000 cells, 12 epochs, 6 folds, segmented measurements) CNN 0.588 ± 0.048 (no TTA 0.570),
measurements 0.516 ± 0.026, pixel PCA 0.486 ± 0.020; the CNN is ahead of the measurements
in 5 of 6 folds (paired difference 0.072 ± 0.056). ``--quick`` CNN 0.533, measurements
0.479, pixels 0.471.

With 3 donors per genotype (2 training donors per genotype; under load from other jobs;
1600 cells and 6 epochs unless said; mean held-out-donor probe accuracy over the 3 donor folds; one seed of the
CNN moves a fold by about ±0.03): crop statistics 0.541, pixel PCA 0.460; default CNN
0.496 / 0.483 / 0.488 for three seeds, 0.520 / 0.500 / 0.517 with dihedral TTA (higher in
every fold; 2000 cells, 12 epochs: seeds 10-12 0.538 -> 0.555, higher in every fold, but
seeds 0-2 0.548 -> 0.542). No gain over the default
from: 12 epochs (0.501), 3 epochs (0.485), widths 32/64/128 (0.479, 2 folds), instance
input normalisation (0.486), no intensity augmentation (0.495), SupCon (0.44, 2 folds),
training on donor labels (0.493), donor adversary 0.3 (0.482), mean+std pooling of every
stage (0.485), probe C chosen by leave-one-donor-out CV (±0.01), concatenating two seeds
(0.479). An untrained network of the same shape with TTA reaches 0.492, and adding the CNN
embedding to the crop statistics lowers their probe (0.541 -> 0.524): with two training
donors per genotype the CNN mostly learns donor-level cues that do not carry over. Full
run with 3 donors: CNN 0.542 ± 0.046, measurements 0.537 ± 0.049, pixels 0.506 ± 0.027.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from _common import emit  # benchmarks/_common.py, beside this script


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run, under 60 s on 2 cores")
    ap.add_argument("--out", type=Path, help="also write the JSON figures here")
    ap.add_argument("--n-cells", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--objective", default="supervised", choices=["supervised", "moco", "supcon"])
    ap.add_argument("--folds", type=int, default=None, help="donor folds (default: all; quick: 1)")
    ap.add_argument("--measure", default=None, choices=["segment", "statistics"],
                    help="hand-crafted baseline (default: segment; quick: statistics)")
    ap.add_argument("--tta", default="dihedral", choices=["dihedral", "rot90", "none"],
                    help="test-time views averaged into the CNN embedding (extract's default)")
    ap.add_argument("--probe-c", default="1.0",
                    help="inverse penalty of every probe, or 'auto' (leave-one-training-donor-"
                    "out cross-validation; test donors never used)")
    ap.add_argument("--donors-per-genotype", type=int, default=6,
                    help="donors (lines) per genotype in the world (default 6: 5 train + 1 "
                    "test donor per genotype and fold; 3 gives only 2 training donors)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from cellsae.crops import CROPS_KEY
    from cellsae.datasets.world import neuron_world
    from cellsae.embed import measurement_features, pixel_pca, probe_split, train_encoder
    from cellsae.embed.extract import extract

    probe_c = args.probe_c if args.probe_c == "auto" else float(args.probe_c)
    t_start = time.perf_counter()
    n_cells = args.n_cells or (1600 if args.quick else 2000)
    measure_method = args.measure or ("statistics" if args.quick else "segment")
    config = {"objective": args.objective, "patience": None}
    if args.epochs is not None:
        config["epochs"] = args.epochs
    elif args.quick:
        config["epochs"] = 6  # as the demo

    world = neuron_world(n_cells=n_cells, seed=args.seed, crop_size=64,
                         donors_per_genotype=args.donors_per_genotype)
    cells = world.cells
    crops = np.asarray(cells.obsm[CROPS_KEY])
    genotype = cells.obs["genotype"].astype(str).to_numpy()
    donor = cells.obs["donor"].astype(str).to_numpy()
    channel_names = list(cells.uns[CROPS_KEY]["channel_names"])
    t_world = time.perf_counter() - t_start

    t0 = time.perf_counter()
    measure, _ = measurement_features(crops, method=measure_method, channel_names=channel_names) \
        if measure_method == "segment" else measurement_features(crops, method="statistics")
    t_measure = time.perf_counter() - t0

    donors_of = {g: sorted(set(donor[genotype == g])) for g in sorted(set(genotype))}
    n_folds_max = min(len(v) for v in donors_of.values())
    n_folds = min(args.folds or (1 if args.quick else n_folds_max), n_folds_max)
    scores = {k: [] for k in ("cnn", "cnn_no_tta", "cnn_multilayer", "measure", "pixels")}
    balanced = {k: [] for k in scores}
    worst_donor = []
    per_donor: dict[str, dict[str, float]] = {"cnn": {}, "measure": {}, "pixels": {}}
    confusion = None
    train_rates, extract_rates, extract_plain_rates, train_seconds = [], [], [], []
    device = None
    for fold in range(n_folds):
        test_donors = {v[fold] for v in donors_of.values()}
        split = np.where(np.isin(donor, list(test_donors)), "test", "train")
        t0 = time.perf_counter()
        result = train_encoder(crops, genotype, donors=donor, split=split, config=config,
                               device=args.device, seed=args.seed + fold)
        train_seconds.append(time.perf_counter() - t0)
        train_rates.append(result.train_crops_per_s)
        # the default embedding: averaged over the 8 rotations / reflections of each crop
        ext = extract(result.model, crops, tta=args.tta, device=args.device)
        # one plain pass gives the un-augmented last stage and the last two stages
        last_two = result.model.stage_names[-2:]
        plain = extract(result.model, crops, layer=last_two, tta="none", device=args.device)
        multi = plain.embeddings
        no_tta = multi[:, -result.model.embed_dim:]
        extract_rates.append(ext.crops_per_s)
        extract_plain_rates.append(plain.crops_per_s)
        device = str(next(result.model.parameters()).device) if device is None else device
        pixels = pixel_pca(crops, np.flatnonzero(split == "train"), n_components=50,
                           seed=args.seed)
        for name, rep in (("cnn", ext.embeddings), ("cnn_no_tta", no_tta),
                          ("cnn_multilayer", multi), ("measure", measure), ("pixels", pixels)):
            res = probe_split(rep, genotype, split, groups=donor, train_parts=("train",),
                              C=probe_c)
            scores[name].append(res.accuracy)
            balanced[name].append(res.balanced_accuracy)
            if name in per_donor:
                per_donor[name].update(res.per_group_accuracy)
            if name == "cnn":
                worst_donor.append(min(res.per_group_accuracy.values()))
                confusion = res.confusion if confusion is None else confusion + res.confusion
                classes = [str(c) for c in res.classes]

    figures = {
        "probe_acc_cnn": float(np.mean(scores["cnn"])),
        "probe_acc_measure": float(np.mean(scores["measure"])),
        "probe_acc_pixels": float(np.mean(scores["pixels"])),
        "probe_acc_cnn_no_tta": float(np.mean(scores["cnn_no_tta"])),
        "probe_acc_cnn_last_two_stages": float(np.mean(scores["cnn_multilayer"])),
        "probe_acc_cnn_per_fold": [float(v) for v in scores["cnn"]],
        "probe_acc_measure_per_fold": [float(v) for v in scores["measure"]],
        "probe_acc_pixels_per_fold": [float(v) for v in scores["pixels"]],
        "probe_acc_cnn_sd": float(np.std(scores["cnn"])),
        "probe_acc_measure_sd": float(np.std(scores["measure"])),
        "probe_acc_pixels_sd": float(np.std(scores["pixels"])),
        "probe_balanced_acc_cnn": float(np.mean(balanced["cnn"])),
        "probe_balanced_acc_measure": float(np.mean(balanced["measure"])),
        "probe_balanced_acc_pixels": float(np.mean(balanced["pixels"])),
        "probe_acc_cnn_worst_test_donor": float(np.mean(worst_donor)),
        "cnn_beats_measure": bool(np.mean(scores["cnn"]) > np.mean(scores["measure"])),
        "cnn_beats_pixels": bool(np.mean(scores["cnn"]) > np.mean(scores["pixels"])),
        "train_crops_per_s": float(np.mean(train_rates)),
        "extract_crops_per_s": float(np.mean(extract_rates)),
        "extract_crops_per_s_no_tta": float(np.mean(extract_plain_rates)),
        "tta": args.tta,
        "probe_c": probe_c,
        "train_seconds_per_fold": float(np.mean(train_seconds)),
        "measure_seconds": t_measure,
        "world_seconds": t_world,
        "n_cells": n_cells,
        "n_folds": n_folds,
        "donors_per_genotype": args.donors_per_genotype,
        "epochs": int(result.config["epochs"]),
        "objective": args.objective,
        "measure_method": measure_method,
        "device": "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "chance_acc": float(1 / len(donors_of)),
        "total_seconds": time.perf_counter() - t_start,
    }
    print(f"CNN confusion summed over folds (rows true, columns predicted; {classes}): "
          f"{confusion.tolist()}", file=sys.stderr)
    for name, accs in per_donor.items():
        print(f"{name} accuracy per held-out donor: "
              + ", ".join(f"{d} {a:.2f}" for d, a in sorted(accs.items())), file=sys.stderr)
    emit(figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
