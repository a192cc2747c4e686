"""Per-field image corrections: z-projection, flat-field (illumination) correction,
background subtraction and robust percentile normalisation.

The plate-level quantities (flat-field per channel, normalisation percentiles, typical
focus) are estimated once per plate from a sample of fields and kept in a
:class:`PlateCalibration`, so every field of a plate is corrected the same way and
intensities (e.g. of the death dye) stay comparable across fields.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

__all__ = [
    "PROJECTIONS",
    "PlateCalibration",
    "correct_field",
    "estimate_flatfield",
    "normalize_percentile",
    "project",
    "subtract_background",
]

PROJECTIONS = ("max", "mean", "sum", "median", "best_focus")


def project(stack: np.ndarray, method: str = "max", *, axis: int = -3) -> np.ndarray:
    """Project a z-stack along ``axis`` (default the Z of ``(..., Z, H, W)``).

    Parameters
    ----------
    stack : (..., Z, H, W) array.
    method : "max" (maximum-intensity projection, default), "mean", "sum", "median",
        or "best_focus" (the plane with the highest focus score, per leading index).

    Returns
    -------
    (..., H, W) float32 array.
    """
    stack = np.asarray(stack)
    if stack.ndim < 3:
        raise ValueError(f"stack must have a z axis, got shape {stack.shape}")
    if method == "max":
        return stack.max(axis=axis).astype(np.float32)
    if method == "mean":
        return stack.mean(axis=axis, dtype=np.float64).astype(np.float32)
    if method == "sum":
        return stack.sum(axis=axis, dtype=np.float64).astype(np.float32)
    if method == "median":
        return np.median(stack, axis=axis).astype(np.float32)
    if method == "best_focus":
        moved = np.moveaxis(stack, axis, -3)
        lead = moved.shape[:-3]
        flat = moved.reshape(-1, *moved.shape[-3:])
        out = np.empty((flat.shape[0], *flat.shape[-2:]), np.float32)
        for i, zstack in enumerate(flat):
            scores = [focus_score(plane) for plane in zstack]
            out[i] = zstack[int(np.argmax(scores))]
        return out.reshape(*lead, *flat.shape[-2:])
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {method!r}")


def focus_score(image: np.ndarray) -> float:
    """Normalised variance of the Laplacian: higher is sharper; independent of gain."""
    image = np.asarray(image, dtype=np.float32)
    mean = float(image.mean())
    if mean <= 0:
        return 0.0
    lap = ndi.laplace(ndi.gaussian_filter(image, 1.0))
    return float(lap.var() / mean**2)


def estimate_flatfield(images: Iterable[np.ndarray], *, degree: int = 4) -> np.ndarray:
    """Illumination profile from many fields of one channel (mean 1).

    The per-pixel median over fields removes cells (they move, the illumination does
    not); a smooth 2-D polynomial of ``degree`` fitted to that median keeps only the slow
    vignetting, corners included. Divide a field by the result to flatten it.

    Parameters
    ----------
    images : iterable of (H, W) arrays, all of one channel.
    degree : total degree of the polynomial surface.

    Returns
    -------
    (H, W) float32 array with mean 1.
    """
    stack = [np.asarray(im, dtype=np.float32) for im in images]
    if not stack:
        raise ValueError("estimate_flatfield needs at least one image")
    shapes = {im.shape for im in stack}
    if len(shapes) != 1:
        raise ValueError(f"all images must have the same shape, got {sorted(shapes)}")
    median = np.median(np.stack(stack), axis=0) if len(stack) > 1 else stack[0]
    h, w = median.shape
    step = max(1, min(h, w) // 64)
    small = median[: h - h % step, : w - w % step]
    small = small.reshape(small.shape[0] // step, step, small.shape[1] // step, step).mean((1, 3))
    ys = (np.arange(small.shape[0]) * step + (step - 1) / 2) / max(h - 1, 1) * 2 - 1
    xs = (np.arange(small.shape[1]) * step + (step - 1) / 2) / max(w - 1, 1) * 2 - 1
    powers = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    design = np.stack([yy.ravel() ** i * xx.ravel() ** j for i, j in powers], 1)
    coef, *_ = np.linalg.lstsq(design, small.ravel().astype(np.float64), rcond=None)
    # Evaluate separably: profile = Y @ C @ X.T with Y[:, i] = y**i, X[:, j] = x**j.
    c = np.zeros((degree + 1, degree + 1))
    for (i, j), value in zip(powers, coef, strict=True):
        c[i, j] = value
    y_pow = np.linspace(-1, 1, h)[:, None] ** np.arange(degree + 1)
    x_pow = np.linspace(-1, 1, w)[:, None] ** np.arange(degree + 1)
    profile = y_pow @ c @ x_pow.T
    mean = float(profile.mean())
    if not np.isfinite(mean) or mean <= 0:
        return np.ones(median.shape, np.float32)
    # Never amplify a dark corner by more than 5x (it is mostly noise there).
    return np.clip(profile / mean, 0.2, None).astype(np.float32)


def subtract_background(image: np.ndarray, *, percentile: float = 5.0) -> np.ndarray:
    """Subtract a constant background (a low percentile of the image), clipping at 0.

    The percentile is taken on every other pixel in each direction (a quarter of the
    pixels): the same value to within noise, four times faster on large fields.
    """
    image = np.asarray(image, dtype=np.float32)
    sample = image[::2, ::2] if image.ndim == 2 and image.size > 4096 else image
    return np.clip(image - np.percentile(sample, percentile), 0, None)


def normalize_percentile(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` to 0 and ``high`` to 1 linearly (values outside are not clipped above,
    so a very bright dead cell stays brighter than 1)."""
    scale = max(float(high) - float(low), 1e-12)
    return np.clip((np.asarray(image, np.float32) - low) / scale, 0, None)


