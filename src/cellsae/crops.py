"""The crops format every stage reads and writes: ``.h5sc``.

An ``.h5sc`` file is an AnnData HDF5 file (readable with ``anndata.read_h5ad``) laid out
as scPortrait keeps single-cell images:

- ``obsm["single_cell_images"]``: ``(n_cells, n_channels, H, W)`` float16 crops,
- ``uns["single_cell_images"]``: ``channel_names``, ``image_size``, ``n_channels``,
- ``obs``: one row per cell (plate, well, donor, genotype, QC flags, …).

Crops are never loaded whole unless asked: :class:`CropStore` reads them by index from
the HDF5 dataset, and :class:`H5scWriter` streams them in chunks so a million cells never
sit in memory. Every write goes to a temporary file renamed on success.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from ._utils import atomic_path, require_file

logger = logging.getLogger(__name__)

CROPS_KEY = "single_cell_images"
_DATASET = f"obsm/{CROPS_KEY}"


class CropFormatError(ValueError):
    """A file is not a valid ``.h5sc`` crops file."""


def _crop_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    per_cell = c * h * w * 2
    rows = max(1, min(n, (1 << 20) // max(per_cell, 1)))  # ~1 MiB chunks
    return (rows, c, h, w)


def _not_utf8(values) -> str | None:
    for value in values:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return value
    return None


def check_obs(obs: pd.DataFrame) -> None:
    """Refuse cell tables that cannot be stored faithfully: duplicated cell names (rows
    of later stages would be ambiguous) and text that is not valid UTF-8 (HDF5 stores
    UTF-8; such names usually come from file names in another encoding)."""
    index = pd.Index(obs.index.astype(str))
    if not index.is_unique:
        dups = index[index.duplicated()].unique()
        raise ValueError(f"cell names (obs index) must be unique: {len(dups)} are duplicated, "
                         f"e.g. {list(dups[:3])}; call adata.obs_names_make_unique() or build "
                         "names from plate, well, field and cell label")
    bad = _not_utf8(index)
    if bad is not None:
        raise ValueError(f"cell name {bad!r} is not valid UTF-8 text; rename it (e.g. "
                         "decode file names with the encoding they were written in)")
    for col in obs.columns:
        if obs[col].dtype == object or isinstance(obs[col].dtype, pd.CategoricalDtype):
            values = obs[col].cat.categories if isinstance(obs[col].dtype,
                                                           pd.CategoricalDtype) else obs[col]
            bad = _not_utf8(pd.unique(np.asarray(values, dtype=object)))
            if bad is not None:
                raise ValueError(f"obs column {col!r} holds {bad!r}, which is not valid UTF-8 "
                                 "text; fix its encoding before writing")


class H5scWriter:
    """Stream crops into a new ``.h5sc`` file, chunk by chunk.

    Parameters
    ----------
    path
        Destination; written to a temporary name and renamed by :meth:`close`.
    obs : DataFrame with one row per cell (its length fixes ``n_cells``).
    channel_names : names of the C channels.
    crop_size : H = W of every crop.
    uns : extra unstructured metadata stored beside the crops.
    obsm : extra per-cell arrays (e.g. measurements), each with ``n_cells`` rows.

    Use as a context manager; an exception inside the block removes the temporary file.
    """

    def __init__(self, path: str | Path, obs: pd.DataFrame, *, channel_names: Sequence[str],
                 crop_size: int, uns: dict | None = None, obsm: dict | None = None,
                 compression: str | None = None):
        self.path = Path(path)
        self.n_cells = len(obs)
        self.channel_names = [str(c) for c in channel_names]
        if len(set(self.channel_names)) != len(self.channel_names):
            raise ValueError(f"channel names must be unique, got {self.channel_names}")
        self.crop_size = int(crop_size)
        check_obs(obs)
        self._ctx = atomic_path(self.path, suffix=".h5sc")
        self._tmp = self._ctx.__enter__()
        self._filled = 0
        try:
            meta = ad.AnnData(obs=obs.copy(), uns=dict(uns or {}), obsm=dict(obsm or {}))
            meta.obs_names = meta.obs_names.astype(str)
            meta.uns[CROPS_KEY] = {
                "channel_names": np.array(self.channel_names, dtype=object),
                "image_size": self.crop_size,
                "n_channels": len(self.channel_names),
            }
            meta.write_h5ad(self._tmp)
            self._file = h5py.File(self._tmp, "a")
            shape = (self.n_cells, len(self.channel_names), self.crop_size, self.crop_size)
            dset = self._file.create_dataset(
                _DATASET, shape=shape, dtype="float16",
                chunks=_crop_chunks(shape) if self.n_cells else None, compression=compression,
            )
            dset.attrs["encoding-type"] = "array"
            dset.attrs["encoding-version"] = "0.2.0"
            self._dset = dset
        except BaseException as err:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise

    def write(self, crops: np.ndarray, start: int | None = None) -> None:
        """Write ``crops`` (n, C, H, W) at row ``start`` (default: after the last write)."""
        crops = np.asarray(crops)
        start = self._filled if start is None else int(start)
        expected = (len(self.channel_names), self.crop_size, self.crop_size)
        if crops.ndim != 4 or crops.shape[1:] != expected:
            raise ValueError(f"crops must have shape (n, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}), got {crops.shape}")
        if start + len(crops) > self.n_cells:
            raise ValueError(f"writing {len(crops)} crops at row {start} overflows the "
                             f"{self.n_cells} cells declared in obs")
        if not np.isfinite(crops).all():
            raise ValueError("crops contain NaN or Inf values")
        self._dset[start:start + len(crops)] = crops.astype(np.float16)
        self._filled = max(self._filled, start + len(crops))

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self._filled != self.n_cells:
            err = RuntimeError(f"only {self._filled} of {self.n_cells} crops were written to "
                               f"'{self.path}'; the file was not created")
            self.abort(err)
            raise err
        self._file.close()
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self, err: BaseException | None = None) -> None:
        """Discard the temporary file."""
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - closing a broken handle must not mask the error
            pass
        err = err or RuntimeError("aborted")
        self._ctx.__exit__(type(err), err, err.__traceback__)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)
        return False


def write_h5sc(path: str | Path, adata: ad.AnnData, *, chunk_size: int = 1024) -> Path:
    """Write an in-memory AnnData holding ``obsm["single_cell_images"]`` as ``.h5sc``."""
    if CROPS_KEY not in adata.obsm:
        raise KeyError(f"adata.obsm has no '{CROPS_KEY}'; found: {list(adata.obsm)}")
    crops = adata.obsm[CROPS_KEY]
    info = adata.uns.get(CROPS_KEY, {})
    channel_names = list(info.get("channel_names", [f"ch{i}" for i in range(crops.shape[1])]))
    uns = {k: v for k, v in adata.uns.items() if k != CROPS_KEY}
    obsm = {k: v for k, v in adata.obsm.items() if k != CROPS_KEY}
    with H5scWriter(path, adata.obs, channel_names=channel_names, crop_size=crops.shape[-1],
                    uns=uns, obsm=obsm) as writer:
        for start in range(0, len(crops), chunk_size):
            writer.write(crops[start:start + chunk_size])
    return Path(path)


def _check_h5sc(path: Path) -> None:
    try:
        with h5py.File(path, "r") as f:
            if _DATASET not in f:
                raise CropFormatError(f"'{path}' has no '{_DATASET}' dataset: not a crops file "
                                      "(write one with cellsae.crops.write_h5sc or `cellsae ingest`)")
            if f[_DATASET].ndim != 4:
                raise CropFormatError(f"'{path}': crops must be 4-D (n, C, H, W), got shape "
                                      f"{f[_DATASET].shape}")
    except OSError as err:
        raise CropFormatError(f"'{path}' is not a readable HDF5 file ({err}); it may be "
                              "truncated or corrupt") from None


def read_h5sc(path: str | Path, *, load_crops: bool = False) -> ad.AnnData:
    """Read a ``.h5sc`` file as AnnData.

    With ``load_crops=False`` (default) everything but the crops is loaded; read crops
    with :class:`CropStore` (``CropStore(path)[idx]``). ``adata.uns["h5sc_path"]`` records
    the file so later stages can find the crops.
    """
    path = require_file(path, what="crops file")
    _check_h5sc(path)
    with h5py.File(path, "r") as f:
        from anndata.io import read_elem

        obs = read_elem(f["obs"])
        var = read_elem(f["var"]) if "var" in f else None
        uns = read_elem(f["uns"]) if "uns" in f else {}
        obsm = {k: read_elem(f["obsm"][k]) for k in f["obsm"] if load_crops or k != CROPS_KEY}
    adata = ad.AnnData(obs=obs, var=var, uns=uns, obsm=obsm)
    adata.uns["h5sc_path"] = str(path)
    return adata


class CropStore:
    """Lazy, index-able access to the crops of a ``.h5sc`` file (or an in-memory array).

    ``store[idx]`` returns float32 ``(len(idx), C, H, W)``; ``store.iter_batches(n)``
    yields ``(start, crops)`` chunks. Indices may be any order; they are read sorted and
    returned in the order asked.
    """

    def __init__(self, source: str | Path | np.ndarray, channel_names: Sequence[str] | None = None):
        self._file = None
        if isinstance(source, np.ndarray):
            if source.ndim != 4:
                raise ValueError(f"crops must be (n, C, H, W), got shape {source.shape}")
            self.path = None
            self._array = source
            self.shape = source.shape
            self.channel_names = list(channel_names or [f"ch{i}" for i in range(source.shape[1])])
            return
        self.path = require_file(source, what="crops file")
        _check_h5sc(self.path)
        self._array = None
        with h5py.File(self.path, "r") as f:
            self.shape = tuple(f[_DATASET].shape)
            names = None
            if "uns" in f and CROPS_KEY in f["uns"] and "channel_names" in f["uns"][CROPS_KEY]:
                names = [x.decode() if isinstance(x, bytes) else str(x)
                         for x in f["uns"][CROPS_KEY]["channel_names"][()]]
        self.channel_names = names or [f"ch{i}" for i in range(self.shape[1])]

    def __len__(self) -> int:
        return int(self.shape[0])

    def _dataset(self):
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file[_DATASET]

    def __getitem__(self, idx) -> np.ndarray:
        if self._array is not None:
            return np.asarray(self._array[idx], dtype=np.float32)
        dset = self._dataset()
        if isinstance(idx, slice):
            return dset[idx].astype(np.float32)
        idx = np.asarray(idx)
        if idx.ndim == 0:
            return dset[int(idx)].astype(np.float32)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if len(idx) == 0:
            return np.zeros((0, *self.shape[1:]), np.float32)
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"crop index out of range for {len(self)} cells")
        order = np.argsort(idx)
        sorted_idx = idx[order]
        uniq, inverse = np.unique(sorted_idx, return_inverse=True)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        if hi - lo <= 4 * len(uniq):  # dense enough: one contiguous read is faster
            block = dset[lo:hi][uniq - lo]
        else:
            block = dset[uniq]
        out = np.empty((len(idx), *self.shape[1:]), np.float32)
        out[order] = block[inverse]
        return out

    def iter_batches(self, batch_size: int = 256):
        for start in range(0, len(self), batch_size):
            yield start, self[start:start + batch_size]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self):
        self.close()
