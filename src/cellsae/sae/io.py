"""Saving and loading SAEs and training checkpoints: safetensors + a JSON sidecar.

A saved SAE is ``NAME.safetensors`` (weights, normalisation folded in, so the model takes
raw inputs) and ``NAME.json`` (format version, architecture, hyperparameters, training
statistics). No pickle anywhere.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .._utils import atomic_path, atomic_write_text
from ..integrity import read_safetensors, tensors_sha256
from .base import SAE

FORMAT = "cellsae.sae"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "cellsae.sae.checkpoint"

logger = logging.getLogger(__name__)


def _paths(path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    elif path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return path, path.with_suffix(".json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | torch.Tensor):
        return np.asarray(value).tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _state_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}


def save_sae(sae: SAE, path, *, metadata: dict | None = None) -> Path:
    """Write ``sae`` (normalisation folded into the weights) and its sidecar; return the path.

    Both files are written atomically; an existing model at ``path`` is replaced only once
    the new one is complete.
    """
    weights, sidecar = _paths(path)
    model = copy.deepcopy(sae).cpu().fold_normalisation()
    info = dict(getattr(sae, "train_info", {}) or {})
    info.update(metadata or {})
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "arch": sae.arch,
        "d_in": sae.d_in, "d_sae": sae.d_sae, "hparams": sae.hparams(),
        "normalisation": "folded into the weights; the model takes raw inputs",
        "training": info,
    }
    tensors = _state_tensors(model)
    header["tensors_sha256"] = tensors_sha256(tensors)  # detects a corrupted weights file
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT,
                                               "format_version": str(FORMAT_VERSION),
                                               "tensors_sha256": header["tensors_sha256"]})
    atomic_write_text(sidecar, json.dumps(_jsonable(header), indent=2))
    return weights


def _read_sidecar(sidecar: Path, expected_format: str) -> dict:
    if not sidecar.exists():
        raise FileNotFoundError(f"the JSON sidecar '{sidecar}' is missing; a cellsae SAE is "
                                "saved as NAME.safetensors plus NAME.json")
    try:
        header = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"'{sidecar}' is not valid JSON: {err}") from None
    if header.get("format") != expected_format:
        raise ValueError(f"'{sidecar}' is not a {expected_format} file "
                         f"(format={header.get('format')!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"'{sidecar}' has format_version {version!r}; this cellsae reads "
                         f"versions up to {FORMAT_VERSION}. Upgrade cellsae to load it")
    return header


def load(path, *, device: Any = "cpu") -> SAE:
    """Load an SAE saved with :meth:`SAE.save` (``NAME``, ``NAME.safetensors`` or the JSON)."""
    from .._utils import resolve_device
    from .registry import make_sae

    weights, sidecar = _paths(path)
    if not weights.exists():
        raise FileNotFoundError(f"SAE weights not found: '{weights}'")
    header = _read_sidecar(sidecar, FORMAT)
    sae = make_sae(header["arch"], header["d_in"], header["d_sae"], **header["hparams"])
    tensors, _ = read_safetensors(weights, expected_sha256=header.get("tensors_sha256"),
                                  what="SAE weights file")
    missing = set(sae.state_dict()) - set(tensors)
    if missing:
        raise ValueError(f"'{weights}' lacks tensors {sorted(missing)} for a "
                         f"{header['arch']!r} SAE; the file is damaged or from another tool")
    sae.load_state_dict(tensors, strict=True)
    sae.train_info = header.get("training", {})
    sae.eval()
    return sae.to(resolve_device(device))


# -- training checkpoints -------------------------------------------------------------------


def save_checkpoint(path, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write a training checkpoint (tensors + JSON state) atomically."""
    weights, sidecar = _paths(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    digest = tensors_sha256(tensors)
    header = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION,
              "tensors_sha256": digest, **state}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"tensors_sha256": digest})
    # the sidecar goes last: a checkpoint counts as complete only once it exists
    atomic_write_text(sidecar, json.dumps(_jsonable(header), indent=2))
    return weights


def load_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint file, or the latest ``step_*.safetensors`` in a folder."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("step_*.safetensors"))
        # a run killed between writing the weights and the sidecar leaves weights alone:
        # the last complete checkpoint is the one to resume from
        complete = [p for p in found if p.with_suffix(".json").exists()]
        if not complete:
            raise FileNotFoundError(f"no complete checkpoint (step_*.safetensors with its "
                                    f".json) in folder '{path}'")
        if complete[-1] != found[-1]:
            logger.warning("checkpoint '%s' has no JSON sidecar (interrupted while saving); "
                           "resuming from '%s'", found[-1], complete[-1])
        path = complete[-1]
    weights, sidecar = _paths(path)
    if not weights.exists():
        raise FileNotFoundError(f"checkpoint not found: '{weights}'")
    state = _read_sidecar(sidecar, CHECKPOINT_FORMAT)
    tensors, _ = read_safetensors(weights, expected_sha256=state.get("tensors_sha256"),
                                  what="SAE checkpoint")
    return tensors, state
