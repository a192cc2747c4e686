"""Streaming training data: arrays, ``.npy`` memmaps, zarr arrays and h5 datasets.

Rows are read in contiguous chunks (cheap on disk and in compressed stores), a shuffle
buffer of several chunks is permuted, and batches are cut from the shuffled stream. The
stream is a pure function of ``(seed, position)``: batch ``t`` is the same whether training
runs straight through or resumes from a checkpoint at step ``t``, and resuming skips to the
right chunk without reading what came before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_H5_SUFFIXES = (".h5", ".hdf5", ".h5ad", ".h5sc")


@dataclass
class ArraySource:
    """A 2-D row store read in blocks. ``array`` is anything with ``shape`` and slicing."""

    array: Any
    name: str = "X"

    def __post_init__(self) -> None:
        shape = tuple(self.array.shape)
        if len(shape) != 2:
            raise ValueError(f"{self.name} must be 2-D (n_samples, d_in), got shape {shape}")
        if shape[0] == 0:
            raise ValueError(f"{self.name} has no rows; there is nothing to train on or encode")
        if shape[1] == 0:
            raise ValueError(f"{self.name} has no columns")
        dtype = np.dtype(getattr(self.array, "dtype", np.float32))
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise TypeError(f"{self.name} must be numeric, got dtype {dtype}")

    @property
    def n(self) -> int:
        return int(self.array.shape[0])

    @property
    def d(self) -> int:
        return int(self.array.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a C-contiguous float32 array."""
        try:
            block = np.ascontiguousarray(self.array[start:stop], dtype=np.float32)
        except (OSError, RuntimeError, ValueError) as err:  # codec, I/O or truncation errors
            raise ValueError(f"{self.name}: rows {start}..{stop - 1} cannot be read "
                             f"({type(err).__name__}: {err}); the file or store is truncated "
                             "or corrupt: re-create it") from None
        return block if block.flags.writeable else block.copy()

    def check_block(self, block: np.ndarray, offset: int) -> None:
        """Raise a ValueError naming the first row (global index) with NaN or Inf, or
        with values so large that float32 arithmetic on them overflows."""
        if block.size:
            # centring and norms add and square values: beyond this they overflow float32
            limit = np.finfo(np.float32).max / (4.0 * np.sqrt(block.shape[1]))
            big = np.abs(block).max(1) > limit
            if big.any() and np.isfinite(block[big]).all():
                row = offset + int(np.flatnonzero(big)[0])
                raise ValueError(
                    f"{self.name} has values above {limit:.3g} in absolute value (first: row "
                    f"{row}); float32 arithmetic on them overflows. Rescale the data (e.g. "
                    "divide by its standard deviation) before training or encoding")
        if not np.isfinite(block).all():
            bad = np.flatnonzero(~np.isfinite(block).all(1))
            raise ValueError(
                f"{self.name} contains NaN or Inf in row {offset + int(bad[0])} "
                f"({len(bad)} bad row(s) among rows {offset}..{offset + len(block) - 1}); "
                "remove or impute them before training or encoding")


def open_source(X: Any, *, key: str | None = None) -> ArraySource:
    """Wrap an input as an :class:`ArraySource`.

    Parameters
    ----------
    X
        A numpy array (or memmap), a torch tensor, a zarr array, an h5py dataset, an
        ``ArraySource``, or a path: ``.npy`` (memory-mapped), ``.zarr`` (zarr array, or a
        group with ``key``), ``.h5``/``.hdf5``/``.h5ad`` (dataset ``key``; for ``.h5ad``
        a name like ``"X_cnn"`` is looked up under ``obsm/``).
    key
        Dataset or array name inside a container file.
    """
    if isinstance(X, ArraySource):
        return X
    if isinstance(X, str | os.PathLike):
        return _open_path(Path(X), key)
    try:
        import torch

        if isinstance(X, torch.Tensor):
            return ArraySource(X.detach().cpu().numpy())
    except ImportError:  # pragma: no cover
        pass
    if hasattr(X, "shape") and hasattr(X, "__getitem__"):
        if isinstance(X, np.ndarray) or hasattr(X, "dtype"):
            return ArraySource(X)
    if isinstance(X, list | tuple):
        return ArraySource(np.asarray(X, dtype=np.float32))
    raise TypeError(f"cannot read training data from {type(X).__name__}; pass an array, a "
                    "memmap, a zarr array, an h5py dataset or a .npy/.zarr/.h5 path")


