"""Encoder files: weights in safetensors, architecture and provenance in JSON.

``save_encoder(model, "enc.safetensors")`` writes ``enc.safetensors`` and
``enc.json`` (format version, architecture keyword arguments, channel names, class
names, training summary); ``load_encoder("enc.safetensors")`` (or the ``.json``)
rebuilds the model. No pickle anywhere: a file from elsewhere can be loaded safely.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .._utils import atomic_path, atomic_write_text, require_file
from ..integrity import read_safetensors, tensors_sha256
from .base import Encoder, build_encoder

logger = logging.getLogger(__name__)

FORMAT = "cellsae.encoder"
FORMAT_VERSION = 1


class EncoderFileError(ValueError):
    """An encoder file is missing, of another format or version, or does not match."""


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return path, path.with_suffix(".json")


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> Path:
    """Write tensors to a safetensors file atomically (contiguous CPU copies)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)
    return Path(path)


def save_encoder(model: Encoder, path: str | os.PathLike, *,
                 extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` to ``path`` (.safetensors) and its sibling ``.json``.

    Parameters
    ----------
    model : a cellsae encoder (``ResNetEncoder``, ``ViTEncoder``).
    path : destination ``.safetensors`` path (the suffix is added if missing).
    extra : JSON-able metadata stored beside the architecture (channel names, classes,
        training summary).

    Returns
    -------
    The path of the safetensors file.
    """
    weights_path, meta_path = _paths(path)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config(),
            **(extra or {})}
    state = model.state_dict()
    meta["tensors_sha256"] = tensors_sha256(state)  # load_encoder detects corruption
    text = json.dumps(meta, indent=2, default=_json_default)
    save_tensors(weights_path, state, metadata={"format": FORMAT,
                                                "tensors_sha256": meta["tensors_sha256"]})
    atomic_write_text(meta_path, text)
    logger.info("saved encoder to %s", weights_path)
    return weights_path


def read_encoder_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of an encoder file."""
    _, meta_path = _paths(path)
    require_file(meta_path, what="encoder metadata (.json beside the .safetensors)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EncoderFileError(f"'{meta_path}' is not valid JSON ({err})") from None
    if meta.get("format") != FORMAT:
        raise EncoderFileError(f"'{meta_path}' is not a cellsae encoder file "
                               f"(format={meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise EncoderFileError(f"'{meta_path}' has format version {meta['format_version']}, "
                               f"newer than this cellsae reads ({FORMAT_VERSION}); upgrade cellsae")
    return meta


def load_encoder(path: str | os.PathLike, *, device: Any = "cpu") -> Encoder:
    """Rebuild an encoder saved by :func:`save_encoder`.

    The metadata is attached as ``model.meta`` (channel names, classes, …).
    """
    weights_path, _ = _paths(path)
    meta = read_encoder_meta(path)
    require_file(weights_path, what="encoder weights")
    config = dict(meta["config"])
    arch = config.pop("arch")
    model = build_encoder(arch, **config)
    state, _ = read_safetensors(weights_path, expected_sha256=meta.get("tensors_sha256"),
                                what="encoder weights")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EncoderFileError(f"weights in '{weights_path}' do not match the architecture in "
                               f"its JSON: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.meta = meta
    return model.to(device).eval()


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
