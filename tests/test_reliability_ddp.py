"""SAE training under torchrun: 2 gloo processes give the 1-process result."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import torch
    from cellsae.sae import train, trainer
    torch.set_num_threads(1)
    rows = []  # rows this process trained on: half of each batch with 2 processes
    plain_step = trainer._Run.train_step
    def counting_step(self, x, autocast):
        rows.append(len(x))
        return plain_step(self, x, autocast)
    trainer._Run.train_step = counting_step
    arch = sys.argv[3]
    extra = {"k": 8} if arch in ("topk", "batchtopk") else {}
    sae = train(sys.argv[1], arch=arch, d_sae=64, n_steps=30, batch_size=64, seed=3,
                device="cpu", dead_window=10**9, chunk_size=256, buffer_chunks=2,
                progress=False, **extra)
    if int(os.environ.get("RANK", "0")) == 0:
        sae.save(sys.argv[2])
        open(sys.argv[2] + ".rows", "w").write(str(sum(rows)))
""")


def run_sae_training(tmp_path: Path, nproc: int, arch: str, data: Path) -> dict:
    """Train with ``torchrun --nproc_per_node=nproc`` and return the saved tensors."""
    from safetensors.numpy import load_file

    script = tmp_path / "train_sae.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"sae_{arch}_{nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(script), str(data), str(out), arch]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CELLSAE_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = int(Path(str(out) + ".rows").read_text())
    assert rows == 30 * 64 // nproc, f"rank 0 trained on {rows} rows"
    return load_file(str(out) + ".safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_two_processes_match_one(tmp_path, arch):
    rng = np.random.default_rng(0)
    data = tmp_path / "x.npy"
    np.save(data, rng.normal(size=(2000, 16)).astype(np.float32))
    one = run_sae_training(tmp_path, 1, arch, data)
    two = run_sae_training(tmp_path, 2, arch, data)
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
