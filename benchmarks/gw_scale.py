"""Speed and memory of cellsae's entropic GW vs POT, and of the landmark GW up to 100k.

Exact solvers run on identical float64 kNN-geodesic costs of a synthetic branching
manifold seen through two different non-linear maps (the true pairing is the identity):

* cellsae ``entropic_gw`` (torch float32, ε-annealing, warm-started Sinkhorn, a low-rank
  phase before exact polishing for n >= 2000);
* POT ``ot.gromov.entropic_gromov_wasserstein`` with numpy float64 inputs;
* the same POT function with torch float32 tensors (POT's torch backend).

POT runs with its defaults except ``max_iter=100`` outer iterations (its stopping rule,
``||ΔT||_F < 1e-9`` checked every 10th iteration, is rarely met, and never in float32);
the number of error checks it made is reported.

All three use the same ε; objectives are recomputed in float64 on the same costs. Each
solve runs in a fresh subprocess so its wall time and peak RSS are its own. The landmark
solver runs on the raw point clouds at 10k/50k/100k; at 10k its FOSCTTM is compared with
the exact solver's when ``--exact-10k`` is given (slow on CPU).

    python benchmarks/gw_scale.py [--quick] [--out FILE] [--sizes 1000,2000,5000]
        [--pot-max 5000] [--scalable 10000,50000,100000] [--exact-10k]

Machine note: timings on a shared 2-core machine are noisy; all solvers in one run share
the same conditions. Last line printed: one JSON object of flat figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit  # benchmarks/_common.py, beside this script

EPSILON = 5e-3
K = 15
# POT's tol (1e-9 on ||ΔT||_F) is never met in float32: cap its outer loop
POT_MAX_ITER = int(os.environ.get("GW_SCALE_POT_MAX_ITER", "100"))  # --quick: 30


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 3-branch manifold (1-D branches with 2-D thickness) seen by two random maps."""
    rng = np.random.default_rng(seed)
    branch = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    t = rng.uniform(0, 1, n) ** 0.8
    ang = np.array([0.0, 2.2, 4.0])[branch]
    z = np.c_[t * np.cos(ang) * (1 + branch * 0.5), t * np.sin(ang) * (1 + branch * 0.3),
              0.08 * rng.normal(size=n), 0.08 * rng.normal(size=n)]
    z[:, 0] += 0.3 * t**2 * (branch == 1)

    def rmap(dim, s):
        r = np.random.default_rng(s)
        w1, w2 = r.normal(size=(4, 32)), r.normal(size=(32, dim)) / np.sqrt(32)
        return np.tanh(z @ w1) @ w2

    x = rmap(20, seed + 1) + 0.02 * rng.normal(size=(n, 20))
    y = rmap(15, seed + 2) + 0.02 * rng.normal(size=(n, 15))
    return x, y


def _child(kind: str, cost_dir: str, n: int, out: str, rank: int) -> None:
    import resource

    import torch

    c1 = np.load(Path(cost_dir) / f"c1_{n}.npy")
    c2 = np.load(Path(cost_dir) / f"c2_{n}.npy")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    info: dict = {}
    if kind == "cellsae":
        from cellsae.align import entropic_gw

        res = entropic_gw(c1, c2, epsilon=EPSILON, device="cpu",
                          approx_rank=rank if rank > 0 else None)
        coupling = res.coupling
        info = {"n_iter": res.params["n_iter"], "n_exact_iter": res.params["n_exact_iter"],
                "converged": res.converged}
    else:
        import warnings

        import ot

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if kind == "pot":
                coupling, log = ot.gromov.entropic_gromov_wasserstein(
                    c1, c2, epsilon=EPSILON, log=True, max_iter=POT_MAX_ITER)
            else:
                t1 = torch.tensor(c1, dtype=torch.float32)
                t2 = torch.tensor(c2, dtype=torch.float32)
                coupling, log = ot.gromov.entropic_gromov_wasserstein(
                    t1, t2, epsilon=EPSILON, log=True, max_iter=POT_MAX_ITER)
                coupling = coupling.numpy()
        # POT checks its error every 10th iteration: len(err) checks ~ 10 * len(err) iterations
        info = {"n_iter_checks": len(log["err"]), "warnings": sorted({str(w.message)[:80]
                                                                     for w in caught})}
    seconds = time.perf_counter() - t0
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    np.save(out, np.asarray(coupling, dtype=np.float64))
    print(json.dumps({"seconds": seconds, "peak_extra_mb": peak_mb, **info}))


