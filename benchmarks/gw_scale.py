"""Speed and memory of cellsae's entropic GW vs POT, and of the landmark GW up to 100k.

Exact solvers run on identical float64 kNN-geodesic costs (k = 15, max-normalised) of a
synthetic branching manifold seen through two different non-linear maps (the true pairing
is the identity), all with ε = 5e-3:

* cellsae ``entropic_gw`` with its defaults (torch float32; from 1000 cells a rank-32
  first-order-corrected low-rank cross term, over-relaxed warm-started Sinkhorn with
  absorption of large scalings);
* POT ``ot.gromov.entropic_gromov_wasserstein`` with numpy float64 inputs ("pot");
* the same POT function with torch float32 tensors, POT's torch backend ("pot_torch").

POT runs with its defaults except an outer-iteration cap (``--pot-max-iter``, default 30,
the same for both backends): its own stopping rule (``||ΔT||_F < 1e-9``, checked every
10th iteration) is essentially never met, so uncapped it runs ``max_iter=1000``
iterations. Each POT run also has a time budget (``--pot-budget`` seconds of solver time):
when it is spent, the run stops after the current outer iteration and what it did is
reported (iterations, seconds per iteration, the objective of its last iterate) with
``pot_*_stopped_by_budget``; its speed-up is then a lower bound.

POT's outer iterations are timed by wrapping the Sinkhorn function its loop calls (its
maths is untouched). After each one the objective of POT's current iterate is evaluated
with the same certified low-rank formula cellsae uses (``O(n² r)``; that time is excluded
from POT's), which gives ``seconds_pot*_to_1pct``: POT's time until its iterate's objective first came
within 1 % of the best final objective of all solvers ("to the same objective": a second,
stricter speed-up, since POT cannot know that point itself; marked as a lower bound when
POT never got there within its cap or budget).

Final objectives are recomputed in float64 numpy on the same costs for every solver;
``objective_rel_diff_<n>`` is (max - min) / min over the solvers that finished (cap
reached or converged) or, when fewer than two finished, over the last iterates of all
(then flagged by ``objective_rel_diff_<n>_includes_budget_stopped``);
``objective_rel_diff_all_<n>`` always includes budget-stopped runs. Each solve runs in a
fresh subprocess so its wall time and peak RSS are its own.

The landmark solver runs on the raw point clouds at 10k/50k/100k (each in a subprocess,
peak RSS recorded); with ``--exact-10k`` the exact solver also runs at 10k (costs built in
float32) and both FOSCTTMs are reported.

    python benchmarks/gw_scale.py [--quick] [--out FILE] [--sizes 1000,2000,5000]
        [--pot-max 5000] [--pot-max-iter 30] [--pot-budget 200] [--threads N]
        [--scalable 10000,50000,100000] [--landmarks 2000] [--exact-10k]

``--threads N`` runs every solver process with N CPU threads (torch, and the BLAS/OpenMP
pools numpy uses, set before they load); without it each library uses its own default
(cellsae's solver: one thread; numpy's BLAS and POT's torch backend: all cores).

Quiet re-run of the 5k comparison, single-threaded both (about 5-7 minutes on 2 cores,
mostly POT; at most about 8.5 minutes, when both POT runs use their whole 200 s budget):

    python benchmarks/gw_scale.py --sizes 5000 --scalable none --threads 1

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
EVAL_RANK = 64


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 3-branch manifold (1-D branches with 2-D thickness) seen by two random maps."""
    rng = np.random.default_rng(seed)
    branch = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    t = rng.uniform(0, 1, n) ** 0.8
    ang = np.array([0.0, 2.2, 4.0])[branch]
    z = np.c_[
        t * np.cos(ang) * (1 + branch * 0.5),
        t * np.sin(ang) * (1 + branch * 0.3),
        0.08 * rng.normal(size=n),
        0.08 * rng.normal(size=n),
    ]
    z[:, 0] += 0.3 * t**2 * (branch == 1)

    def rmap(dim, s):
        r = np.random.default_rng(s)
        w1, w2 = r.normal(size=(4, 32)), r.normal(size=(32, dim)) / np.sqrt(32)
        return np.tanh(z @ w1) @ w2

    x = rmap(20, seed + 1) + 0.02 * rng.normal(size=(n, 20))
    y = rmap(15, seed + 2) + 0.02 * rng.normal(size=(n, 15))
    return x, y


