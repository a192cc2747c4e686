"""Two DistributedDataParallel processes (gloo, CPU) give the one-process result."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ._helpers import planted_crops

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from cellsae.embed import train_encoder
    torch.set_num_threads(1)
    data = np.load(sys.argv[1])
    result = train_encoder(
        data["x"], data["y"], donors=data["donors"],
        encoder={"widths": [4, 8], "blocks": [1, 1], "strides": [1, 2], "norm": "none"},
        config={"objective": sys.argv[3], "epochs": 2, "batch_size": 16, "queue_size": 32,
                "proj_dim": 8, "proj_hidden": 16, "patience": None},
        seed=0, device="cpu")
    import os
    if int(os.environ.get("RANK", "0")) == 0:
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, sys.argv[2])
""")


def _run(tmp_path: Path, nproc: int, objective: str) -> dict:
    from safetensors.numpy import load_file

    out = tmp_path / f"w{nproc}_{objective}.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(tmp_path / "script.py"), str(tmp_path / "data.npz"),
           str(out), objective]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["supervised", "supcon"])
def test_two_processes_match_one(tmp_path, objective):
    x, y, donors = planted_crops(n_per_donor=8, n_donors_per_class=3)
    np.savez(tmp_path / "data.npz", x=x, y=y, donors=donors)
    (tmp_path / "script.py").write_text(SCRIPT)
    one = _run(tmp_path, 1, objective)
    two = _run(tmp_path, 2, objective)
    for key in one:
        np.testing.assert_allclose(one[key], two[key], rtol=1e-3, atol=1e-4, err_msg=key)
