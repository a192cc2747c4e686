"""Ground-truth feature recovery of every SAE architecture on toy superposition data.

(a) easy: d = 256, 512 true features, about 5 active per sample (Zipf-like frequencies);
(b) hard: d = 512, 4096 true features, about 25 active, correlated (shared factors) and
    hierarchical (children fire only with their parent).
All architectures are trained in one sweep per data set (each batch is shared), then
evaluated on held-out samples of the same toy: MMCS (true → learned), MCC after Hungarian
matching, recovery@0.9, FVU, L0, dead fraction.

Keys of the JSON (last line of stdout): ``<metric>_<easy|hard>_<arch>``, plus
``mmcs_easy_best``, ``recovery_easy_best``, ``mcc_hard_best`` (and which arch gave them).
Targets (issue 4): easy MMCS ≥ 0.99 and recovery@0.9 ≥ 0.98; hard MCC ≥ 0.80.

``--quick`` (under a minute on 2 cores) uses smaller toys (easy: d 64, 128 features, 3
active; hard: d 128, 512 features, 8 active) and few steps; its figures are a smoke test,
not the targets. The full run uses the sizes above.

Hard-toy recipe: d_sae = 4096 (the number of true features), k = 25 (the true L0; the
penalty architectures get ``target_l0=25``), 300k training samples, batch 512, lr 3e-3,
4000 steps (2M samples, about 7 epochs), AuxK on. Learning on this toy is limited by
samples seen: at 200k samples lr 1e-3 reached MCC 0.12 and lr 3e-3 0.25, lr 1e-2 killed
84 % of the latents; a plain PyTorch TopK loop at the same settings learns no faster
(FVU 0.665 vs cellsae's 0.652 after 400 steps of 512). The full run is long: each
architecture costs about 0.1 s per step on a quiet 2-core machine, so all six take on
the order of 40 minutes (``--archs-hard`` picks a subset, ``--steps-hard`` shortens it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import emit  # benchmarks/_common.py, beside this script

ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"]


def _configs(d_sae: int, k: int, d_in: int, archs: list[str]) -> list[dict]:
    configs = []
    for arch in archs:
        cfg: dict = {"arch": arch, "d_sae": d_sae}
        if arch in ("topk", "batchtopk", "matryoshka"):
            cfg["k"] = k
        if arch in ("jumprelu", "relu", "gated"):  # penalty steered to the same L0
            cfg["target_l0"] = float(k)
        configs.append(cfg)
    return configs


def run_setting(name: str, toy_kwargs: dict, *, n_train: int, n_eval: int, d_sae: int, k: int,
                steps: int, batch_size: int, seed: int, archs: list[str],
                recipe: dict | None = None) -> dict:
    from cellsae import sae as S
    from cellsae.datasets.toy import toy_superposition

    t0 = time.perf_counter()
    toy = toy_superposition(n_samples=n_train + n_eval, seed=seed, **toy_kwargs)
    X, X_eval = toy.X[:n_train], toy.X[n_train:]
    true_eval = toy.codes[n_train:]
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    models = S.train_sweep(X, _configs(d_sae, k, toy_kwargs["d"], archs), n_steps=steps,
                           batch_size=batch_size, seed=seed, device="cpu", progress=False,
                           **(recipe or {}))
    t_train = time.perf_counter() - t0
    out: dict = {f"seconds_data_{name}": round(t_data, 2),
                 f"seconds_train_{name}": round(t_train, 2)}
    t0 = time.perf_counter()
    for model in models:
        report = S.evaluate(model, X_eval, true_dictionary=toy.dictionary,
                            true_codes=true_eval).to_dict()
        arch = model.arch
        out[f"mmcs_{name}_{arch}"] = report["mmcs_true_to_learned"]
        out[f"mmcs_learned_{name}_{arch}"] = report["mmcs_learned_to_true"]
        out[f"mcc_{name}_{arch}"] = report["mcc"]
        out[f"recovery_{name}_{arch}"] = report["recovery_at_0_9"]
        out[f"fvu_{name}_{arch}"] = report["fvu"]
        out[f"l0_{name}_{arch}"] = report["l0"]
        out[f"dead_{name}_{arch}"] = report["dead_fraction"]
    out[f"seconds_eval_{name}"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run, under a minute")
    parser.add_argument("--out", type=Path, help="also write the JSON figures here")
    parser.add_argument("--steps-easy", type=int)
    parser.add_argument("--steps-hard", type=int)
    parser.add_argument("--lr-hard", type=float, default=3e-3,
                        help="learning rate on the hard toy (full run; default 3e-3)")
    parser.add_argument("--only", choices=["easy", "hard"], help="run one setting only")
    parser.add_argument("--archs", default=",".join(ARCHS),
                        help="comma-separated architectures (default: all)")
    parser.add_argument("--archs-hard", help="architectures for the hard toy (default: --archs)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("CELLSAE_NO_PROGRESS", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        easy = dict(toy_kwargs=dict(n_features=128, d=64, n_active=3), n_train=10_000,
                    n_eval=2000, d_sae=256, k=3, steps=args.steps_easy or 100,
                    batch_size=512)
        hard = dict(toy_kwargs=dict(n_features=512, d=128, n_active=8, correlation=0.3,
                                    hierarchy=0.2), n_train=10_000, n_eval=2000, d_sae=1024,
                    k=8, steps=args.steps_hard or 50, batch_size=512)
    else:
        easy = dict(toy_kwargs=dict(n_features=512, d=256, n_active=5), n_train=200_000,
                    n_eval=10_000, d_sae=1024, k=5, steps=args.steps_easy or 1500,
                    batch_size=1024)
        # Hard toy recipe (measured): small batches and a high learning rate learn far more
        # per sample than the library default (2e-4·√(16384/d_sae) at batch 4096), which
        # is tuned for long runs on LLM activations; lr 1e-2 killed most latents.
        hard = dict(toy_kwargs=dict(n_features=4096, d=512, n_active=25, correlation=0.3,
                                    hierarchy=0.2), n_train=300_000, n_eval=10_000,
                    d_sae=4096, k=25, steps=args.steps_hard or 4000, batch_size=512,
                    recipe=dict(lr=args.lr_hard))
    figures: dict = {"quick": bool(args.quick), "torch_threads": torch.get_num_threads()}
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    archs_hard = [a.strip() for a in (args.archs_hard or args.archs).split(",") if a.strip()]
    for name, setting in (("easy", easy), ("hard", hard)):
        if args.only and args.only != name:
            continue
        figures[f"steps_{name}"] = setting["steps"]
        figures[f"batch_size_{name}"] = setting["batch_size"]
        figures[f"d_sae_{name}"] = setting["d_sae"]
        chosen = archs if name == "easy" else archs_hard
        figures[f"archs_{name}"] = ",".join(chosen)
        figures.update(run_setting(name, seed=args.seed, archs=chosen, **setting))
    for name, metric, key in (("easy", "mmcs", "mmcs_easy_best"),
                              ("easy", "recovery", "recovery_easy_best"),
                              ("hard", "mcc", "mcc_hard_best"),
                              ("hard", "mmcs", "mmcs_hard_best")):
        values = {a: figures.get(f"{metric}_{name}_{a}") for a in ARCHS}
        values = {a: v for a, v in values.items() if v is not None and np.isfinite(v)}
        if values:
            best = max(values, key=values.get)
            figures[key] = values[best]
            figures[f"{key}_arch"] = best
    figures = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}
    emit(figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
