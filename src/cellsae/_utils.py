"""Plumbing shared by every stage: randomness, devices, atomic files, progress, logging."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

SeedLike = int | np.random.Generator | None

# -- randomness ---------------------------------------------------------------------------


def as_rng(seed: SeedLike) -> np.random.Generator:
    """Return a numpy Generator from an int seed, a Generator (returned as is) or None."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, bool | float) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, a numpy Generator or None, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng(int(seed))


def torch_generator(seed: SeedLike, device: Any = "cpu"):
    """A ``torch.Generator`` seeded from an int or drawn from a numpy Generator."""
    import torch

    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**62))
    elif seed is None:
        seed = int(np.random.default_rng().integers(0, 2**62))
    return torch.Generator(device=device).manual_seed(int(seed))


# -- devices ------------------------------------------------------------------------------

DeviceLike = Literal["auto", "cpu", "cuda"] | str


def resolve_device(device: DeviceLike | Any = "auto"):
    """Map ``"auto"`` to CUDA when available else CPU; validate explicit requests."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or 'cpu'"
        )
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device(device)


# -- files --------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or exception leaves ``path`` untouched (either absent or its previous content)
    and removes the temporary file, so readers never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # writers such as h5py want to create the file themselves
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise RuntimeError(f"nothing was written to the temporary file for {path}")
        os.replace(tmp_path, path)
    except BaseException:
        if tmp_path.is_dir():
            import shutil

            shutil.rmtree(tmp_path, ignore_errors=True)
        else:
            tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` atomically (temporary file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def require_file(path: str | os.PathLike, *, what: str = "file") -> Path:
    """Return ``path`` as a Path, raising FileNotFoundError naming ``what`` if absent."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: '{path}'")
    if path.is_dir():
        raise IsADirectoryError(f"{what} '{path}' is a directory, expected a file")
    return path


# -- progress -----------------------------------------------------------------------------

_PROGRESS_DISABLED = os.environ.get("CELLSAE_NO_PROGRESS", "") not in ("", "0")


def set_progress(enabled: bool) -> None:
    """Globally enable or disable progress bars (the CLI's ``--quiet`` turns them off)."""
    global _PROGRESS_DISABLED
    _PROGRESS_DISABLED = not enabled


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             disable: bool | None = None, unit: str = "it", **kwargs):
    """A tqdm progress bar, silent when stderr is not a terminal or when disabled."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = _PROGRESS_DISABLED or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=disable, unit=unit,
                dynamic_ncols=True, leave=False, **kwargs)


# -- logging ------------------------------------------------------------------------------


def setup_logging(level: int | str = logging.INFO, *, rich: bool = True) -> None:
    """Attach one handler to the ``cellsae`` logger (the CLI calls this; libraries don't)."""
    root = logging.getLogger("cellsae")
    for handler in list(root.handlers):
        if not isinstance(handler, logging.NullHandler):
            root.removeHandler(handler)
    if rich:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False,
                                               markup=False, log_time_format="[%X]")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


# -- validation ---------------------------------------------------------------------------


def check_finite(x: np.ndarray, name: str = "X") -> None:
    """Raise ValueError naming the first non-finite row of ``x``."""
    if x.size and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1)) if x.ndim > 1 else \
            np.flatnonzero(~np.isfinite(x))
        raise ValueError(
            f"{name} contains NaN or Inf in {len(bad)} row(s) (first: row {int(bad[0])}); "
            "remove or impute them before this step"
        )
