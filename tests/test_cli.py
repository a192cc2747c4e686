from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from cellsae import __version__
from cellsae.cli import app

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "synth" in result.output


def test_synth_writes_world(tmp_path):
    out = tmp_path / "world"
    result = runner.invoke(app, ["--quiet", "synth", "--out", str(out), "--n-cells", "60",
                                 "--seed", "1"])
    assert result.exit_code == 0, result.output
    for name in ("cells.h5sc", "rna.h5ad", "truth.json", "truth.npz", "gallery.png", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cells"] == 60 and summary["cells_per_s"] > 0


def test_bad_option_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cellsae.cli", "synth", "--out", str(tmp_path),
                           "--design", "shuffled", "-n", "10"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "design must be 'balanced' or 'confounded'" in proc.stderr
