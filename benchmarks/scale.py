"""Scale and reliability benchmark: streamed SAE training, large analysis, DDP, resume, bad input.

Figures (flat JSON, last line printed):

- ``sae_stream_tokens`` / ``sae_stream_store_gb`` / ``sae_stream_tokens_per_s`` /
  ``sae_stream_peak_rss_gb``: one TopK SAE (d_in 128, 2048 latents, k 32) trained for one
  pass over a chunked float16 zarr token store streamed from disk (10M tokens; ``--quick``
  100k),
  run in a child process whose peak resident memory is reported; ``sae_stream_device``.
- ``analysis_cells`` / ``analysis_seconds`` / ``analysis_peak_rss_gb``: analysis of
  SAE-like sparse codes of 100k cells (``--quick`` 3k) with ``cellsae.tl``
  (``latents_anndata`` → ``pca_latents`` → ``cluster_latents``, i.e. kNN graph + Leiden),
  in a child process; per-step seconds as ``analysis_seconds_<step>``.
- ``ddp_equivalent`` / ``ddp_max_abs_diff``: SAE training under ``torchrun`` with 2 gloo
  processes vs 1 process (TopK, same global batch); equivalent when every weight agrees
  within 1e-4 relative / 1e-5 absolute.
- ``resume_equivalent`` / ``resume_max_abs_diff``: SAE training in a child process killed
  with SIGKILL after its second checkpoint, resumed here, vs an uninterrupted run (same
  seed); equivalent when bit-identical.
- ``bad_inputs_tried`` / ``bad_inputs_handled``: the cases of ``tests/test_bad_inputs.py``
  (corrupt/truncated files, NaN/Inf, wrong dtypes, empty or duplicated names, non-UTF-8,
  enormous values, path traversal, ... across the public entry points); handled means the
  documented error (or recorded skip) and no output or temporary file left behind.

Usage::

    python benchmarks/scale.py --quick             # < 60 s on a quiet 2-core machine
    python benchmarks/scale.py --out scale.json    # 10M tokens, 100k cells
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from _common import emit  # benchmarks/_common.py, beside this script

logger = logging.getLogger("scale")
ROOT = Path(__file__).resolve().parent.parent


def _child_env() -> dict:
    return {**os.environ, "CELLSAE_NO_PROGRESS": "1", "PYTHONWARNINGS": "ignore"}


def _run_child(code: str, *args: str, timeout: float = 3000) -> dict:
    """Run python code in a child; its last stdout line is a JSON object."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=_child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- 1. streamed SAE training ------------------------------------------------------------------


