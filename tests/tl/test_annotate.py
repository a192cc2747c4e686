"""Latent annotation: planted latent meanings are named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellsae.tl.annotate import annotate_latents, top_cells
from cellsae.tl.latents import latents_anndata


@pytest.fixture
def lat(rng):
    n = 300
    area = rng.normal(size=n)
    geno = np.where(np.arange(n) % 3 == 0, "SNCA", "healthy")
    dead = (rng.uniform(size=n) < 0.3).astype(int)
    codes = rng.exponential(0.2, size=(n, 6)) * (rng.uniform(size=(n, 6)) < 0.3)
    codes[:, 0] = np.maximum(area, 0) * 2  # encodes area
    codes[:, 1] = (geno == "SNCA") * rng.uniform(1, 2, n)  # encodes genotype
    codes[:, 2] = dead * rng.uniform(1, 2, n)  # encodes death
    obs = pd.DataFrame({"genotype": geno, "dead": dead, "area": area,
                        "intensity": rng.normal(size=n)})
    return latents_anndata(codes, obs=obs)


def test_planted_meanings_are_named(lat):
    table = annotate_latents(lat, measurements=["area", "intensity"], categorical=["genotype"],
                             death_key="dead", n_top=5)
    assert table.loc["latent_0", "best_measurement"] == "area"
    assert table.loc["latent_0", "label"].startswith("area ρ=+")
    assert "genotype=SNCA ↑" in table.loc["latent_1", "label"]
    assert "death ↑" in table.loc["latent_2", "label"]
    assert table.loc["latent_4", "label"] == "unclear"
    assert lat.varm["top_cells"].shape == (lat.n_vars, 5)
    assert "table" in lat.uns["latent_annotation"]


def test_top_cells_are_the_strongest():
    x = np.array([[0.0, 1], [3, 0], [2, 0], [0, 0]])
    np.testing.assert_array_equal(top_cells(x, 3), [[1, 2, -1], [0, -1, -1]])


def test_continuous_death_and_obsm_measurements(lat):
    lat.obs["rate"] = lat.obs["dead"] * 0.8 + 0.1
    lat.obsm["meas"] = lat.obs[["area", "intensity"]]
    table = annotate_latents(lat, measurements="meas", death_key="rate")
    assert table.loc["latent_0", "best_measurement"] == "area"
    assert "death rate" in table.loc["latent_2", "label"]


def test_bad_inputs(lat):
    with pytest.raises(KeyError, match="available"):
        annotate_latents(lat, measurements="X_measure")
    with pytest.raises(KeyError, match="available"):
        annotate_latents(lat, categorical=["plate"])
