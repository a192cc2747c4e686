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

Hard-toy recipe: d_sae = 4096 (the number of true features), k = 64 (the TopK family; the
penalty architectures get ``target_l0=64``), reconstruction errors weighted per sample by
‖x‖^-3 (``sample_weight_power=3``), 300k training samples, batch 512, lr 3e-3, 4000 steps
(2M samples, about 7 epochs), AuxK on. The full run is long: each architecture costs about
0.1 s per step on a quiet 2-core machine, so all six take on the order of 40 minutes
(``--archs-hard`` picks a subset, ``--steps-hard`` shortens it; ``--k-hard 25
--weight-power-hard 0`` gives the recipe of earlier sessions).

Two MCCs are reported. ``mcc_*`` (the issue's definition) correlates each true feature's
activations with its Hungarian-matched latent's activations, so it scores the encoder as
well as the dictionary; ``mcc_decoder_*`` is SynthSAEBench's MCC (Chanin et al. 2026;
``sae_lens.synthetic.evals.mean_correlation_coefficient``): the Hungarian-matched mean
|cosine| between decoder atoms and true feature directions, the metric behind the
published 0.79 (Matryoshka BatchTopK) / 0.76 (BatchTopK) / 0.60 (L1) that the issue cites.

Why the recipe changed (session of 2026-11-26, TopK, seed 0, 200k training samples and
1000 steps of 512 unless said, 1 thread, under load):

* Crowded samples dominated the loss. With 16 shared factors at correlation 0.3 the
  number of active features per sample varies from 0 to ~145 (sd 15), and a sample's
  squared norm grows with that number. A plain squared error is dominated by the crowded
  samples, where 25 slots cannot hold their ~100 features: spare latents learn the
  factor-wide mixtures left in those residuals (at 800 steps half the alive latents had
  no true feature above cosine 0.38) and the rare features, which fire mostly in crowded
  samples, are not learned. Weighting each sample's error by ‖x‖^-p:
  MCC / decoder MCC 0.396 / – (p 0, k 25) → 0.544 / 0.671 (p 2, k 25); with k 40:
  0.424 / 0.508 (p 0) → 0.620 / 0.728 (p 2), 0.628 / 0.743 (p 3), 0.588 / 0.707 (p 4);
  p 3 with k 50: 0.644 / 0.754, with k 64: 0.657 / 0.761.
* At full length (300k samples, 4000 steps) p 2, k 40 gave MCC 0.688, decoder MCC 0.818,
  MMCS 0.855, recovery@0.9 0.691, FVU 0.200 (the old recipe: MCC 0.448 at 4000 steps,
  0.463 at 6000).
* Unchanged by the weights: BatchTopK is far behind TopK here (p 3, k 50: MCC 0.406 vs
  0.644); a dead window of 20k samples with k_aux 25 (0.403 vs 0.396) and resampling at
  encoder scale 1 (0.391) did not help the old recipe either.

What limited the hard MCC before the weights (the old recipe, k 25, plain squared error;
figures under load on the shared 2-core machine):
* The ceiling. An SAE whose encoder and decoder are the true dictionary scores MCC 0.808
  (TopK 25; BatchTopK at L0 25: 0.783), reported as ``mcc_oracle_hard``: the interference
  of ~25 co-active features (sd 0.23 on a pre-activation; active counts vary from 0 to
  136 per sample because of the shared factors) hides weak activations. Training only
  the encoder of that SAE (decoder fixed to the truth, 400 steps of 512, lr 1e-3) reaches
  0.851, so 0.80 needs an almost perfectly learned dictionary.
