"""Checksums and safe paths: detect corrupted files, keep file names inside their folder.

Checkpoints and model files carry a digest of their tensors (``tensors_sha256``) in the
safetensors header and in the JSON sidecar, so flipped bytes or a truncated file are
caught with a :class:`IntegrityError` naming the file instead of training silently on
damaged weights. :func:`safe_join` resolves a relative name (from a plate map or the
metadata of an OME-Zarr plate) and refuses anything that would leave its root folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "IntegrityError",
    "UnsafePathError",
    "file_sha256",
    "read_safetensors",
    "safe_join",
    "tensors_sha256",
]


class IntegrityError(ValueError):
    """A file is truncated, corrupt, or does not match the checksum recorded for it."""


class UnsafePathError(ValueError):
    """A file name would resolve outside the folder it must stay in (path traversal)."""


def file_sha256(path: str | os.PathLike, *, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping) -> str:
    """Hex sha256 over the names, dtypes, shapes and bytes of a dict of tensors/arrays.

    Independent of dict order and of where the tensors live (CPU/CUDA); the same
    tensors give the same digest before writing and after reading back.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name]
        if hasattr(value, "detach"):  # torch tensor: raw bytes work for every dtype (bf16)
            import torch

            flat = value.detach().to("cpu").contiguous().reshape(-1)
            dtype, shape = str(value.dtype), tuple(value.shape)
            raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        else:
            arr = np.ascontiguousarray(value)
            dtype, shape, raw = str(arr.dtype), arr.shape, arr.tobytes()
        digest.update(f"{name}|{dtype}|{shape}|".encode())
        digest.update(raw)
    return digest.hexdigest()


def read_safetensors(path: str | os.PathLike, *, expected_sha256: str | None = None,
                     what: str = "checkpoint"):
    """Load a safetensors file (torch tensors on CPU) and verify its tensors' digest.

    The digest is taken from ``expected_sha256`` (e.g. the JSON sidecar) or else from the
    file's own header metadata (``tensors_sha256``); files written before digests existed
    (neither present) load unverified.

    Returns
    -------
    (tensors, metadata) : dict of tensors, dict of header metadata strings.

    Raises
    ------
    IntegrityError : the file cannot be parsed (truncated, overwritten header) or its
        tensors do not match the recorded digest (flipped bytes).
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors raises its own and OSError types
        raise IntegrityError(
            f"{what} '{path}' is unreadable ({type(err).__name__}: {err}); it is truncated "
            "or corrupt. Delete it and resume from an earlier checkpoint, or re-create it"
        ) from None
    expected = expected_sha256 or metadata.get("tensors_sha256")
    if expected:
        actual = tensors_sha256(tensors)
        if actual != expected:
            raise IntegrityError(
                f"{what} '{path}' is corrupt: the sha256 of its tensors is {actual[:12]}… but "
                f"{expected[:12]}… was recorded when it was written. Delete it and resume "
                "from an earlier checkpoint, or re-create it"
            )
    return tensors, metadata


def safe_join(root: str | os.PathLike, name: str | os.PathLike, *, what: str = "file") -> Path:
    """``root / name``, refusing names that escape ``root``.

    Absolute names, ``..`` components that climb above ``root``, NUL bytes, and symbolic
    links that resolve outside ``root`` are rejected with :class:`UnsafePathError`.
    """
    text = os.fspath(name)
    if isinstance(text, bytes):
        raise UnsafePathError(f"{what} name {text!r} must be text, not bytes")
    if "\x00" in text:
        raise UnsafePathError(f"{what} name {text!r} contains a NUL byte")
    if not text or os.path.isabs(text) or text.startswith(("/", "\\")) or (
            len(text) > 1 and text[1] == ":"):
        raise UnsafePathError(f"{what} name {text!r} must be a relative path inside "
                              f"'{root}'")
    root_path = Path(root).resolve()
    target = (root_path / text).resolve()
    if target != root_path and root_path not in target.parents:
        raise UnsafePathError(f"{what} name {text!r} resolves to '{target}', outside "
                              f"'{root_path}'; names must stay inside their folder")
    return root_path / text