def write_token_store(path: Path, n_tokens: int, d: int, *, seed: int = 0,
                      block: int = 262_144) -> float:
    """A chunked float16 zarr array of sparse superposition tokens (d features, 4d true
    directions), written block by block (bounded memory). Returns its size in GB.

    zarr rather than an .npy memmap: pages of a memmap that were read count towards the
    resident set until unmapped, which would blur the streaming memory figure."""
    import zarr

    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(4 * d, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    out = zarr.open_array(str(path), mode="w", shape=(n_tokens, d), chunks=(65_536, d),
                          dtype="float16")
    for start in range(0, n_tokens, block):
        n = min(block, n_tokens - start)
        idx = rng.integers(0, len(atoms), size=(n, 8))
        weights = rng.exponential(1.0, size=(n, 8)).astype(np.float32)
        x = np.einsum("nk,nkd->nd", weights, atoms[idx])
        x += 0.05 * rng.standard_normal((n, d), dtype=np.float32)
        out[start:start + n] = x.astype(np.float16)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


SAE_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from cellsae.sae import train
    path, n_tokens, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    t0 = time.perf_counter()
    sae = train(path, arch="topk", d_sae=2048, k=32, batch_size=batch,
                n_steps=n_tokens // batch, chunk_size=65536, buffer_chunks=4, seed=0,
                device="auto", progress=False)
    seconds = time.perf_counter() - t0
    # VmHWM is this process's own peak; ru_maxrss keeps the parent's high-water mark
    # across fork + exec on Linux, so it can report the parent's memory instead
    rss = (next((int(line.split()[1]) for line in open("/proc/self/status")
                 if line.startswith("VmHWM")), 0)
           if sys.platform.startswith("linux")
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1e6  # KiB -> GB
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(json.dumps({"seconds": seconds, "train_seconds": sae.train_info["train_seconds"],
                      "tokens": (n_tokens // batch) * batch, "peak_rss_gb": rss,
                      "fvu": sae.train_info["final"]["fvu"], "device": device}))
""")


def sae_stream(tmp: Path, n_tokens: int, d: int = 128, batch: int = 4096) -> dict:
    store = tmp / "tokens.zarr"
    t0 = time.perf_counter()
    size_gb = write_token_store(store, n_tokens, d)
    logger.info("token store: %d x %d float16, %.2f GB written in %.1f s", n_tokens, d,
                size_gb, time.perf_counter() - t0)
    res = _run_child(SAE_CHILD, str(store), str(n_tokens), str(batch))
    shutil.rmtree(store)
    return {"sae_stream_tokens": res["tokens"], "sae_stream_store_gb": round(size_gb, 3),
            "sae_stream_tokens_per_s": round(res["tokens"] / res["train_seconds"], 1),
            "sae_stream_seconds": round(res["seconds"], 2),
            "sae_stream_peak_rss_gb": round(res["peak_rss_gb"], 3),
            "sae_stream_fvu": round(float(res["fvu"]), 4), "sae_stream_device": res["device"]}


# -- 2. analysis of many cells -------------------------------------------------------------------

ANALYSIS_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from scipy import sparse
    from cellsae import tl
    n, n_latents, k = int(sys.argv[1]), 1024, 16
    rng = np.random.default_rng(0)
    # SAE-like codes: 12 latents from one of 20 overlapping programmes (programme p uses
    # latents 40p..40p+79) and 4 from anywhere, so the kNN graph is connected
    programme = rng.integers(0, 20, n)
    own = 40 * programme[:, None] + rng.integers(0, 80, size=(n, 12))
    cols = np.concatenate([own % n_latents, rng.integers(0, n_latents, size=(n, k - 12))], 1)
    vals = rng.exponential(1.0, size=(n, k)).astype(np.float32)
    codes = sparse.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, n * k + 1, k)),
                              shape=(n, n_latents))
    codes.sum_duplicates()
    times = {}
    t = time.perf_counter()
    adata = tl.latents_anndata(codes)
    times["latents_anndata"] = time.perf_counter() - t
    t = time.perf_counter()
    tl.pca_latents(adata, n_comps=30)
    times["pca"] = time.perf_counter() - t
    t = time.perf_counter()
    tl.cluster_latents(adata, n_neighbors=15)
    times["neighbors_leiden"] = time.perf_counter() - t
    # VmHWM is this process's own peak; ru_maxrss keeps the parent's high-water mark
    # across fork + exec on Linux, so it can report the parent's memory instead
    rss = (next((int(line.split()[1]) for line in open("/proc/self/status")
                 if line.startswith("VmHWM")), 0)
           if sys.platform.startswith("linux")
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1e6  # KiB -> GB
    n_clusters = int(adata.obs[[c for c in adata.obs.columns if "leiden" in c][0]].nunique())
    print(json.dumps({"times": times, "peak_rss_gb": rss, "n_clusters": n_clusters}))
""")


def analysis(n_cells: int) -> dict:
    res = _run_child(ANALYSIS_CHILD, str(n_cells))
    out = {"analysis_cells": n_cells, "analysis_seconds": round(sum(res["times"].values()), 2),
           "analysis_peak_rss_gb": round(res["peak_rss_gb"], 3),
           "analysis_n_clusters": res["n_clusters"]}
    out.update({f"analysis_seconds_{k}": round(v, 2) for k, v in res["times"].items()})
    return out


# -- 3. DDP: 2 processes vs 1 ------------------------------------------------------------------

DDP_CHILD = textwrap.dedent("""
    import os, sys
    import torch
    from cellsae.sae import train
    torch.set_num_threads(1)
    sae = train(sys.argv[1], arch="topk", d_sae=64, k=8, n_steps=20, batch_size=64, seed=3,
                device="cpu", dead_window=10**9, chunk_size=256, buffer_chunks=2,
                progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        sae.save(sys.argv[2])
""")


def ddp_check(tmp: Path) -> dict:
    from safetensors.numpy import load_file

    data = tmp / "ddp.npy"
    np.save(data, np.random.default_rng(0).normal(size=(1500, 16)).astype(np.float32))
    script = tmp / "ddp_train.py"
    script.write_text(DDP_CHILD)
    weights = {}
    for nproc in (1, 2):
        out = tmp / f"ddp_{nproc}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(script), str(data), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**_child_env(), "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun failed:\n{proc.stderr[-3000:]}")
        weights[nproc] = load_file(str(out) + ".safetensors")
    diff, equivalent = 0.0, True
    for key, one in weights[1].items():
        two = weights[2][key]
        diff = max(diff, float(np.abs(one - two).max()))
        equivalent &= bool(np.allclose(two, one, rtol=1e-4, atol=1e-5))
    return {"ddp_equivalent": equivalent, "ddp_max_abs_diff": diff}


# -- 4. kill -9 and resume -----------------------------------------------------------------------

RESUME_SETTINGS = dict(arch="topk", d_sae=64, k=8, n_steps=100, batch_size=64, seed=5,
                       device="cpu", chunk_size=256, buffer_chunks=2, progress=False)
RESUME_CHILD = textwrap.dedent("""
    import json, sys, time
    from cellsae.sae import train, trainer
    step = trainer._Run.train_step
    def slow_step(self, x, autocast):  # slowed so the kill lands mid-run; maths unchanged
        time.sleep(0.02)
        return step(self, x, autocast)
    trainer._Run.train_step = slow_step
    train(sys.argv[1], checkpoint_dir=sys.argv[2], checkpoint_every=10,
          **json.loads(sys.argv[3]))
""")


def resume_check(tmp: Path) -> dict:
    from cellsae.sae import train

    data = tmp / "resume.npy"
    np.save(data, np.random.default_rng(0).normal(size=(1500, 16)).astype(np.float32))
    ckpt = tmp / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", RESUME_CHILD, str(data), str(ckpt),
                             json.dumps(RESUME_SETTINGS)], env=_child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while len(list(ckpt.glob("step_*.json"))) < 2:
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before the kill:\n{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("no checkpoint appeared")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = max(int(p.stem.split("_")[1]) for p in ckpt.glob("step_*.json"))
    resumed = train(data, resume=ckpt, checkpoint_dir=ckpt, checkpoint_every=10,
                    **RESUME_SETTINGS)
    straight = train(data, **RESUME_SETTINGS)
    diff = max(float((a - b).abs().max()) for a, b in
               zip(resumed.state_dict().values(), straight.state_dict().values(), strict=True))
    return {"resume_equivalent": diff == 0.0, "resume_max_abs_diff": diff,
            "resume_killed_after_step": killed_at,
            "resume_killed_by_sigkill": proc.returncode == -signal.SIGKILL}


# -- 5. bad inputs ---------------------------------------------------------------------------


def bad_inputs(tmp: Path) -> dict:
    spec = importlib.util.spec_from_file_location("bad_input_cases",
                                                  ROOT / "tests" / "test_bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while executing it
    spec.loader.exec_module(module)
    handled, failures = 0, []
    for i, case in enumerate(module.CASES):
        try:
            module.check_case(case, tmp / f"bad_{i}")
            handled += 1
        except Exception as err:  # noqa: BLE001 - count it and report why
            failures.append(f"{case.name}: {str(err)[:200]}")
    for failure in failures:
        logger.warning("bad input not handled: %s", failure)
    return {"bad_inputs_tried": len(module.CASES), "bad_inputs_handled": handled}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run, under 60 s on 2 cores")
    ap.add_argument("--out", type=Path, help="also write the JSON figures here")
    ap.add_argument("--tokens", type=int, help="tokens for the streamed SAE (default 10M, "
                    "quick 100k)")
    ap.add_argument("--cells", type=int, help="cells for the analysis (default 100k, quick 3k)")
    ap.add_argument("--tmp", type=Path, help="scratch folder (default: a temporary folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("cellsae").setLevel(logging.ERROR)
    n_tokens = args.tokens or (100_000 if args.quick else 10_000_000)
    n_cells = args.cells or (3_000 if args.quick else 100_000)
    figures: dict = {"quick": bool(args.quick)}
    t0 = time.perf_counter()
    if args.tmp is not None:
        args.tmp.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cellsae_scale_", dir=args.tmp))
    try:
        for name, step in (("sae_stream", lambda: sae_stream(tmp, n_tokens)),
                           ("analysis", lambda: analysis(n_cells)),
                           ("ddp", lambda: ddp_check(tmp)),
                           ("resume", lambda: resume_check(tmp)),
                           ("bad_inputs", lambda: bad_inputs(tmp))):
            t = time.perf_counter()
            figures.update(step())
            logger.info("%s done in %.1f s", name, time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["total_seconds"] = round(time.perf_counter() - t0, 1)
    emit(figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
