import anndata as ad
import numpy as np
import pandas as pd
from typer.testing import CliRunner

from cellsae.cli import app
from cellsae.crops import CROPS_KEY, write_h5sc
from cellsae.embed.extract import TokenStore

from ._helpers import planted_crops


def test_train_then_extract(tmp_path):
    x, y, donors = planted_crops(n_per_donor=6, n_donors_per_class=3)
    obs = pd.DataFrame({"genotype": y, "donor": donors}, index=[f"c{i}" for i in range(len(y))])
    path = write_h5sc(tmp_path / "cells.h5sc",
                      ad.AnnData(obs=obs, obsm={CROPS_KEY: x.astype(np.float16)}))
    runner = CliRunner()
    res = runner.invoke(app, ["--quiet", "embed", "train", str(path), "--out", str(tmp_path / "run"),
                              "--widths", "4,8", "--epochs", "1", "--batch-size", "12"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "encoder.safetensors").exists()
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"}
    res = runner.invoke(app, ["--quiet", "embed", "extract", str(tmp_path / "run" / "encoder.json"),
                              str(path), "--out", str(tmp_path / "emb.h5ad"),
                              "--tokens", str(tmp_path / "tok.zarr")])
    assert res.exit_code == 0, res.output
    out = ad.read_h5ad(tmp_path / "emb.h5ad")
    assert out.obsm["X_cnn"].shape == (len(y), 8)
    assert TokenStore(tmp_path / "tok.zarr").n_cells == len(y)
