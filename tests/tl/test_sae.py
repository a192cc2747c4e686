import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import cellsae.sae as S
from cellsae.datasets.toy import toy_superposition
from cellsae.tl.sae import sae_encode


@pytest.fixture(scope="module")
def model_and_data():
    toy = toy_superposition(24, 12, 2, 2000, seed=0)
    sae = S.train(toy.X, arch="topk", k=2, d_sae=32, n_steps=40, batch_size=128,
                  device="cpu")
    return sae, toy


def test_sae_encode_returns_cells_by_latents(model_and_data, tmp_path):
    sae, toy = model_and_data
    obs = pd.DataFrame({"genotype": np.repeat(["wt", "mut"], 100)},
                       index=[f"cell{i}" for i in range(200)])
    adata = ad.AnnData(obs=obs)
    adata.obsm["X_cnn"] = toy.X[:200]
    out = sae_encode(adata, sae, use_rep="X_cnn")
    assert out.shape == (200, 32) and sparse.issparse(out.X)
    assert list(out.obs_names) == list(adata.obs_names)
    assert (out.obs["genotype"] == adata.obs["genotype"]).all()
    codes = sae.encode(toy.X[:200]).toarray()
    np.testing.assert_allclose(out.var["frequency"], (codes > 0).mean(0))
    np.testing.assert_allclose(out.var["max_activation"], codes.max(0), rtol=1e-6)
    np.testing.assert_allclose(out.var["mean_activation"], codes.mean(0), rtol=1e-5)
    assert out.uns["sae"]["params"]["use_rep"] == "X_cnn"
    out.write_h5ad(tmp_path / "latents.h5ad")  # uns must be serialisable

    # a saved model path works too, and tokens pool into cells
    sae.save(tmp_path / "m")
    tokens = np.repeat(toy.X[:200], 2, axis=0)
    pooled = sae_encode(adata, str(tmp_path / "m"), tokens=tokens,
                        cell_index=np.repeat(np.arange(200), 2), pool="mean")
    np.testing.assert_allclose(pooled.X.toarray(), out.X.toarray(), rtol=1e-5, atol=1e-6)


def test_sae_encode_errors(model_and_data):
    sae, toy = model_and_data
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(5)]))
    with pytest.raises(KeyError, match="X_cnn"):
        sae_encode(adata, sae)
    adata.obsm["X_cnn"] = np.zeros((5, 7), np.float32)
    with pytest.raises(ValueError, match="d_in=12"):
        sae_encode(adata, sae)