def run_child(kind, cost_dir, n, rank, timeout, pot_max_iter) -> tuple[dict, np.ndarray | None]:
    out = Path(cost_dir) / f"T_{kind}_{n}.npy"
    cmd = [sys.executable, __file__, "--child", kind, "--cost-dir", cost_dir, "--n", str(n),
           "--child-out", str(out), "--rank", str(rank), "--pot-max-iter", str(pot_max_iter)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}, None
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}, None
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", default=None)
    ap.add_argument("--pot-max", type=int, default=5000)
    ap.add_argument("--scalable", default=None)
    ap.add_argument("--exact-10k", action="store_true")
    ap.add_argument("--pot-max-iter", type=int, default=None,
                    help="cap on POT's outer iterations (default 100, 30 with --quick)")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cost-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        global POT_MAX_ITER
        POT_MAX_ITER = args.pot_max_iter
        _child(args.child, args.cost_dir, args.n, args.child_out, args.rank)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        import ot  # noqa: F401
    except ImportError:
        print("POT is not installed: the reference is missing, no ratio can be measured",
              file=sys.stderr)
        return 2
    from cellsae.align import gw_objective, knn_geodesic_cost, landmark_gw
    from cellsae.align.result import GWResult
    from cellsae.metrics.alignment import foscttm

    sizes_arg = args.sizes or ("500" if args.quick else "1000,2000,5000")
    sizes = [] if sizes_arg == "none" else [int(s) for s in sizes_arg.split(",")]
    scal_arg = args.scalable or ("5000" if args.quick else "10000,50000,100000")
    scalable = [] if scal_arg == "none" else [int(s) for s in scal_arg.split(",")]
    pot_max_iter = args.pot_max_iter or (30 if args.quick else POT_MAX_ITER)
    fig: dict = {"quick": bool(args.quick), "epsilon": EPSILON, "n_neighbors": K,
                 "pot_max_iter": pot_max_iter,
                 "cpu_threads": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            x, y = make_data(n)
            t0 = time.perf_counter()
            c1, _ = knn_geodesic_cost(x, n_neighbors=K)
            c2, _ = knn_geodesic_cost(y, n_neighbors=K)
            fig[f"seconds_costs_{n}"] = time.perf_counter() - t0
            np.save(Path(tmp) / f"c1_{n}.npy", c1)
            np.save(Path(tmp) / f"c2_{n}.npy", c2)
            tag = f"{n // 1000}k" if n % 1000 == 0 else str(n)
            rank = 100 if n >= 2000 else 0
            results = {}
            for kind in ("cellsae", "pot", "pot_torch"):
                if kind != "cellsae" and n > args.pot_max:
                    continue
                info, coupling = run_child(kind, tmp, n, rank, args.timeout, pot_max_iter)
                if coupling is None:
                    logging.warning("%s at n=%d failed: %s", kind, n, info.get("error"))
                    fig[f"error_{kind}_{tag}"] = info.get("error")
                    continue
                obj = gw_objective(c1, c2, coupling)
                mass = float(coupling.sum())
                fos = foscttm(GWResult(coupling=coupling, objective=obj, converged=True)
                              .barycentric_projection(y), y) if np.isfinite(coupling).all() \
                    else float("nan")
                name = {"cellsae": "cellsae", "pot": "pot", "pot_torch": "pot_torch"}[kind]
                fig[f"seconds_{name}_{tag}"] = info["seconds"]
                fig[f"peak_mb_{name}_{tag}"] = info["peak_extra_mb"]
                fig[f"objective_{name}_{tag}"] = obj
                fig[f"mass_{name}_{tag}"] = mass
                fig[f"foscttm_{name}_{tag}"] = fos
                if kind != "cellsae":
                    fig[f"iters_{name}_{tag}"] = 10 * info["n_iter_checks"]
                if kind == "cellsae":
                    fig[f"iters_cellsae_{tag}"] = info["n_iter"]
                    fig[f"exact_iters_cellsae_{tag}"] = info["n_exact_iter"]
                results[kind] = (info, obj, mass)
                logging.info("n=%d %s: %.1fs objective %.6g mass %.4f foscttm %.4f %s", n, kind,
                             info["seconds"], obj, mass, fos,
                             {k: v for k, v in info.items() if k not in ("seconds",)})
            if "cellsae" in results:
                ours = results["cellsae"]
                for kind, key in (("pot", "pot"), ("pot_torch", "pot_torch")):
                    if kind in results and abs(results[kind][2] - 1) < 1e-3:
                        ref = results[kind]
                        sfx = "" if kind == "pot" else "_torch"
                        fig[f"speedup_vs_pot{sfx}_{tag}"] = ref[0]["seconds"] / ours[0]["seconds"]
                        fig[f"objective_rel_diff{sfx}_{tag}"] = abs(ours[1] - ref[1]) / abs(ref[1])
                    elif kind in results:
                        fig[f"note_{key}_{tag}"] = ("POT's coupling lost its mass (float32 "
                                                    "Sinkhorn underflow); no ratio reported")
        # scalable solver
        for n in scalable:
            x, y = make_data(n)
            tag = f"{n // 1000}k"
            t0 = time.perf_counter()
            res = landmark_gw(x, y, n_landmarks=1000 if args.quick else 2000,
                              cost_kwargs={"n_neighbors": K}, epsilon=EPSILON, device="cpu")
            fig[f"seconds_scalable_{tag}"] = time.perf_counter() - t0
            proj = res.barycentric_projection(y)
            fig[f"foscttm_scalable_{tag}"] = foscttm(proj, y) if n <= 20000 else \
                foscttm(proj[:20000], y[:20000])
            logging.info("landmark n=%d: %.1fs foscttm %.4f", n, fig[f"seconds_scalable_{tag}"],
                         fig[f"foscttm_scalable_{tag}"])
            if n == 10000 and args.exact_10k:
                from cellsae.align import entropic_gw

                c1, _ = knn_geodesic_cost(x, n_neighbors=K, dtype=np.float32)
                c2, _ = knn_geodesic_cost(y, n_neighbors=K, dtype=np.float32)
                t0 = time.perf_counter()
                ex = entropic_gw(c1, c2, epsilon=EPSILON, approx_rank=100, device="auto")
                fig["seconds_exact_10k"] = time.perf_counter() - t0
                fig["foscttm_exact_10k"] = foscttm(ex.barycentric_projection(y), y)
                fig["foscttm_gap_scalable_vs_exact_10k"] = (fig["foscttm_scalable_10k"]
                                                            - fig["foscttm_exact_10k"])
    emit(fig, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