class _Evaluator:
    """GW objective of any coupling on fixed costs in O(n² r), with its certified bound.

    The first-order-corrected low-rank formula of ``cellsae.align.solvers`` (the error of
    the objective is at most ``2 ||R1||_F ||R2||_F max(T 1) max(Tᵀ 1)``); exact dense
    products up to 2000 cells, where they are cheap.
    """

    def __init__(self, c1: np.ndarray, c2: np.ndarray):
        import torch

        from cellsae.align.solvers import _LowRank

        self.torch = torch
        self.c1 = torch.as_tensor(c1, dtype=torch.float32)
        self.c2 = torch.as_tensor(c2, dtype=torch.float32)
        self.exact = max(c1.shape[0], c2.shape[0]) <= 2000
        if not self.exact:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self.l1, self.l2 = _LowRank(self.c1, EVAL_RANK), _LowRank(self.c2, EVAL_RANK)
        self.sq1, self.sq2 = self.c1 * self.c1, self.c2 * self.c2

    def __call__(self, coupling) -> tuple[float, float]:
        torch = self.torch
        T = torch.as_tensor(
            np.asarray(coupling) if not isinstance(coupling, torch.Tensor) else coupling,
            dtype=torch.float32,
        )
        tp, tq = T.sum(1), T.sum(0)
        if self.exact:
            xt = float((self.c1 @ (T @ self.c2) * T).sum())
            return float(self.sq1 @ tp @ tp + self.sq2 @ tq @ tq) - 2 * xt, 0.0
        q1, m1, q2, m2 = self.l1.q, self.l1.m, self.l2.q, self.l2.m
        w2 = T @ q2
        y1 = (T.T @ q1).T
        a = (self.c1 @ w2 - q1 @ (m1 @ (y1 @ q2))) @ m2
        b = m1 @ (y1 @ self.c2)
        xt = float((a * w2).sum() + (b * y1).sum())
        obj = float(self.sq1 @ tp @ tp + self.sq2 @ tq @ tq) - 2 * xt
        bound = 2 * self.l1.resid * self.l2.resid * float(tp.max()) * float(tq.max())
        return obj, bound


class _Budget(Exception):
    pass


def _run_pot(
    kind: str, c1, c2, max_iter: int, budget: float, evaluate: _Evaluator
) -> tuple[dict, np.ndarray]:
    """POT's entropic GW with per-outer-iteration timing and a solver-time budget."""
    import warnings

    import ot
    import ot.gromov._bregman as bregman
    import torch

    if kind == "pot_torch":
        a1, a2 = torch.tensor(c1, dtype=torch.float32), torch.tensor(c2, dtype=torch.float32)
    else:
        a1, a2 = c1, c2
    orig = bregman.sinkhorn
    st = {"t_eval": 0.0, "times": [], "objs": [], "bounds": [], "T": None}
    t0 = time.perf_counter()

    def timed_sinkhorn(*args, **kwargs):
        plan = orig(*args, **kwargs)
        solver_time = time.perf_counter() - t0 - st["t_eval"]
        te = time.perf_counter()
        st["T"] = plan
        obj, bound = evaluate(plan)
        st["times"].append(solver_time)
        st["objs"].append(obj)
        st["bounds"].append(bound)
        st["t_eval"] += time.perf_counter() - te
        if solver_time > budget and len(st["times"]) < max_iter:
            raise _Budget
        return plan

    bregman.sinkhorn = timed_sinkhorn
    stopped = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            plan = ot.gromov.entropic_gromov_wasserstein(a1, a2, epsilon=EPSILON, max_iter=max_iter)
        except _Budget:
            plan, stopped = st["T"], True
        finally:
            bregman.sinkhorn = orig
    seconds = time.perf_counter() - t0 - st["t_eval"]
    plan = plan.numpy() if isinstance(plan, torch.Tensor) else np.asarray(plan)
    times, objs = st["times"], st["objs"]
    info = {
        "seconds": seconds,
        "n_iter": len(times),
        "seconds_per_iter": seconds / max(len(times), 1),
        "iter_times": [round(t, 3) for t in times],
        "objectives_lowrank": objs,
        "objective_bound": st["bounds"][-1],
        "stopped_by_budget": stopped,
        "seconds_eval_excluded": st["t_eval"],
        "warnings": sorted({str(w.message)[:80] for w in caught}),
    }
    return info, plan


