"""Nucleus and cell-body segmentation.

The classical default needs nothing beyond scikit-image: smooth, threshold (Otsu),
split touching nuclei by a seeded watershed on the distance transform, and grow cell
bodies from the nuclei by a watershed on a cytoplasmic channel. The object scale is
estimated from the image itself (``diameter=None``), so the defaults work across
magnifications.

A small backend interface lets users plug in cellpose or stardist when installed::

    register_backend("mine", my_function)   # my_function(image, **params) -> labels
    segment_nuclei(image, backend="mine")
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

__all__ = [
    "NucleusParams",
    "available_backends",
    "register_backend",
    "segment_cells",
    "segment_nuclei",
]


@dataclass(frozen=True)
class NucleusParams:
    """Parameters of the classical nucleus segmentation (defaults tuned on the annotated
    nuclei in ``shared/data/nuclei_groundtruth``; see ``benchmarks/images_pipeline.py``).

    diameter : typical nucleus diameter in pixels; None estimates it from the image
        (equivalent diameter of the 40th-percentile-area thresholded object).
    smoothing : Gaussian sigma in pixels applied before thresholding (noise scale).
    threshold : "otsu", "li", "triangle" or a number (in the image scaled to [0, 1] by
        its 0.5th and 99.9th percentiles).
    threshold_scale : multiplies the automatic threshold (below 1 picks up dim nuclei).
    local_fraction : a pixel is foreground only if it is above this fraction of the
        local peak (over a window one diameter wide) above background; this trims the
        blurred halo of bright nuclei that would otherwise merge them with neighbours.
        0 disables it.
    min_area_fraction : objects smaller than this fraction of the typical area are dropped.
    seed_h : h of the h-maxima seeds on the distance transform, as a fraction of the
        typical radius (larger merges more, smaller splits more).
    min_contrast : objects whose mean is less than this many robust noise standard
        deviations above the background are dropped (an empty field of pure noise
        yields no nuclei).
    """

    diameter: float | None = None
    smoothing: float = 1.0
    threshold: str | float = "otsu"
    threshold_scale: float = 0.8
    local_fraction: float = 0.35
    min_area_fraction: float = 0.15
    seed_h: float = 0.1
    min_contrast: float = 4.0
    fill_holes: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _as_2d_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (H, W) array, got shape {image.shape}; "
            "project z-stacks first (cellsae.images.project)"
        )
    if not np.issubdtype(image.dtype, np.number) or image.dtype == bool:
        raise TypeError(f"{name} must be numeric, got dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return image


def _auto_threshold(image: np.ndarray, method: str | float) -> float:
    from skimage import filters

    if not isinstance(method, str):
        return float(method)
    funcs = {
        "otsu": filters.threshold_otsu,
        "li": filters.threshold_li,
        "triangle": filters.threshold_triangle,
    }
    if method not in funcs:
        raise ValueError(f"threshold must be a number or one of {sorted(funcs)}, got {method!r}")
    if float(image.max()) == float(image.min()):
        return float("inf")
    return float(funcs[method](image))


def estimate_diameter(mask: np.ndarray) -> float:
    """Typical object diameter (pixels) from a foreground mask: the equivalent diameter
    of the 40th-percentile-area connected component, ignoring specks (< 9 pixels)."""
    labels, n = ndi.label(mask)
    if n == 0:
        return float("nan")
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas >= 9]
    if len(areas) == 0:
        return float("nan")
    # Clumps of touching nuclei inflate the area; a lower-middle quantile is robust.
    typical = np.percentile(areas, 40)
    return float(2.0 * np.sqrt(typical / np.pi))


def _classical_nuclei(image: np.ndarray, params: NucleusParams) -> np.ndarray:
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    image = _as_2d_float(image)
    empty = np.zeros(image.shape, np.int32)
    lo, hi = np.percentile(image, [0.5, 99.9])
    if hi <= lo:
        return empty
    scaled = np.clip((image - lo) / (hi - lo), 0, 1)
    smooth = ndi.gaussian_filter(scaled, max(params.smoothing, 0.0))
    thr = _auto_threshold(smooth, params.threshold) * params.threshold_scale
    mask = smooth > thr
    if params.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    if not mask.any() or mask.all():
        return empty

    diameter = params.diameter
    if diameter is None:
        diameter = estimate_diameter(mask)
        if not np.isfinite(diameter):
            return empty
        diameter = float(np.clip(diameter, 4.0, max(image.shape) / 2))
    radius = diameter / 2
    min_area = params.min_area_fraction * np.pi * radius**2

    if params.local_fraction > 0:
        background = float(np.median(smooth[~mask]))
        local_peak = ndi.maximum_filter(smooth, size=int(diameter) | 1)
        mask &= (smooth - background) > params.local_fraction * (local_peak - background)
        if params.fill_holes:
            mask = ndi.binary_fill_holes(mask)
    mask = _drop_small(ndi.label(mask)[0], min_area) > 0
    mask = _drop_faint(mask, smooth, params.min_contrast)
    if not mask.any():
        return empty

    distance = ndi.gaussian_filter(ndi.distance_transform_edt(mask) / radius, 1.0)
    seeds, _ = ndi.label(h_maxima(distance, params.seed_h) & mask)
    labels = watershed(-distance, seeds, mask=mask)
    # Components without a seed (very flat shapes) are kept whole.
    orphan, n_orphan = ndi.label(mask & (labels == 0))
    if n_orphan:
        labels = np.where(orphan > 0, orphan + labels.max(), labels)
    labels = _drop_small(labels, min_area)
    return _relabel(labels)


def _drop_faint(mask: np.ndarray, smooth: np.ndarray, min_contrast: float) -> np.ndarray:
    """Remove components whose mean is within ``min_contrast`` noise SDs of background."""
    if min_contrast <= 0 or mask.all():
        return mask
    background = smooth[~mask]
    centre = float(np.median(background))
    noise = 1.4826 * float(np.median(np.abs(background - centre)))
    noise = max(noise, 1e-6)
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    means = np.asarray(ndi.mean(smooth, labels, np.arange(1, n + 1)))
    keep = np.concatenate([[False], means - centre >= min_contrast * noise])
    return keep[labels]


def _drop_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    return labels


def _relabel(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


# -- backends -----------------------------------------------------------------------------

Backend = Callable[..., np.ndarray]
_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, function: Backend) -> None:
    """Register a nucleus segmentation backend: ``function(image, **params) -> labels``.

    ``image`` is a 2-D float array; the function returns an integer label image of the
    same shape (0 = background).
    """
    if not callable(function):
        raise TypeError(f"backend {name!r} must be callable")
    _BACKENDS[name] = function


def _cellpose_backend(
    image: np.ndarray,
    *,
    diameter: float | None = None,
    model_type: str = "nuclei",
    gpu: bool = False,
    **kwargs,
) -> np.ndarray:
    try:
        from cellpose import models
    except ImportError as err:
        raise ImportError(
            "backend='cellpose' needs the cellpose package "
            "(pip install cellpose); the default backend='classical' needs "
            "nothing extra"
        ) from err
    model = models.Cellpose(gpu=gpu, model_type=model_type)
    masks, *_ = model.eval(image, diameter=diameter, channels=[0, 0], **kwargs)
    return np.asarray(masks, np.int32)


def _stardist_backend(
    image: np.ndarray, *, model_name: str = "2D_versatile_fluo", **kwargs
) -> np.ndarray:
    try:
        from csbdeep.utils import normalize
        from stardist.models import StarDist2D
    except ImportError as err:
        raise ImportError(
            "backend='stardist' needs the stardist package "
            "(pip install stardist); the default backend='classical' needs "
            "nothing extra"
        ) from err
    model = StarDist2D.from_pretrained(model_name)
    labels, _ = model.predict_instances(normalize(image, 1, 99.8), **kwargs)
    return np.asarray(labels, np.int32)


def _classical_backend(image: np.ndarray, **params) -> np.ndarray:
    return _classical_nuclei(image, NucleusParams(**params))


register_backend("classical", _classical_backend)
register_backend("cellpose", _cellpose_backend)
register_backend("stardist", _stardist_backend)


def available_backends() -> list[str]:
    """Names of registered backends (cellpose/stardist are listed but need their package)."""
    return sorted(_BACKENDS)


def segment_nuclei(image: np.ndarray, *, backend: str = "classical", **params) -> np.ndarray:
    """Segment nuclei in a 2-D image.

    Parameters
    ----------
    image : (H, W) array, a nuclear stain (any numeric dtype).
    backend : "classical" (default, scikit-image only), "cellpose", "stardist", or a name
        added with :func:`register_backend`.
    **params : passed to the backend; for "classical" the fields of :class:`NucleusParams`.

    Returns
    -------
    labels : (H, W) int32, 0 = background, nuclei numbered 1..n.
    """
    if backend not in _BACKENDS:
        raise ValueError(
            f"unknown segmentation backend {backend!r}; available: "
            f"{available_backends()} (add one with register_backend)"
        )
    if backend == "classical":
        unknown = set(params) - set(NucleusParams.__dataclass_fields__)
        if unknown:
            raise TypeError(
                f"unknown classical segmentation parameter(s) {sorted(unknown)}; "
                f"allowed: {sorted(NucleusParams.__dataclass_fields__)}"
            )
    labels = np.asarray(_BACKENDS[backend](image, **params))
    if labels.shape != np.shape(image):
        raise ValueError(
            f"backend {backend!r} returned labels of shape {labels.shape} for an "
            f"image of shape {np.shape(image)}"
        )
    return labels.astype(np.int32, copy=False)


def segment_cells(
    nuclei: np.ndarray,
    cytoplasm: np.ndarray | None,
    *,
    max_distance: float | None = None,
    threshold: str | float = "otsu",
    threshold_scale: float = 0.5,
) -> np.ndarray:
    """Grow cell bodies from nuclei by a seeded watershed on a cytoplasmic channel.

    Parameters
    ----------
    nuclei : (H, W) int label image from :func:`segment_nuclei`.
    cytoplasm : (H, W) array of a cytoplasmic stain (e.g. mito), or None for a fixed-width
        ring around each nucleus.
    max_distance : a cell never extends farther than this (pixels) from its nucleus;
        default twice the typical nucleus diameter.
    threshold, threshold_scale : foreground of the cytoplasmic stain (as in
        :class:`NucleusParams`); below-threshold pixels are not assigned to cells.

    Returns
    -------
    labels : (H, W) int32; cell k contains nucleus k.
    """
    from skimage.segmentation import watershed

    nuclei = np.asarray(nuclei)
    if nuclei.ndim != 2:
        raise ValueError(f"nuclei must be a 2-D label image, got shape {nuclei.shape}")
    if nuclei.max() == 0:
        return np.zeros(nuclei.shape, np.int32)
    if max_distance is None:
        areas = np.bincount(nuclei.ravel())[1:]
        areas = areas[areas > 0]
        max_distance = 2.0 * 2.0 * np.sqrt(np.median(areas) / np.pi)
    dist_to_nucleus = ndi.distance_transform_edt(nuclei == 0)
    within = dist_to_nucleus <= max_distance
    if cytoplasm is None:
        return watershed(dist_to_nucleus, nuclei, mask=within).astype(np.int32)
    cyto = _as_2d_float(cytoplasm, "cytoplasm")
    if cyto.shape != nuclei.shape:
        raise ValueError(f"cytoplasm shape {cyto.shape} differs from nuclei shape {nuclei.shape}")
    lo, hi = np.percentile(cyto, [0.5, 99.9])
    cyto = np.clip((cyto - lo) / max(hi - lo, 1e-12), 0, 1)
    smooth = ndi.gaussian_filter(cyto, 1.0)
    thr = _auto_threshold(smooth, threshold) * threshold_scale
    foreground = (smooth > thr) | (nuclei > 0)
    # Bright cytoplasm is low cost; distance keeps neighbouring cells split fairly.
    cost = (1.0 - smooth) + dist_to_nucleus / max(max_distance, 1.0)
    labels = watershed(cost, nuclei, mask=within & foreground)
    return labels.astype(np.int32)
