"""Plots for latents: each returns a Figure and names what is missing."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from cellsae.pl.latents import comparison_plot, latent_gallery, volcano  # noqa: E402
from cellsae.tl.latents import latents_anndata  # noqa: E402


@pytest.fixture
def lat(rng):
    n = 40
    codes = rng.exponential(1, size=(n, 5)) * (rng.uniform(size=(n, 5)) < 0.5)
    adata = latents_anndata(codes, obs=pd.DataFrame({"g": np.arange(n) % 2}))
    adata.obsm["single_cell_images"] = rng.uniform(size=(n, 4, 16, 16)).astype(np.float16)
    adata.uns["single_cell_images"] = {"channel_names": ["mito", "lyso", "nucleus", "death"]}
    return adata


def test_volcano_returns_figure():
    table = pd.DataFrame({"feature": list("abcd"), "group": "SNCA", "reference": "healthy",
                          "padj": [1e-5, 0.2, 0.01, np.nan], "effect_size": [0.5, -0.1, -0.4, 0],
                          "significant": [True, False, True, False]})
    fig = volcano(table)
    assert isinstance(fig, plt.Figure)
    plt.close(fig)
    with pytest.raises(ValueError, match="not in the table"):
        volcano(table, group="GBA")
    with pytest.raises(KeyError, match="log2fc"):
        volcano(table, x="log2fc")


def test_latent_gallery_with_activation_maps(lat, rng):
    maps = rng.uniform(size=(lat.n_obs, 4, 4))
    fig = latent_gallery(lat, "latent_0", n=6, ncols=3, activation_maps=maps)
    assert isinstance(fig, plt.Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == min(6, int((lat.layers["activations"][:, 0] > 0).sum()))
    plt.close(fig)
    with pytest.raises(KeyError, match="not in var_names"):
        latent_gallery(lat, "latent_99")


def test_comparison_plot(rng):
    table = pd.DataFrame({"knn_sd_ratio": [0.4, 0.5], "knn_sd_ratio_ci_low": [0.35, 0.45],
                          "knn_sd_ratio_ci_high": [0.45, 0.55], "morans_i": [0.5, 0.3]},
                         index=["X_cnn", "X_sae"])
    fig = comparison_plot(table)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(KeyError, match="lacks"):
        comparison_plot(table, metrics=["factor_mcc"])