@dataclass
class PlateCalibration:
    """Per-plate, per-channel corrections estimated from a sample of fields.

    Attributes
    ----------
    channel_names : list of C names.
    flatfield : (C, H, W) float32, mean 1 per channel.
    low, high : (C,) normalisation percentiles of the corrected images.
    focus_median : median focus score of the nucleus channel over the sample.
    n_fields : number of fields the estimate used.
    """

    channel_names: list[str]
    flatfield: np.ndarray
    low: np.ndarray
    high: np.ndarray
    focus_median: float = float("nan")
    n_fields: int = 0
    params: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        from .._utils import atomic_path

        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                channel_names=np.array(self.channel_names),
                flatfield=self.flatfield,
                low=self.low,
                high=self.high,
                focus_median=self.focus_median,
                n_fields=self.n_fields,
            )

    @classmethod
    def load(cls, path: str | Path) -> PlateCalibration:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                [str(c) for c in z["channel_names"]],
                z["flatfield"],
                z["low"],
                z["high"],
                float(z["focus_median"]),
                int(z["n_fields"]),
            )

    @classmethod
    def identity(cls, channel_names: Sequence[str], shape: tuple[int, int]) -> PlateCalibration:
        c = len(channel_names)
        return cls(list(channel_names), np.ones((c, *shape), np.float32), np.zeros(c), np.ones(c))

    @classmethod
    def estimate(
        cls,
        projected_fields: Iterable[np.ndarray],
        channel_names: Sequence[str],
        *,
        nucleus_channel: int | None = None,
        percentiles: tuple[float, float] = (1.0, 99.8),
        background_percentile: float = 5.0,
        flatfield: bool = True,
    ) -> PlateCalibration:
        """Estimate from projected fields, each ``(C, H, W)``."""
        fields = [np.asarray(f, np.float32) for f in projected_fields]
        if not fields:
            raise ValueError("cannot calibrate a plate with no readable fields")
        c = len(channel_names)
        if any(f.shape[0] != c for f in fields):
            raise ValueError(f"calibration fields must have {c} channels")
        shape = fields[0].shape[1:]
        fields = [f for f in fields if f.shape[1:] == shape]
        if flatfield and len(fields) >= 2:
            flat = np.stack([estimate_flatfield([f[ci] for f in fields]) for ci in range(c)])
        else:
            flat = np.ones((c, *shape), np.float32)
        low = np.zeros(c)
        high = np.ones(c)
        for ci in range(c):
            values = np.concatenate(
                [
                    subtract_background(f[ci] / flat[ci], percentile=background_percentile)[
                        ::4, ::4
                    ].ravel()
                    for f in fields
                ]
            )
            lo, hi = np.percentile(values, percentiles)
            low[ci], high[ci] = lo, hi if hi > lo else lo + 1.0
        focus = float("nan")
        if nucleus_channel is not None:
            focus = float(np.median([focus_score(f[nucleus_channel]) for f in fields]))
        return cls(
            list(channel_names),
            flat.astype(np.float32),
            low,
            high,
            focus,
            len(fields),
            {"percentiles": list(percentiles), "background_percentile": background_percentile},
        )


def correct_field(
    projected: np.ndarray, calibration: PlateCalibration, *, background_percentile: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Flat-field correct, subtract background and normalise one projected field.

    Parameters
    ----------
    projected : (C, H, W) array.

    Returns
    -------
    corrected : (C, H, W) float32 in raw intensity units (for measurements),
    normalised : (C, H, W) float32 scaled by the plate percentiles (for crops).
    """
    projected = np.asarray(projected, np.float32)
    if projected.shape[1:] != calibration.flatfield.shape[1:]:
        raise ValueError(
            f"field shape {projected.shape[1:]} differs from the plate's "
            f"{calibration.flatfield.shape[1:]}"
        )
    corrected = np.empty_like(projected)
    normalised = np.empty_like(projected)
    for ci in range(projected.shape[0]):
        corrected[ci] = subtract_background(
            projected[ci] / calibration.flatfield[ci], percentile=background_percentile
        )
        normalised[ci] = normalize_percentile(
            corrected[ci], calibration.low[ci], calibration.high[ci]
        )
    return corrected, normalised
