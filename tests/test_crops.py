from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellsae.crops import CropFormatError, CropStore, H5scWriter, read_h5sc, write_h5sc


def _obs(n):
    return pd.DataFrame({"well": ["A01"] * n}, index=[f"c{i}" for i in range(n)])


def test_streaming_writer_roundtrip_and_anndata_compatible(tmp_path, rng):
    crops = rng.random((10, 3, 16, 16)).astype(np.float32)
    with H5scWriter(tmp_path / "x.h5sc", _obs(10), channel_names=["a", "b", "c"], crop_size=16,
                    obsm={"X_measure": np.ones((10, 2))}) as w:
        w.write(crops[:4])
        w.write(crops[4:])
    full = ad.read_h5ad(tmp_path / "x.h5sc")  # plain anndata can read it
    np.testing.assert_allclose(full.obsm["single_cell_images"], crops, atol=1e-3)
    lazy = read_h5sc(tmp_path / "x.h5sc")
    assert "single_cell_images" not in lazy.obsm and "X_measure" in lazy.obsm
    store = CropStore(tmp_path / "x.h5sc")
    assert store.channel_names == ["a", "b", "c"] and len(store) == 10
    np.testing.assert_allclose(store[[7, 2, 2]], crops[[7, 2, 2]], atol=1e-3)
    np.testing.assert_allclose(store[np.arange(10) % 2 == 0], crops[::2], atol=1e-3)


def test_incomplete_or_failed_write_leaves_no_file(tmp_path, rng):
    path = tmp_path / "x.h5sc"
    with pytest.raises(RuntimeError, match="only 4 of 10"):
        with H5scWriter(path, _obs(10), channel_names=["a"], crop_size=8) as w:
            w.write(rng.random((4, 1, 8, 8)))
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="NaN"):
        with H5scWriter(path, _obs(2), channel_names=["a"], crop_size=8) as w:
            w.write(np.full((2, 1, 8, 8), np.nan))
    assert list(tmp_path.iterdir()) == []


def test_wrong_shape_is_rejected(tmp_path, rng):
    with pytest.raises(ValueError, match=r"shape \(n, 1, 8, 8\)"):
        with H5scWriter(tmp_path / "x.h5sc", _obs(2), channel_names=["a"], crop_size=8) as w:
            w.write(rng.random((2, 2, 8, 8)))


def test_existing_file_is_kept_when_rewrite_fails(tmp_path, rng):
    adata = ad.AnnData(obs=_obs(3))
    adata.obsm["single_cell_images"] = rng.random((3, 1, 8, 8)).astype(np.float16)
    write_h5sc(tmp_path / "x.h5sc", adata)
    before = (tmp_path / "x.h5sc").read_bytes()
    with pytest.raises(RuntimeError):
        with H5scWriter(tmp_path / "x.h5sc", _obs(3), channel_names=["a"], crop_size=8) as w:
            w.write(rng.random((1, 1, 8, 8)))
    assert (tmp_path / "x.h5sc").read_bytes() == before


def test_corrupt_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="crops file not found"):
        read_h5sc(tmp_path / "nope.h5sc")
    bad = tmp_path / "bad.h5sc"
    bad.write_bytes(b"\x89HDF\r\n" + b"garbage" * 10)
    with pytest.raises(CropFormatError, match="truncated or corrupt"):
        CropStore(bad)
    adata = ad.AnnData(obs=_obs(2))
    adata.write_h5ad(tmp_path / "plain.h5ad")
    with pytest.raises(CropFormatError, match="not a crops file"):
        read_h5sc(tmp_path / "plain.h5ad")