* Learning is ordered by feature frequency and stalls. At 200k samples 27 % of the most
  frequent fifth of the features have an atom at cosine > 0.9 and none of the others.
  Along one run (lr 3e-3, 6000 steps of 512, checkpoints at constant lr): MCC 0.374 /
  MMCS 0.52 at 0.5M samples, 0.423 / 0.61 at 1.0M, 0.433 / 0.63 at 1.5M, 0.438 / 0.64 at
  2.0M, and 0.463 / 0.67 (FVU 0.316) at the end, 3.07M after the lr decay. At the end
  82 % of the most frequent fifth but 5 % of the rarest fifth are recovered (cosine >
  0.9; matched atoms are exact, median best cosine 0.99), children of the hierarchy 4 %
  against 50 % of the roots (absorbed into their parents' latents, or too rare), and
  1,440 of the 4,096 latents (35 %) had not fired for 100k samples; 1,880 atoms have no
  true feature above cosine 0.5. Silent latents are the largest loss, and neither the
  AuxK loss nor resampling brings them back: with a 20k-sample dead window (default here
  307k) MCC at 1.0M samples was 0.430 (vs 0.423), 41 % of latents dead on held-out data;
  resampling every 250 steps on top gave 0.396 with 50 % dead.
* Tried at 200k samples without gain over batch 512, lr 3e-3 (MCC 0.243): batch 128
  (0.173, 60 % dead), batch 2048 with lr 6e-3 (0.192), k annealed from 100 to 25 over
  half the run (0.201); d_sae 8192 gave 0.299 at twice the compute (about what 4096
  latents reach with the same compute). A MOD-style alternating least-squares refit of
  the decoder reached 0.295 at 200k samples, not a step change either.
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
        out[f"mcc_decoder_{name}_{arch}"] = report["mcc_decoder"]
        out[f"recovery_{name}_{arch}"] = report["recovery_at_0_9"]
        out[f"fvu_{name}_{arch}"] = report["fvu"]
        out[f"l0_{name}_{arch}"] = report["l0"]
        out[f"dead_{name}_{arch}"] = report["dead_fraction"]
    # The true dictionary, TopK at the true L0 (the best k for it; larger k lowers it).
    out[f"mcc_oracle_{name}"] = _oracle_mcc(toy.dictionary, X_eval, true_eval,
                                            int(round(toy_kwargs["n_active"])))
    out[f"seconds_eval_{name}"] = round(time.perf_counter() - t0, 2)
    return out


def _oracle_mcc(dictionary, X_eval, true_eval, k: int) -> float:
    """MCC of an SAE whose encoder and decoder are the true dictionary (TopK, no bias).

    A reference for the MCC figures: what a perfectly learned dictionary gives with the
    untrained encoder ``W_enc = W_dec`` (training the encoder of such an SAE adds a few
    hundredths, see the module docstring).
    """
    import torch

    from cellsae.metrics.sae import mcc

    pre = torch.from_numpy(np.asarray(X_eval, dtype=np.float32)) @ \
        torch.from_numpy(np.asarray(dictionary, dtype=np.float32)).T
    values, idx = pre.topk(k, dim=1)
    codes = torch.zeros_like(pre).scatter_(1, idx, torch.relu(values))
    return mcc(codes.numpy(), true_eval)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run, under a minute")
    parser.add_argument("--out", type=Path, help="also write the JSON figures here")
    parser.add_argument("--steps-easy", type=int)
    parser.add_argument("--steps-hard", type=int)
    parser.add_argument("--lr-hard", type=float, default=3e-3,
                        help="learning rate on the hard toy (full run; default 3e-3)")
    parser.add_argument("--k-hard", type=int, default=64,
                        help="k (TopK family) / target L0 (penalty archs) on the hard toy "
                             "(full run; default 64, the true L0 is 25)")
    parser.add_argument("--weight-power-hard", type=float, default=3.0,
                        help="sample_weight_power on the hard toy (full run; default 3, "
                             "0 = plain squared error)")
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
                    k=8, steps=args.steps_hard or 50, batch_size=512,
                    recipe=dict(sample_weight_power=args.weight_power_hard))
    else:
        easy = dict(toy_kwargs=dict(n_features=512, d=256, n_active=5), n_train=200_000,
                    n_eval=10_000, d_sae=1024, k=5, steps=args.steps_easy or 1500,
                    batch_size=1024)
        # Hard toy recipe (measured): small batches and a high learning rate learn far more
        # per sample than the library default (2e-4·√(16384/d_sae) at batch 4096), which
        # is tuned for long runs on LLM activations; lr 1e-2 killed most latents.
        hard = dict(toy_kwargs=dict(n_features=4096, d=512, n_active=25, correlation=0.3,
                                    hierarchy=0.2), n_train=300_000, n_eval=10_000,
                    d_sae=4096, k=args.k_hard, steps=args.steps_hard or 4000, batch_size=512,
                    recipe=dict(lr=args.lr_hard, sample_weight_power=args.weight_power_hard))
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
                              ("hard", "mcc_decoder", "mcc_decoder_hard_best"),
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
