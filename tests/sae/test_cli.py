import anndata as ad
import numpy as np
from scipy import sparse
from typer.testing import CliRunner

from cellsae.cli import app
from cellsae.datasets.toy import toy_superposition


def test_cli_train_and_encode(tmp_path):
    toy = toy_superposition(24, 12, 2, 1500, seed=0)
    np.save(tmp_path / "tokens.npy", toy.X)
    runner = CliRunner()
    result = runner.invoke(app, ["--quiet", "sae", "train", str(tmp_path / "tokens.npy"),
                                 "--out", str(tmp_path / "model"), "--arch", "topk",
                                 "--d-sae", "32", "--k", "2", "--steps", "20",
                                 "--batch-size", "128", "--set", "lr=0.001",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.safetensors").exists()
    result = runner.invoke(app, ["--quiet", "sae", "encode", str(tmp_path / "tokens.npy"),
                                 "--model", str(tmp_path / "model.safetensors"),
                                 "--out", str(tmp_path / "codes.npz"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    codes = sparse.load_npz(tmp_path / "codes.npz")
    assert codes.shape == (1500, 32)

    adata = ad.AnnData(obs={"k": list(range(100))})
    adata.obsm["X_cnn"] = toy.X[:100]
    adata.obs_names = [f"c{i}" for i in range(100)]
    adata.write_h5ad(tmp_path / "cells.h5ad")
    result = runner.invoke(app, ["--quiet", "sae", "encode", str(tmp_path / "cells.h5ad"),
                                 "--model", str(tmp_path / "model"),
                                 "--out", str(tmp_path / "latents.h5ad"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    latents = ad.read_h5ad(tmp_path / "latents.h5ad")
    assert latents.shape == (100, 32) and "frequency" in latents.var
