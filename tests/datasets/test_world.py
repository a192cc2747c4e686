from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellsae.crops import CROPS_KEY, CropStore
from cellsae.datasets import (
    FACTOR_NAMES,
    GENOTYPES,
    NeuronWorld,
    neuron_world,
    write_neuron_world,
    write_world_plates,
)


@pytest.fixture(scope="module")
def world():
    return neuron_world(600, seed=11)


def test_shapes_dtypes_and_fields(world):
    cells, rna = world.cells, world.rna
    crops = cells.obsm[CROPS_KEY]
    assert crops.shape == (600, 4, 64, 64) and crops.dtype == np.float16
    assert np.isfinite(crops.astype(np.float32)).all() and crops.min() >= -0.1
    assert list(cells.uns[CROPS_KEY]["channel_names"]) == ["mito", "lyso", "nucleus", "death"]
    for col in ("genotype", "donor", "plate", "well", "t", "branch", "dead", "rna_index"):
        assert col in cells.obs
    assert cells.obsm["factors"].shape == (600, len(FACTOR_NAMES)) and len(FACTOR_NAMES) >= 20
    assert cells.obsm["programs"].shape == (600, 17)
    assert set(cells.obs["genotype"].unique()) == set(GENOTYPES)
    assert cells.obs.groupby("genotype", observed=True)["donor"].nunique().min() >= 3
    assert rna.n_obs == 600 and rna.n_vars >= 1000


def test_determinism_by_seed():
    a = neuron_world(80, seed=5)
    b = neuron_world(80, seed=5)
    c = neuron_world(80, seed=6)
    np.testing.assert_array_equal(a.cells.obsm[CROPS_KEY], b.cells.obsm[CROPS_KEY])
    np.testing.assert_array_equal(a.rna.X.toarray(), b.rna.X.toarray())
    assert not np.array_equal(a.cells.obsm[CROPS_KEY], c.cells.obsm[CROPS_KEY])


def test_counts_are_realistic(world):
    x = world.rna.X
    assert x.dtype == np.float32
    dense = x.toarray()
    assert (dense >= 0).all() and np.array_equal(dense, np.round(dense))
    zeros = 1 - x.nnz / np.prod(x.shape)
    assert 0.80 <= zeros <= 0.95
    lib = dense.sum(1)
    assert lib.std() / lib.mean() > 0.2  # library sizes vary


def test_programs_are_correlated_gene_blocks(world):
    rna = world.rna
    x = rna.X.toarray()
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    mod = rna.var["module_level3"].to_numpy()
    genes = np.flatnonzero(mod != "")
    corr = np.corrcoef(x[:, genes].T)
    same = mod[genes][:, None] == mod[genes][None, :]
    off = ~np.eye(len(genes), dtype=bool)
    assert corr[same & off].mean() > corr[~same].mean() + 0.1


def test_hierarchy_is_nested_3_7_17(world):
    h = world.truth.hierarchy
    assert [len(level) for level in h["levels"]] == [3, 7, 17]
    var = world.rna.var
    for l3, parent in h["parents"]["level3"].items():
        genes = var.index[var["module_level3"] == l3]
        assert len(genes) >= 2
        assert (var.loc[genes, "module_level2"] == parent).all()
    assert 150 <= (var["module_level1"] != "").sum() <= 300
    assert 0 < world.truth.program_visible.sum() < 17


def test_pairing_is_consistent(world):
    cells, rna = world.cells, world.rna
    idx = world.truth.pairing
    np.testing.assert_array_equal(idx, cells.obs["rna_index"].to_numpy())
    np.testing.assert_allclose(cells.obs["t"].to_numpy(), rna.obs["t"].to_numpy()[idx])
    assert (cells.obs["genotype"].to_numpy() == rna.obs["genotype"].to_numpy()[idx]).all()
    np.testing.assert_allclose(cells.obsm["programs"], rna.obsm["programs"][idx])


def test_unpaired_world_has_independent_cells():
    w = neuron_world(100, seed=1, n_rna_cells=150,
                     rna_genotype_proportions={"healthy": 0.7, "SNCA": 0.3})
    assert w.rna.n_obs == 150 and (w.truth.pairing == -1).all()
    assert set(w.rna.obs["genotype"].unique()) <= {"healthy", "SNCA"}


def test_death_rises_with_t_and_differs_by_genotype(world):
    obs = world.cells.obs
    assert obs.loc[obs.t > 0.7, "dead"].mean() > obs.loc[obs.t < 0.3, "dead"].mean() + 0.2
    rates = obs.groupby("genotype", observed=True)["dead"].mean()
    assert rates["healthy"] < rates["SNCA"]
    # the death dye reports death
    dye = world.cells.obsm[CROPS_KEY][:, 3].astype(np.float32).reshape(len(obs), -1).max(1)
    assert dye[obs.dead.to_numpy()].mean() > 2 * dye[~obs.dead.to_numpy()].mean()


def test_genotype_decodable_from_simple_crop_statistics(world):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    crops = world.cells.obsm[CROPS_KEY].astype(np.float32)
    flat = crops.reshape(len(crops), 4, -1)
    feats = np.concatenate([flat.mean(2), flat.std(2), np.percentile(flat, [50, 90, 99], axis=2)
                            .transpose(1, 2, 0).reshape(len(crops), -1)], 1)
    y = world.cells.obs["genotype"].cat.codes.to_numpy()
    acc = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                          feats, y, cv=3).mean()
    assert acc > 0.35  # chance is 0.25