def _open_path(path: Path, key: str | None) -> ArraySource:
    if not path.exists():
        raise FileNotFoundError(f"input data not found: '{path}'")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:  # allow_pickle stays False: an object array from elsewhere is refused
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"'{path}' is not a readable .npy array ({err}); it may be "
                             "truncated, corrupt or hold Python objects, which are not "
                             "loaded for safety. Save a numeric array with numpy.save") from None
        return ArraySource(array, name=str(path))
    if suffix == ".zarr" or path.is_dir():
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
            if key is not None:
                node = node[key]
        except KeyError:
            raise
        except Exception as err:  # noqa: BLE001 - zarr raises many types for a bad store
            raise ValueError(f"'{path}' is not a readable zarr store ({type(err).__name__}: "
                             f"{err}); it may be truncated or corrupt") from None
        if not hasattr(node, "shape"):
            raise ValueError(f"'{path}' is a zarr group; pass key= naming the array inside "
                             f"it (found: {sorted(node.keys())})")
        return ArraySource(node, name=f"{path}:{key}" if key else str(path))
    if suffix in _H5_SUFFIXES:
        import h5py

        try:
            handle = h5py.File(path, "r")
        except OSError as err:
            raise ValueError(f"'{path}' is not a readable HDF5 file ({err}); it may be "
                             "truncated or corrupt") from None
        names = [key] if key else []
        if key and suffix == ".h5ad" and "/" not in key:
            names = [f"obsm/{key}", key]
        if not names:
            names = ["X"] if suffix == ".h5ad" else []
        for name in names:
            if name in handle and isinstance(handle[name], h5py.Dataset):
                return ArraySource(handle[name], name=f"{path}:{name}")
        found: list[str] = []
        handle.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
        handle.close()
        raise KeyError(f"no dataset {key!r} in '{path}'; datasets found: {found[:20]}. "
                       "Pass key= (e.g. 'obsm/X_cnn') naming a 2-D dataset")
    raise ValueError(f"unsupported input file '{path}'; use .npy, .zarr, .h5/.hdf5 or .h5ad")


class BatchStream:
    """Shuffled batches from an :class:`ArraySource`, deterministic in ``(seed, position)``.

    Parameters
    ----------
    source
        The rows.
    batch_size
        Rows per batch.
    seed
        Shuffling seed.
    chunk_size
        Contiguous rows read at a time.
    buffer_chunks
        Chunks shuffled together; the shuffle buffer holds ``chunk_size × buffer_chunks``
        rows. When the whole data set fits in the buffer, every epoch is a full shuffle.
    check_finite
        Check each chunk for NaN/Inf (first pass over the data only).
    """

    def __init__(self, source: ArraySource, batch_size: int, *, seed: int = 0,
                 chunk_size: int = 65_536, buffer_chunks: int = 16,
                 check_finite: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.source = source
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.chunk_size = int(min(chunk_size, source.n))
        self.buffer_chunks = int(buffer_chunks)
        self.check_finite = check_finite
        self.n_chunks = -(-source.n // self.chunk_size)
        self._checked: set[int] = set()

    def _chunk_len(self, c: int) -> int:
        return min(self.chunk_size, self.source.n - c * self.chunk_size)

    def _groups(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch, 0]).permutation(self.n_chunks)
        return [order[i:i + self.buffer_chunks] for i in range(0, self.n_chunks,
                                                               self.buffer_chunks)]

    def _load_group(self, epoch: int, g: int, chunks: np.ndarray) -> np.ndarray:
        blocks = []
        for c in chunks:
            start = int(c) * self.chunk_size
            block = self.source.read(start, start + self._chunk_len(int(c)))
            if self.check_finite and int(c) not in self._checked:
                self.source.check_block(block, start)
                self._checked.add(int(c))
            blocks.append(block)
        rows = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        perm = np.random.default_rng([self.seed, epoch, g + 1]).permutation(len(rows))
        return rows[perm]

    def batches(self, start_batch: int = 0) -> Iterator[np.ndarray]:
        """Infinite iterator of (batch_size, d) float32 batches, from batch ``start_batch``."""
        skip = start_batch * self.batch_size  # rows of the stream to skip
        epoch_len = self.source.n
        epoch = skip // epoch_len
        skip -= epoch * epoch_len
        carry = np.empty((0, self.source.d), dtype=np.float32)
        while True:
            for g, chunks in enumerate(self._groups(epoch)):
                size = sum(self._chunk_len(int(c)) for c in chunks)
                if skip >= size:
                    skip -= size
                    continue
                rows = self._load_group(epoch, g, chunks)[skip:]
                skip = 0
                if len(carry):
                    rows = np.concatenate([carry, rows])
                n_full = len(rows) // self.batch_size
                for b in range(n_full):
                    yield rows[b * self.batch_size:(b + 1) * self.batch_size]
                carry = rows[n_full * self.batch_size:]
            epoch += 1


def sample_rows(source: ArraySource, n_max: int = 65_536, *, seed: int = 0) -> np.ndarray:
    """Up to ``n_max`` rows spread over the data (a few contiguous blocks, cheap to read)."""
    if source.n <= n_max:
        block = source.read(0, source.n)
        source.check_block(block, 0)
        return block
    n_blocks = 16
    size = n_max // n_blocks
    starts = np.linspace(0, source.n - size, n_blocks).astype(int)
    blocks = []
    for s in starts:
        block = source.read(int(s), int(s) + size)
        source.check_block(block, int(s))
        blocks.append(block)
    return np.concatenate(blocks)