def _child(args) -> None:
    import resource

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kind, n = args.child, args.n
    extra: dict = {}
    if kind in ("cellsae", "pot", "pot_torch"):
        c1 = np.load(Path(args.cost_dir) / f"c1_{n}.npy")
        c2 = np.load(Path(args.cost_dir) / f"c2_{n}.npy")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if kind == "cellsae":
            from cellsae.align import entropic_gw

            t0 = time.perf_counter()
            res = entropic_gw(c1, c2, epsilon=EPSILON, device="cpu", num_threads=args.threads)
            seconds = time.perf_counter() - t0
            plan = res.coupling
            extra = {
                "n_iter": res.params["n_iter"],
                "n_inner_iter": res.params["n_inner_iter"],
                "approx_rank": res.params["approx_rank"],
                "objective_reported": res.objective,
                "objective_bound": res.params["objective_error_bound"],
                "converged": res.converged,
            }
        else:
            evaluate = _Evaluator(c1, c2)  # its memory is not POT's: measure after it
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            info, plan = _run_pot(kind, c1, c2, args.pot_max_iter, args.pot_budget, evaluate)
            seconds = info.pop("seconds")
            extra = info
        np.save(args.child_out, np.asarray(plan, dtype=np.float64))
    else:  # "landmark" or "exact": on the raw point clouds, FOSCTTM computed here
        from cellsae.align import entropic_gw, knn_geodesic_cost, landmark_gw
        from cellsae.metrics.alignment import foscttm

        x, y = make_data(n)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        if kind == "landmark":
            res = landmark_gw(
                x,
                y,
                n_landmarks=args.landmarks,
                cost_kwargs={"n_neighbors": K},
                epsilon=EPSILON,
                device="cpu",
                num_threads=args.threads,
            )
            extra = {
                "seconds_quantize": res.params["seconds_quantize"],
                "anchor_iters": res.params["anchor_params"]["n_iter"],
            }
        else:
            c1, _ = knn_geodesic_cost(x, n_neighbors=K, dtype=np.float32)
            c2, _ = knn_geodesic_cost(y, n_neighbors=K, dtype=np.float32)
            extra = {"seconds_costs": time.perf_counter() - t0}
            res = entropic_gw(c1, c2, epsilon=EPSILON, device="cpu", num_threads=args.threads)
            del c1, c2
            extra.update(
                n_iter=res.params["n_iter"],
                objective_reported=res.objective,
                objective_bound=res.params["objective_error_bound"],
            )
        seconds = time.perf_counter() - t0
        proj = res.barycentric_projection(y)
        sub = slice(0, min(n, 20000))  # FOSCTTM is O(n²): on the first 20k cells beyond that
        extra["foscttm"] = foscttm(proj[sub], y[sub])
        extra["foscttm_cells"] = int(min(n, 20000))
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"seconds": seconds, "peak_extra_mb": peak_mb, **extra}))


def run_child(kind, args, n, timeout) -> tuple[dict, np.ndarray | None]:
    out = Path(args.cost_dir) / f"T_{kind}_{n}.npy"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--cost-dir",
        args.cost_dir,
        "--n",
        str(n),
        "--child-out",
        str(out),
        "--pot-max-iter",
        str(args.pot_max_iter),
        "--pot-budget",
        str(args.pot_budget),
        "--landmarks",
        str(args.landmarks),
    ]
    env = dict(os.environ)
    if args.threads:
        cmd += ["--threads", str(args.threads)]
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}, None
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}, None
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info, (np.load(out) if out.exists() else None)


