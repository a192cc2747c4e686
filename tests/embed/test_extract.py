import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from cellsae.crops import CROPS_KEY, write_h5sc
from cellsae.embed import ResNetEncoder
from cellsae.embed.extract import TokenStore, extract


@pytest.fixture
def model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ResNetEncoder(3, widths=(4, 6), blocks=(1, 1), strides=(1, 2)).eval()


def test_embeddings_and_tokens_match_the_model(model, rng, tmp_path):
    x = rng.normal(size=(10, 3, 16, 16)).astype(np.float32)
    res = extract(model, x, tta="none", tokens_out=tmp_path / "tok.zarr", tokens_layer="stage1",
                  batch_size=4, device="cpu")
    with torch.no_grad():
        maps = model.forward_features(torch.from_numpy(x), ["stage1", "stage2"])
    np.testing.assert_allclose(res.embeddings, maps["stage2"].mean((2, 3)).numpy(), atol=2e-3)
    store = TokenStore(tmp_path / "tok.zarr")
    assert store.grid == (8, 8) and store.dim == 4 and len(store) == 10 * 64
    np.testing.assert_allclose(store.cell_maps([3, 7]), maps["stage1"][[3, 7]].numpy(),
                               atol=2e-2, rtol=1e-2)  # float16 storage
    np.testing.assert_array_equal(np.asarray(store.cell_index[64:128]), 1)


def test_token_batches_cover_every_token_once(model, rng, tmp_path):
    x = rng.normal(size=(9, 3, 16, 16)).astype(np.float32)
    extract(model, x, tokens_out=tmp_path / "t.zarr", batch_size=3, token_dtype="float32",
            device="cpu")
    store = TokenStore(tmp_path / "t.zarr")
    seen = np.concatenate([c for _, c in store.iter_batches(50, seed=0, buffer_chunks=2)])
    np.testing.assert_array_equal(np.bincount(seen), np.full(9, store.tokens_per_cell))
    only = np.concatenate([c for _, c in store.iter_batches(7, cells=[2, 5])])
    assert set(only) == {2, 5} and len(only) == 2 * store.tokens_per_cell


def test_permuting_cells_permutes_embeddings(model, rng):
    x = rng.normal(size=(6, 3, 16, 16)).astype(np.float32)
    perm = rng.permutation(6)
    a = extract(model, x, device="cpu").embeddings
    b = extract(model, x[perm], device="cpu").embeddings
    np.testing.assert_allclose(a[perm], b, atol=2e-3)


def test_h5sc_input_writes_obsm(model, rng, tmp_path):
    x = rng.normal(size=(5, 3, 16, 16)).astype(np.float16)
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(5)]), obsm={CROPS_KEY: x})
    path = write_h5sc(tmp_path / "c.h5sc", adata)
    meta = ad.AnnData(obs=adata.obs.copy())
    res = extract(model, path, adata=meta, device="cpu", num_workers=0)
    assert meta.obsm["X_cnn"].shape == (5, 6)
    assert meta.uns["X_cnn"]["layer"] == "stage2"
    np.testing.assert_allclose(res.embeddings, extract(model, adata, device="cpu").embeddings,
                               atol=2e-3)
    assert adata.obsm["X_cnn"].shape == (5, 6)


def test_bad_input_leaves_no_token_store(model, rng, tmp_path):
    x = rng.normal(size=(6, 3, 16, 16)).astype(np.float32)
    x[4, 1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="cell 4"):
        extract(model, x, tokens_out=tmp_path / "t.zarr", batch_size=2, device="cpu")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="2 channels but the encoder expects 3"):
        extract(model, x[:, :2], device="cpu")
    extract(model, x[:3], tokens_out=tmp_path / "ok.zarr", device="cpu")
    with pytest.raises(FileExistsError, match="overwrite"):
        extract(model, x[:3], tokens_out=tmp_path / "ok.zarr", device="cpu")


def test_dihedral_tta_embedding_ignores_the_crop_orientation(model, rng, tmp_path):
    x = rng.normal(size=(6, 3, 16, 16)).astype(np.float32)
    turned = np.ascontiguousarray(np.rot90(x, 1, axes=(2, 3)))
    mirrored = np.ascontiguousarray(x[..., ::-1])
    a = extract(model, x, tta="dihedral", device="cpu")
    assert a.tta == "dihedral" and a.params["tta"] == "dihedral"
    for other in (turned, mirrored):
        np.testing.assert_allclose(extract(model, other, tta="dihedral", device="cpu").embeddings,
                                   a.embeddings, atol=2e-3)
    # without TTA the embedding does depend on the orientation, and equals the model's GAP
    plain = extract(model, x, tta="none", device="cpu").embeddings
    assert np.abs(extract(model, turned, tta="none", device="cpu").embeddings - plain).max() > 1e-3
    with torch.no_grad():
        views = [torch.rot90(v, k, dims=(-2, -1)) for v in (torch.from_numpy(x),
                 torch.from_numpy(x).flip(-1)) for k in range(4)]
        mean = torch.stack([model(v) for v in views]).mean(0).numpy()
    np.testing.assert_allclose(a.embeddings, mean, atol=2e-3)
    # rot90 only: invariant to quarter turns; tokens still come from the crop as it is
    r = extract(model, x, tta="rot90", tokens_out=tmp_path / "t.zarr", tokens_layer="stage1",
                token_dtype="float32", device="cpu")
    np.testing.assert_allclose(extract(model, turned, tta="rot90", device="cpu").embeddings,
                               r.embeddings, atol=2e-3)
    with torch.no_grad():
        stage1 = model.forward_features(torch.from_numpy(x), ["stage1"])["stage1"]
    np.testing.assert_allclose(TokenStore(tmp_path / "t.zarr").cell_maps([2]), stage1[[2]].numpy(),
                               atol=2e-3)


def test_tta_bad_input(model, rng):
    x = rng.normal(size=(2, 3, 16, 12)).astype(np.float32)
    with pytest.raises(ValueError, match="square crops"):
        extract(model, x, tta="dihedral", device="cpu")
    with pytest.raises(ValueError, match="tta must be one of"):
        extract(model, x[..., :12, :], tta="rot180", device="cpu")