def test_streamed_world_equals_in_memory(tmp_path):
    a = neuron_world(130, seed=2, chunk_size=64)
    write_neuron_world(tmp_path / "w", 130, seed=2, chunk_size=128)
    back = NeuronWorld.read(tmp_path / "w", load_crops=False)
    np.testing.assert_array_equal(CropStore(tmp_path / "w" / "cells.h5sc")[:],
                                  a.cells.obsm[CROPS_KEY].astype(np.float32))
    pd.testing.assert_frame_equal(back.cells.obs.drop(columns=[]), a.cells.obs, check_dtype=False,
                                  check_categorical=False)
    assert back.truth.hierarchy == a.truth.hierarchy


def test_write_read_roundtrip(tmp_path, world):
    world.write(tmp_path / "w")
    back = NeuronWorld.read(tmp_path / "w")
    np.testing.assert_array_equal(back.cells.obsm[CROPS_KEY], world.cells.obsm[CROPS_KEY])
    np.testing.assert_array_equal(back.truth.pairing, world.truth.pairing)
    assert back.truth.program_names == world.truth.program_names
    with pytest.raises(FileNotFoundError, match="not a world folder"):
        NeuronWorld.read(tmp_path)


def test_crop_size_128_scales_geometry():
    w = neuron_world(20, seed=0, crop_size=128)
    assert w.cells.obsm[CROPS_KEY].shape == (20, 4, 128, 128)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_cells": 0}, "n_cells"),
    ({"n_cells": 10, "crop_size": 16}, "crop_size"),
    ({"n_cells": 10, "genotype_proportions": {"PINK1": 1.0}}, "unknown genotype"),
    ({"n_cells": 10, "genotype_proportions": (1, -1, 0, 0)}, "non-negative"),
    ({"n_cells": 10, "design": "random"}, "design"),
    ({"n_cells": 10, "n_rna_cells": -5}, "n_rna_cells"),
])
def test_bad_parameters_give_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        neuron_world(**kwargs)


def test_confounded_design_puts_genotypes_on_their_own_plates():
    w = neuron_world(200, seed=0, design="confounded", n_plates=4)
    per_geno = w.cells.obs.groupby("genotype", observed=True)["plate"].nunique()
    assert (per_geno == 1).all()


def test_plates_have_true_positions(tmp_path):
    import tifffile

    out = write_world_plates(tmp_path / "plates", 120, seed=0, max_cells=40, field_size=256)
    pos = pd.read_csv(out / "truth_positions.csv")
    pmap = pd.read_csv(out / "platemap.csv")
    assert len(pos) == 40 and set(pos["well"]) <= set(pmap["well"])
    row = pos.iloc[0]
    well = pmap[(pmap.well == row.well) & (pmap.plate == row.plate)].iloc[0]
    name = f"r{well.row:02d}c{well.col:02d}f{row.field:02d}p02-ch1sk1fk1fl1.tiff"
    img = tifffile.imread(out / row.plate / name)
    assert img.dtype == np.uint16 and img.shape == (256, 256)
    # the nucleus channel is bright at the true centre, dim in the background
    y, x = int(row.y), int(row.x)
    assert img[y - 2:y + 3, x - 2:x + 3].mean() > 2 * np.median(img)


def test_cell_types_are_shared_and_unbalanced(world):
    from cellsae.datasets.world import CELL_TYPES

    cells, rna = world.cells, world.rna
    assert list(cells.obs["cell_type"].cat.categories) == list(CELL_TYPES)
    idx = world.truth.pairing
    assert (cells.obs["cell_type"].to_numpy() == rna.obs["cell_type"].to_numpy()[idx]).all()
    share = cells.obs["cell_type"].value_counts(normalize=True)
    assert share.max() > 1.5 * share.min()  # unequal clusters: no relabelling symmetry
    assert world.truth.cell_types == list(CELL_TYPES)


def test_images_and_rna_share_geometry():
    """The true visual factors and the RNA (normalise, log1p, HVGs, PCA) see the same cell
    states: their kNN-geodesic distances agree, and death, trajectory and cell type are
    readable from both sides (the premise of GW alignment)."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import cross_val_score

    from cellsae.align.costs import knn_geodesic_cost
    from cellsae.tl.align import image_representation, rna_representation

    w = neuron_world(400, seed=21, crop_size=32)
    x = image_representation(w.cells, use_rep="factors", n_pcs=20)
    y = rna_representation(w.rna, n_pcs=20)
    cx, _ = knn_geodesic_cost(x, n_neighbors=20, metric="correlation", mode="connectivity")
    cy, _ = knn_geodesic_cost(y, n_neighbors=20, metric="correlation", mode="connectivity")
    iu = np.triu_indices(400, 1)
    assert spearmanr(cx[iu], cy[iu]).statistic > 0.45
    obs = w.cells.obs
    for rep in (x, y):
        assert cross_val_score(RidgeCV(), rep, obs["t"], cv=3).mean() > 0.6
        for col in ("dead", "cell_type"):
            acc = cross_val_score(LogisticRegression(max_iter=2000), rep,
                                  obs[col].astype(str), cv=3).mean()
            assert acc > 0.8, (col, acc)
