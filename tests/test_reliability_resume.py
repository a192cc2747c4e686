"""Kill -9 during SAE training, encoder training and ingestion, then resume.

Each test starts the work in a subprocess, sends SIGKILL once a checkpoint (or a finished
field) exists, resumes in this process and compares with an uninterrupted run with the
same seed. Tolerance: SAE weights and ingested crops/measurements identical bit for bit;
encoder weights within rtol 1e-5 (the killed run used one thread, this process several,
so float32 sums differ in order; observed differences ~1e-8). The subprocess steps are slowed with a
sleep so the kill lands mid-run on any machine; the computation itself is unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def start_and_kill(script: str, args: list[str], ready: Callable[[], bool],
                   timeout: float = 240.0) -> None:
    """Run ``script`` in a subprocess and SIGKILL it as soon as ``ready()`` is true."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CELLSAE_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-3000:]
                raise AssertionError(f"the run ended (rc={proc.returncode}) before it could "
                                     f"be killed mid-way:\n{err}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint appeared in time")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


# -- SAE ----------------------------------------------------------------------------------

SAE_SETTINGS = dict(arch="topk", d_sae=64, k=8, n_steps=120, batch_size=64, seed=5,
                    device="cpu", chunk_size=256, buffer_chunks=2, progress=False)

SAE_SCRIPT = textwrap.dedent("""
    import sys, time, json
    from cellsae.sae import train, trainer
    step = trainer._Run.train_step
    def slow_step(self, x, autocast):  # slow the run down; the arithmetic is unchanged
        time.sleep(0.02)
        return step(self, x, autocast)
    trainer._Run.train_step = slow_step
    settings = json.loads(sys.argv[3])
    train(sys.argv[1], checkpoint_dir=sys.argv[2], checkpoint_every=10, **settings)
""")


def test_sae_training_killed_then_resumed_equals_uninterrupted(tmp_path):
    import json

    from cellsae.sae import train

    rng = np.random.default_rng(0)
    data = tmp_path / "x.npy"
    np.save(data, rng.normal(size=(1500, 16)).astype(np.float32))
    ckpt = tmp_path / "ckpt"
    start_and_kill(SAE_SCRIPT, [str(data), str(ckpt), json.dumps(SAE_SETTINGS)],
                   lambda: len(list(ckpt.glob("step_*.json"))) >= 2)
    steps = sorted(ckpt.glob("step_*.json"))
    assert steps and "00000120" not in steps[-1].name  # killed before the end
    resumed = train(data, resume=ckpt, checkpoint_dir=ckpt, checkpoint_every=10,
                    **SAE_SETTINGS)
    straight = train(data, **SAE_SETTINGS)
    assert resumed.train_info["resumed_from_step"] > 0
    for (name, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items(),
                                 strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


# -- encoder --------------------------------------------------------------------------------

ENC_ARGS = dict(encoder={"widths": [4, 8], "blocks": [1, 1], "strides": [1, 2], "norm": "none"},
                config={"objective": "supervised", "epochs": 5, "batch_size": 16,
                        "patience": None, "num_workers": 0},
                seed=0, device="cpu")

ENC_SCRIPT = textwrap.dedent("""
    import sys, time, json
    import numpy as np
    import torch
    from cellsae.embed import train_encoder
    torch.set_num_threads(1)
    data = np.load(sys.argv[1])
    args = json.loads(sys.argv[3])
    train_encoder(data["x"], data["y"], donors=data["donors"], out_dir=sys.argv[2],
                  callback=lambda epoch, record: time.sleep(0.5), **args)
""")


def _planted(n_per_donor=8, n_donors_per_class=3, n_classes=2, size=12, seed=0):
    rng = np.random.default_rng(seed)
    n = n_per_donor * n_donors_per_class * n_classes
    y = np.repeat(np.arange(n_classes), n_per_donor * n_donors_per_class)
    donors = np.repeat(np.arange(n_classes * n_donors_per_class), n_per_donor).astype(str)
    x = rng.normal(size=(n, 2, size, size)).astype(np.float32)
    x[:, 0, 3:9, 3:9] += 1.5 * y[:, None, None]
    return x, y, donors


def test_encoder_training_killed_then_resumed_equals_uninterrupted(tmp_path):
    import json

    from cellsae.embed import train_encoder

    x, y, donors = _planted()
    np.savez(tmp_path / "data.npz", x=x, y=y, donors=donors)
    out = tmp_path / "run"

    def after_first_epoch() -> bool:
        try:
            return json.loads((out / "last.json").read_text())["epoch"] >= 1
        except (OSError, ValueError, KeyError):
            return False

    start_and_kill(ENC_SCRIPT, [str(tmp_path / "data.npz"), str(out), json.dumps(ENC_ARGS)],
                   after_first_epoch)
    assert json.loads((out / "last.json").read_text())["epoch"] < 5
    resumed = train_encoder(x, y, donors=donors, out_dir=out, resume=True, **ENC_ARGS)
    straight = train_encoder(x, y, donors=donors, out_dir=tmp_path / "straight", **ENC_ARGS)
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        # the killed run used 1 thread: equal up to float32 summation order
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=key)


# -- ingestion ------------------------------------------------------------------------------

INGEST_SCRIPT = textwrap.dedent("""
    import sys, time, json
    from cellsae.images import pipeline
    field = pipeline.process_field
    def slow_field(task):
        record = field(task)
        time.sleep(0.3)
        return record
    pipeline.process_field = slow_field
    pipeline.ingest(sys.argv[1], sys.argv[2], platemap=sys.argv[3], **json.loads(sys.argv[4]))
""")


def test_ingest_killed_then_resumed_equals_uninterrupted(tmp_path):
    import json

    from cellsae.crops import CROPS_KEY, read_h5sc
    from cellsae.images.pipeline import ingest
    from cellsae.images.toy import make_toy_plate

    plate = make_toy_plate(tmp_path / "plates", wells=("B02", "B03", "C02"), n_fields=2,
                           size=96, n_cells=6, n_planes=2, seed=1)
    settings = {"crop_size": 24, "n_workers": 0, "calibration_fields": 4}
    out = tmp_path / "killed" / "cells.h5sc"
    parts = out.with_name(out.name + ".parts")
    start_and_kill(INGEST_SCRIPT, [str(plate["plate_dir"]), str(out), str(plate["platemap"]),
                                   json.dumps(settings)],
                   lambda: len(list(parts.glob("*/*.npz"))) >= 3)
    assert not out.exists()
    n_done = len(list(parts.glob("*/B*_f*.npz"))) + len(list(parts.glob("*/C*_f*.npz")))
    assert 0 < n_done < 6
    ingest(plate["plate_dir"], out, platemap=plate["platemap"], **settings)
    straight = ingest(plate["plate_dir"], tmp_path / "straight.h5sc",
                      platemap=plate["platemap"], **settings)
    a, b = read_h5sc(out, load_crops=True), read_h5sc(straight.path, load_crops=True)
    assert list(a.obs_names) == list(b.obs_names)
    np.testing.assert_array_equal(a.obsm[CROPS_KEY], b.obsm[CROPS_KEY])
    np.testing.assert_array_equal(a.obsm["X_measure"], b.obsm["X_measure"])
    assert (a.obs["dead"].to_numpy() == b.obs["dead"].to_numpy()).all()
    assert not parts.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
