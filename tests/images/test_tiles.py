"""The paper's tile unit: grid, projection, QC, death rates, and tile ingestion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellsae.images.tiles import (
    QC_TESTS,
    cut_tiles,
    edge_tiles,
    ingest_tiles,
    max_projection,
    nuclear_mask,
    pooled_death_threshold,
    preprocess_death,
    tile_death_rates,
    tile_grid,
    tile_qc,
)


def test_grid_is_regular_non_overlapping_and_drops_incomplete_edges():
    grid = tile_grid((300, 520), 128)
    assert len(grid) == 2 * 4  # ⌊300/128⌋ · ⌊520/128⌋
    assert grid[0].tolist() == [0, 0] and grid[1].tolist() == [0, 128]
    assert grid[-1].tolist() == [128, 384]
    image = np.arange(2 * 300 * 520, dtype=np.float32).reshape(2, 300, 520)
    tiles = cut_tiles(image, 128)
    assert tiles.shape == (8, 2, 128, 128)
    for (y, x), tile in zip(grid, tiles, strict=True):
        np.testing.assert_array_equal(tile, image[:, y : y + 128, x : x + 128])
    assert cut_tiles(image[0], 128).shape == (8, 128, 128)
    with pytest.raises(ValueError, match="holds no"):
        cut_tiles(np.zeros((1, 100, 100)), 128)


def test_edge_tiles_are_the_outer_ring():
    edge = edge_tiles((512, 512), 128).reshape(4, 4)
    expected = np.ones((4, 4), bool)
    expected[1:3, 1:3] = False
    np.testing.assert_array_equal(edge, expected)


def test_max_projection_uses_the_first_five_planes_only():
    stack = np.zeros((2, 7, 4, 4), np.uint16)
    stack[:, 2] = 10
    stack[:, 6] = 1000  # a sixth/seventh plane never enters the projection
    mip = max_projection(stack, 5)
    assert mip.shape == (2, 4, 4) and (mip == 10).all()
    with pytest.raises(ValueError, match="3 z-planes"):
        max_projection(stack[:, :3], 5)
    assert (max_projection(stack[:, :3], 5, strict=False) == 10).all()


def _qc_tiles(rng):
    s = 128
    good = rng.uniform(0, 60000, (3, s, s))
    blank = np.full((3, s, s), 30000.0)
    ramp = np.broadcast_to(np.linspace(0, 60000, s), (3, s, s)).copy()  # sharp-free: no focus
    sparse_bright = np.full((3, s, s), 100.0)
    sparse_bright[:, :20, :20] = rng.uniform(0, 60000, (3, 20, 20))  # mostly background
    negative = np.where(rng.random((3, s, s)) < 0.5, -100000.0, 0.0)  # spread but no signal
    return np.stack([good, blank, ramp, sparse_bright, negative])


def test_tile_qc_each_test_rejects_its_own_failure(rng):
    qc = tile_qc(_qc_tiles(rng))
    assert qc["qc_pass"].tolist() == [True, False, False, False, False]
    assert qc["qc_reason"].tolist() == ["", "signal_spread", "focus", "background", "signal_sum"]
    assert set(qc["qc_reason"]) - {""} <= set(QC_TESTS)
    # the thresholds are the paper's and can be relaxed one by one
    relaxed = tile_qc(_qc_tiles(rng), max_background_fraction=1.0)
    assert relaxed["qc_pass"].tolist()[3] is True


def test_nuclear_mask_drops_border_and_small_nuclei():
    labels = np.zeros((20, 20), np.int32)
    labels[0:5, 0:5] = 1  # touches the border
    labels[8:16, 8:16] = 2  # 64 px, kept
    labels[3:8, 12:14] = 3  # 10 px ≤ 40, dropped
    mask = nuclear_mask(labels, min_area=40)
    assert mask.sum() == 64 and mask[8:16, 8:16].all()
    assert not nuclear_mask(np.zeros((5, 5), int)).any()


def test_death_rates_on_hand_built_masks():
    death = np.zeros((4, 4, 4))
    mask = np.zeros((4, 4, 4), bool)
    # tile 0: 8 nuclear px (50 %), intensities 1,1,1,1,1,1,5,5; T = 5 → 2/8 px, 10/16 intensity
    mask[0, :2, :] = True
    death[0, :2, :] = [[1, 1, 1, 1], [1, 1, 5, 5]]
    # tile 1: 4 nuclear px (25 %), all at 10 → 1.0 and 1.0
    mask[1, 0, :] = True
    death[1, 0, :] = 10
    # tile 2: 2 nuclear px (12.5 % < 25 %) → NaN
    mask[2, 0, :2] = True
    death[2, 0, :2] = 9
    # tile 3: nuclear but dark → pixel rate 0, intensity rate undefined (NaN)
    mask[3, :2, :] = True
    rates = tile_death_rates(death, mask, 5.0, min_nucleus_fraction=0.25)
    assert rates["death_pixel_rate"].iloc[0] == pytest.approx(2 / 8)
    assert rates["death_intensity_rate"].iloc[0] == pytest.approx(10 / 16)
    assert rates["intensity_per_pixel"].iloc[0] == pytest.approx(16 / 8)
    assert rates["death_pixel_rate"].iloc[1] == 1.0 and rates["death_intensity_rate"].iloc[1] == 1.0
    assert np.isnan(rates["death_pixel_rate"].iloc[2])
    assert rates["death_pixel_rate"].iloc[3] == 0.0
    assert np.isnan(rates["death_intensity_rate"].iloc[3])
    assert rates["nuclear_fraction"].tolist() == [0.5, 0.25, 0.125, 0.5]
    eligible = np.array([False, True, True, True])
    masked = tile_death_rates(death, mask, 5.0, eligible=eligible)
    assert np.isnan(masked["death_pixel_rate"].iloc[0])  # e.g. an edge tile


def test_pooled_threshold_separates_the_bright_class(rng):
    dim = rng.normal(100, 5, 2000)
    mid = rng.normal(400, 10, 2000)
    bright = rng.normal(1000, 20, 500)
    t = pooled_death_threshold([dim, np.concatenate([mid, bright])], classes=3)
    assert 420 < t < 950
    with pytest.raises(ValueError, match="distinct"):
        pooled_death_threshold([np.zeros(10)])


def test_preprocess_death_removes_flat_background():
    tiles = np.full((2, 64, 64), 500.0)
    tiles[1, 30:34, 30:34] = 5000.0
    out = preprocess_death(tiles, blur_sigma=1.0, rolling_ball_radius=10)
    assert out.shape == tiles.shape and (out >= 0).all()
    assert out[0].max() < 1.0  # a flat field is all background
    assert out[1, 31, 31] > 1000  # a bright spot survives


def _write_field(folder, row, col, rng, *, planes=5, size=256, bright=True):
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    nuclei = np.zeros((size, size))
    for cy in range(32, size, 64):
        for cx in range(32, size, 64):
            nuclei += (yy - cy) ** 2 + (xx - cx) ** 2 < 22**2
    for plane in range(1, planes + 1):
        for ch in (1, 2, 3, 4):
            if ch == 1:
                img = 200 + 20000 * nuclei
            elif ch == 2:  # death dye in the nuclei of the right half only
                img = 200 + (15000 if bright else 0) * nuclei * (xx >= size // 2)
            else:
                img = rng.uniform(0, 30000, (size, size))
            img = img + rng.normal(0, 50, img.shape)
            name = f"r{row:02d}c{col:02d}f01p{plane:02d}-ch{ch}sk1fk1fl1.tiff"
            tifffile.imwrite(folder / name, np.clip(img, 0, 65535).astype(np.uint16))


def test_ingest_tiles_writes_tiles_with_rates(tmp_path, rng):
    from cellsae.crops import read_h5sc

    plate = tmp_path / "plates" / "plate1"
    _write_field(plate, 2, 2, rng)
    _write_field(plate, 2, 3, rng)
    platemap = pd.DataFrame(
        {
            "plate": ["plate1", "plate1"],
            "well": ["B02", "B03"],
            "donor": ["d1", "d2"],
            "genotype": ["healthy", "SNCA"],
        }
    )
    out = tmp_path / "tiles.h5sc"
    result = ingest_tiles(
        tmp_path / "plates",
        out,
        platemap=platemap,
        tile_size=64,
        exclude_edge_tiles=False,
        min_nucleus_fraction=0.05,
        max_background_fraction=1.0,
        rolling_ball_radius=10,
    )
    assert result.n_fields == 2 and result.n_tiles == 2 * 16
    cells = read_h5sc(out, load_crops=True)
    assert (cells.obs["unit"] == "tile").all()
    assert cells.obsm["single_cell_images"].shape == (32, 3, 64, 64)
    assert set(cells.obs["genotype"]) == {"healthy", "SNCA"}
    rate = cells.obs["death_rate"].to_numpy(float)
    right = cells.obs["x"].to_numpy() >= 128
    assert np.isfinite(rate).all()
    # the death dye sits in the right half's nuclei only
    assert rate[right].min() > 0.5 and rate[~right].max() < 0.1
    pixel = cells.obs["death_pixel_rate"].to_numpy(float)
    assert pixel[right].min() > pixel[~right].max()
    with pytest.raises(FileExistsError):
        ingest_tiles(tmp_path / "plates", out, platemap=platemap)


def test_ingest_tiles_says_why_when_no_tile_has_a_death_rate(tmp_path, rng):
    _write_field(tmp_path / "plates" / "plate1", 2, 2, rng)
    with pytest.raises(ValueError, match="min_nucleus_fraction"):
        ingest_tiles(
            tmp_path / "plates",
            tmp_path / "t.h5sc",
            tile_size=64,
            max_background_fraction=1.0,
            min_nucleus_fraction=0.99,
        )
    assert not (tmp_path / "t.h5sc").exists()
