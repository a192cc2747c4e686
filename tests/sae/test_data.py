"""Streaming sources and the deterministic shuffled batch stream."""

import h5py
import numpy as np
import pytest
import zarr

from cellsae.sae.data import BatchStream, open_source


def test_stream_is_a_function_of_position(rng):
    X = rng.normal(size=(1000, 4)).astype(np.float32)
    stream = BatchStream(open_source(X), 64, seed=5, chunk_size=100, buffer_chunks=3)
    it = stream.batches()
    first = [next(it) for _ in range(40)]  # more than two epochs
    again = stream.batches(25)
    for t in range(25, 40):
        np.testing.assert_array_equal(next(again), first[t])
    # one epoch visits every row exactly once
    seen = np.concatenate(first)[:1000]
    assert len(np.unique(seen[:, 0])) > 0.99 * len(np.unique(X[:, 0])) - 64


def test_each_epoch_is_a_permutation(rng):
    X = np.arange(600, dtype=np.float32).reshape(-1, 1).repeat(2, 1)
    stream = BatchStream(open_source(X), 50, seed=0, chunk_size=100, buffer_chunks=2)
    it = stream.batches()
    epoch = np.concatenate([next(it) for _ in range(12)])[:, 0]
    assert sorted(epoch.tolist()) == list(range(600))
    assert not np.array_equal(epoch, np.arange(600))


def test_file_sources(tmp_path, rng):
    X = rng.normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    zarr.save_array(str(tmp_path / "x.zarr"), X)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["feats"] = X
    with h5py.File(tmp_path / "cells.h5ad", "w") as f:
        f.create_group("obsm")["X_cnn"] = X
    for path, key in [("x.npy", None), ("x.zarr", None), ("x.h5", "feats"),
                      ("cells.h5ad", "X_cnn")]:
        source = open_source(tmp_path / path, key=key)
        assert (source.n, source.d) == (50, 3)
        np.testing.assert_array_equal(source.read(10, 20), X[10:20])
    with pytest.raises(KeyError, match="feats"):
        open_source(tmp_path / "x.h5", key="missing")
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "absent.npy")


def test_bad_sources_raise_clear_errors():
    with pytest.raises(ValueError, match="no rows"):
        open_source(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        open_source(np.zeros(4, np.float32))
    with pytest.raises(TypeError):
        open_source({"a": 1})
