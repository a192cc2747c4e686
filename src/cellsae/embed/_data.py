"""Crop sources for training and extraction: arrays, CropStores, .h5sc paths, AnnData."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..crops import CROPS_KEY, CropStore

logger = logging.getLogger(__name__)

PRELOAD_BYTES = 2 << 30  # crops up to 2 GiB (float16) are read into memory once


def as_crop_store(crops) -> CropStore:
    """Accept a CropStore, a (n, C, H, W) array, an .h5sc path or an AnnData with crops."""
    if isinstance(crops, CropStore):
        return crops
    if isinstance(crops, str | os.PathLike):
        return CropStore(Path(crops))
    if isinstance(crops, np.ndarray):
        if crops.ndim != 4:
            raise ValueError(f"crops must be a (n, C, H, W) array, got shape {crops.shape}")
        return CropStore(crops)
    if isinstance(crops, torch.Tensor):
        return as_crop_store(crops.detach().cpu().numpy())
    try:
        import anndata as ad
    except ImportError:  # pragma: no cover
        ad = None
    if ad is not None and isinstance(crops, ad.AnnData):
        if CROPS_KEY in crops.obsm:
            names = crops.uns.get(CROPS_KEY, {}).get("channel_names")
            return CropStore(np.asarray(crops.obsm[CROPS_KEY]),
                             channel_names=None if names is None else list(names))
        if "h5sc_path" in crops.uns:
            return CropStore(crops.uns["h5sc_path"])
        raise KeyError(f"the AnnData holds no crops: no obsm['{CROPS_KEY}'] and no "
                       f"uns['h5sc_path']; found obsm keys {list(crops.obsm)}")
    raise TypeError("crops must be a CropStore, a (n, C, H, W) numpy array, an .h5sc path or "
                    f"an AnnData with obsm['{CROPS_KEY}'], got {type(crops).__name__}")


def check_crops_finite(store: CropStore, indices: np.ndarray | None = None,
                       batch_size: int = 1024) -> None:
    """Raise ValueError naming the first crop holding NaN or Inf."""
    if store._array is not None:
        arr = store._array if indices is None else store._array[indices]
        flat = np.asarray(arr).reshape(len(arr), -1)
        finite = np.isfinite(flat).all(1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            first = int(bad[0] if indices is None else indices[bad[0]])
            raise ValueError(f"crops contain NaN or Inf in {len(bad)} crop(s) (first: cell "
                             f"{first}); drop or repair those cells before training")
        return
    idx = np.arange(len(store)) if indices is None else np.sort(np.asarray(indices))
    n_bad, first = 0, None
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        block = store[chunk].reshape(len(chunk), -1)
        finite = np.isfinite(block).all(1)
        if not finite.all():
            n_bad += int((~finite).sum())
            first = int(chunk[np.flatnonzero(~finite)[0]]) if first is None else first
    if n_bad:
        raise ValueError(f"crops contain NaN or Inf in {n_bad} crop(s) (first: cell {first}); "
                         "drop or repair those cells before training")


class CropReader:
    """Read batches of crops by index as float32 tensors, from memory when they fit.

    Parameters
    ----------
    store : the crops.
    indices : rows that will be read (preloading keeps only these).
    preload : ``True``, ``False`` or ``"auto"`` (when they take under 2 GiB as float16).
    """

    def __init__(self, store: CropStore, indices: np.ndarray | None = None,
                 preload: bool | str = "auto"):
        self.store = store
        idx = np.arange(len(store)) if indices is None else np.asarray(indices)
        nbytes = len(idx) * int(np.prod(store.shape[1:])) * 2
        if preload == "auto":
            preload = store._array is not None or nbytes <= PRELOAD_BYTES
        self.memory: torch.Tensor | None = None
        self.row_of: np.ndarray | None = None
        if preload:
            order = np.unique(idx)
            data = np.empty((len(order), *store.shape[1:]), np.float16)
            for start in range(0, len(order), 2048):
                data[start:start + 2048] = store[order[start:start + 2048]]
            self.memory = torch.from_numpy(data)
            self.row_of = np.full(len(store), -1, np.int64)
            self.row_of[order] = np.arange(len(order))

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx)
        if self.memory is not None:
            return self.memory[torch.from_numpy(self.row_of[idx])].float()
        return torch.from_numpy(self.store[idx])


class _BatchDataset(torch.utils.data.Dataset):
    """Each item is a whole batch: ``batches[i]`` indices → (crops, position)."""

    def __init__(self, source, batches: list[np.ndarray]):
        self.path = source.path if isinstance(source, CropStore) else None
        self.source = source
        self.batches = batches
        self._store = None
        self._pid = None

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        if self.path is not None:
            # each worker process opens its own handle (h5py handles do not survive fork)
            if self._store is None or self._pid != os.getpid():
                self._store = CropStore(self.path)
                self._pid = os.getpid()
            return torch.from_numpy(self._store[self.batches[i]]), i
        return torch.from_numpy(self.source[self.batches[i]]), i


def iter_batches(reader: CropReader, batches: list[np.ndarray], *, num_workers: int = 0):
    """Yield float32 crop tensors for each index batch, with optional worker processes."""
    if num_workers <= 0 or reader.memory is not None:
        for b in batches:
            yield reader(b)
        return
    dataset = _BatchDataset(reader.store, batches)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False,
                                         num_workers=num_workers, prefetch_factor=2,
                                         persistent_workers=False)
    for crops, _ in loader:
        yield crops
