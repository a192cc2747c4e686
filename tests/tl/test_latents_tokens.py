"""Token-level SAE latents: pooled token codes, activation maps, and the gallery overlay."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cellsae.embed import ResNetEncoder, TokenStore, extract  # noqa: E402
from cellsae.pl.latents import latent_gallery  # noqa: E402
from cellsae.sae import pool_codes, train  # noqa: E402
from cellsae.tl import latents_anndata, token_activation_maps, token_codes  # noqa: E402


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A random 2-stage ResNet's 4×4 token maps of 30 crops, and an SAE trained on them."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    crops = rng.uniform(size=(30, 3, 16, 16)).astype(np.float32)
    model = ResNetEncoder(in_channels=3, widths=(8, 16), blocks=(1, 1))
    path = tmp_path_factory.mktemp("tok") / "tokens.zarr"
    extract(model, crops, tokens_out=path, tokens_layer="stage1", device="cpu",
            token_dtype="float32")
    store = TokenStore(path)
    sae = train(store.tokens, arch="topk", d_sae=24, k=4, n_steps=30, batch_size=64,
                seed=0, device="cpu", progress=False)
    return crops, store, sae


def test_token_codes_equal_encoding_all_tokens_then_pooling(tokens):
    _, store, sae = tokens
    every = sae.encode(np.asarray(store.tokens[:], np.float32), progress=False)
    cell_index = np.asarray(store.cell_index[:])
    for pool in ("mean", "max"):
        ref = pool_codes(every, cell_index, store.n_cells, pool=pool).toarray()
        got = token_codes(sae, store, pool=pool, cells_per_batch=7).toarray()  # uneven blocks
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got.shape == (30, 24)


def test_activation_maps_pool_to_the_cell_codes(tokens):
    _, store, sae = tokens
    codes = token_codes(sae, store.path, pool="mean").toarray()
    latent = int(np.argmax((codes > 0).sum(0)))
    cells = np.array([5, 0, 17])
    maps = token_activation_maps(sae, store, latent, cells)
    assert maps.shape == (3, *store.grid)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), codes[cells, latent], rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(IndexError, match="dictionary"):
        token_activation_maps(sae, store, 24, cells)
    with pytest.raises(IndexError, match="store's cells"):
        token_activation_maps(sae, store, 0, [30])


def test_token_codes_reject_an_sae_of_another_width(tokens):
    _, store, _ = tokens
    other = train(np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32),
                  arch="topk", d_sae=8, k=2, n_steps=2, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="d_in=5"):
        token_codes(other, store)


def test_gallery_overlays_maps_from_the_token_store(tokens):
    crops, store, sae = tokens
    codes = token_codes(sae, store, pool="mean")
    lat = latents_anndata(codes, obs=pd.DataFrame(index=[str(i) for i in range(30)]))
    lat.obsm["single_cell_images"] = crops
    name = lat.var_names[0]
    fig = latent_gallery(lat, name, n=4, ncols=2, sae=sae, tokens=store,
                         channel_names=["a", "b", "c"])
    panels = [ax for ax in fig.axes if ax.images]
    assert panels and all(len(ax.images) == 2 for ax in panels)  # crop + activation map
    plt.close(fig)
    with pytest.raises(ValueError, match="both sae= and tokens="):
        latent_gallery(lat, name, sae=sae)