def _tag(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def compare_exact(n: int, args, fig: dict) -> None:
    """cellsae vs POT (numpy, torch) on identical costs at n cells per side."""
    from cellsae.align import gw_objective, knn_geodesic_cost
    from cellsae.align.result import GWResult
    from cellsae.metrics.alignment import foscttm

    x, y = make_data(n)
    t0 = time.perf_counter()
    c1, _ = knn_geodesic_cost(x, n_neighbors=K)
    c2, _ = knn_geodesic_cost(y, n_neighbors=K)
    tag = _tag(n)
    fig[f"seconds_costs_{tag}"] = time.perf_counter() - t0
    np.save(Path(args.cost_dir) / f"c1_{n}.npy", c1)
    np.save(Path(args.cost_dir) / f"c2_{n}.npy", c2)
    objs = {}
    secs = {}
    for kind in ("cellsae", "pot", "pot_torch"):
        if kind != "cellsae" and n > args.pot_max:
            continue
        info, plan = run_child(kind, args, n, args.pot_budget * 2 + 600)
        if plan is None:
            logging.warning("%s at n=%d failed: %s", kind, n, info.get("error"))
            fig[f"error_{kind}_{tag}"] = info.get("error")
            continue
        obj = gw_objective(c1, c2, plan)
        mass = float(plan.sum())
        fos = (
            foscttm(
                GWResult(coupling=plan, objective=obj, converged=True).barycentric_projection(y), y
            )
            if np.isfinite(plan).all() and mass > 0
            else float("nan")
        )
        fig[f"seconds_{kind}_{tag}"] = info["seconds"]
        fig[f"peak_mb_{kind}_{tag}"] = info["peak_extra_mb"]
        fig[f"objective_{kind}_{tag}"] = obj
        fig[f"mass_{kind}_{tag}"] = mass
        fig[f"foscttm_{kind}_{tag}"] = fos
        fig[f"iters_{kind}_{tag}"] = info["n_iter"]
        if kind == "cellsae":
            fig[f"objective_bound_cellsae_{tag}"] = info["objective_bound"]
            fig[f"objective_reported_cellsae_{tag}"] = info["objective_reported"]
            fig[f"inner_iters_cellsae_{tag}"] = info["n_inner_iter"]
            fig[f"approx_rank_cellsae_{tag}"] = info["approx_rank"]
        else:
            for key in ("seconds_per_iter", "stopped_by_budget", "seconds_eval_excluded"):
                fig[f"{key}_{kind}_{tag}"] = info[key]
            if info["warnings"]:
                fig[f"warnings_{kind}_{tag}"] = "; ".join(info["warnings"])
        if abs(mass - 1) < 1e-3:
            objs[kind] = obj
            secs[kind] = info
        else:
            fig[f"note_{kind}_{tag}"] = f"coupling mass {mass:.4g} != 1: left out of the ratios"
        logging.info(
            "n=%d %s: %.1fs objective %.6g mass %.4f foscttm %.4f %s",
            n,
            kind,
            info["seconds"],
            obj,
            mass,
            fos,
            {
                k: v
                for k, v in info.items()
                if k not in ("seconds", "iter_times", "objectives_lowrank")
            },
        )
    # objective agreement among the runs that finished (a run stopped by its time budget
    # is reported, but its unfinished iterate is not held against the others)
    done = {k: v for k, v in objs.items() if not secs[k].get("stopped_by_budget", False)}
    if len(done) < 2 and len(objs) > 1:
        # fewer than two finished (POT stopped by its budget, as at 5k): compare the last
        # iterates of all, and say so
        done = objs
        fig[f"objective_rel_diff_{tag}_includes_budget_stopped"] = True
    if len(done) > 1:
        vals = list(done.values())
        fig[f"objective_rel_diff_{tag}"] = (max(vals) - min(vals)) / min(vals)
        fig[f"objective_rel_diff_solvers_{tag}"] = ",".join(done)
    if len(objs) > 1:
        vals = list(objs.values())
        fig[f"objective_rel_diff_all_{tag}"] = (max(vals) - min(vals)) / min(vals)
    if "cellsae" in secs:
        ours = secs["cellsae"]["seconds"]
        best = min(objs.values())
        for kind in ("pot", "pot_torch"):
            if kind not in secs:
                continue
            sfx = "" if kind == "pot" else "_torch"
            ref = secs[kind]
            fig[f"speedup_vs_pot{sfx}_{tag}"] = ref["seconds"] / ours
            fig[f"objective_rel_diff{sfx}_vs_cellsae_{tag}"] = (
                abs(objs["cellsae"] - objs[kind]) / objs[kind]
            )
            if ref["stopped_by_budget"]:
                fig[f"speedup_vs_pot{sfx}_{tag}_is_lower_bound"] = True
            # POT's time until its iterate's objective first came within 1 % of the best
            # final objective of all solvers ("to the same objective")
            hit = [i for i, o in enumerate(ref["objectives_lowrank"]) if o <= 1.01 * best]
            if hit:
                fig[f"iters_{kind}_to_1pct_{tag}"] = hit[0] + 1
                fig[f"seconds_{kind}_to_1pct_{tag}"] = ref["iter_times"][hit[0]]
                fig[f"speedup_vs_pot{sfx}_to_1pct_{tag}"] = ref["iter_times"][hit[0]] / ours
            else:
                fig[f"iters_{kind}_to_1pct_{tag}"] = None
                fig[f"speedup_vs_pot{sfx}_to_1pct_{tag}"] = ref["seconds"] / ours
                fig[f"speedup_vs_pot{sfx}_to_1pct_{tag}_is_lower_bound"] = True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", default=None, help="exact-solver sizes (default 1000,2000,5000)")
    ap.add_argument("--pot-max", type=int, default=5000, help="largest size POT runs at")
    ap.add_argument(
        "--pot-max-iter",
        type=int,
        default=30,
        help="cap on POT's outer iterations, both backends (default 30)",
    )
    ap.add_argument(
        "--pot-budget",
        type=float,
        default=200.0,
        help="seconds of solver time per POT run before it is stopped (default 200)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of every solver process (default: each library's own)",
    )
    ap.add_argument("--scalable", default=None, help="landmark sizes (default 10000,50000,100000)")
    ap.add_argument("--landmarks", type=int, default=None, help="anchors per side (default 2000)")
    ap.add_argument("--exact-10k", action="store_true", help="also run the exact solver at 10k")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cost-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.landmarks is None:
        args.landmarks = 1000 if args.quick else 2000
    if args.child:
        _child(args)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        import ot  # noqa: F401
    except ImportError:
        print(
            "POT is not installed: the reference is missing, no ratio can be measured",
            file=sys.stderr,
        )
        return 2
    sizes_arg = args.sizes or ("500" if args.quick else "1000,2000,5000")
    sizes = [] if sizes_arg == "none" else [int(s) for s in sizes_arg.split(",")]
    scal_arg = args.scalable or ("5000" if args.quick else "10000,50000,100000")
    scalable = [] if scal_arg == "none" else [int(s) for s in scal_arg.split(",")]
    fig: dict = {
        "quick": bool(args.quick),
        "epsilon": EPSILON,
        "n_neighbors": K,
        "pot_max_iter": args.pot_max_iter,
        "pot_budget_s": args.pot_budget,
        "cpu_threads": os.cpu_count(),
        "solver_threads": args.threads,
        "load_avg_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        args.cost_dir = tmp
        for n in sizes:
            compare_exact(n, args, fig)
        for n in scalable:
            tag = _tag(n)
            info, _ = run_child("landmark", args, n, 1800)
            if "error" in info:
                logging.warning("landmark at n=%d failed: %s", n, info["error"])
                fig[f"error_scalable_{tag}"] = info["error"]
                continue
            fig[f"seconds_scalable_{tag}"] = info["seconds"]
            fig[f"peak_mb_scalable_{tag}"] = info["peak_extra_mb"]
            fig[f"foscttm_scalable_{tag}"] = info["foscttm"]
            fig[f"seconds_quantize_scalable_{tag}"] = info["seconds_quantize"]
            logging.info(
                "landmark n=%d: %.1fs foscttm %.4f peak +%.0f MB",
                n,
                info["seconds"],
                info["foscttm"],
                info["peak_extra_mb"],
            )
            if n == 10000 and args.exact_10k:
                info, _ = run_child("exact", args, n, 3600)
                if "error" in info:
                    fig["error_exact_10k"] = info["error"]
                    continue
                fig["seconds_exact_10k"] = info["seconds"]
                fig["seconds_costs_exact_10k"] = info["seconds_costs"]
                fig["peak_mb_exact_10k"] = info["peak_extra_mb"]
                fig["foscttm_exact_10k"] = info["foscttm"]
                fig["foscttm_gap_scalable_vs_exact_10k"] = (
                    fig["foscttm_scalable_10k"] - fig["foscttm_exact_10k"]
                )
                logging.info("exact n=10000: %.1fs foscttm %.4f", info["seconds"], info["foscttm"])
    fig["load_avg_end"] = os.getloadavg()[0]
    emit(fig, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
