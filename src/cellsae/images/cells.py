"""Per-cell crops and measurements from a segmented field.

Pure functions: arrays in, arrays out. :func:`extract_crops` cuts ``C x S x S`` crops
centred on each nucleus with the cell mask appended as a channel; :func:`measure_cells`
computes a CellProfiler-like feature table (morphology, intensity, texture, puncta).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

__all__ = ["CellCrops", "count_puncta", "extract_crops", "measure_cells", "nucleus_centres"]


def nucleus_centres(nuclei: np.ndarray) -> np.ndarray:
    """(n, 2) array of (y, x) centroids of labels 1..n."""
    n = int(nuclei.max())
    if n == 0:
        return np.zeros((0, 2))
    return np.asarray(ndi.center_of_mass(nuclei > 0, nuclei, np.arange(1, n + 1)), float)


@dataclass(frozen=True)
class CellCrops:
    """Crops of the cells of one field.

    crops : (n, C + 1, S, S) float32; the last channel is the cell's own mask (0/1).
    labels : (n,) cell label of each crop in the field's label image.
    centres : (n, 2) nucleus centre (y, x) in field pixels.
    touches_border : (n,) bool, the crop window or the cell reached the field edge and was
        zero-padded.
    """

    crops: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    touches_border: np.ndarray


def extract_crops(
    image: np.ndarray,
    nuclei: np.ndarray,
    cells: np.ndarray | None = None,
    *,
    size: int = 128,
    border: str = "pad",
) -> CellCrops:
    """Cut a ``(C + 1) x size x size`` crop centred on every nucleus.

    Parameters
    ----------
    image : (C, H, W) normalised channels.
    nuclei : (H, W) int labels 1..n.
    cells : (H, W) int labels with cell k containing nucleus k (default: the nuclei).
    size : crop side S in pixels.
    border : "pad" keeps cells whose window leaves the field (zero-padded, flagged in
        ``touches_border``); "drop" removes them.

    Returns
    -------
    CellCrops; pixels of other cells inside the window are kept in the image channels
    (context), the mask channel marks only this cell.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if nuclei.shape != image.shape[1:]:
        raise ValueError(f"nuclei shape {nuclei.shape} differs from image {image.shape[1:]}")
    if border not in ("pad", "drop"):
        raise ValueError(f"border must be 'pad' or 'drop', got {border!r}")
    if size < 4:
        raise ValueError(f"crop size must be at least 4, got {size}")
    cells = nuclei if cells is None else cells
    c, h, w = image.shape
    centres = nucleus_centres(nuclei)
    ids = np.arange(1, len(centres) + 1)
    present = np.bincount(nuclei.ravel(), minlength=len(ids) + 1)[1:] > 0
    centres, ids = centres[present], ids[present]
    half = size // 2
    top = np.round(centres[:, 0]).astype(int) - half
    left = np.round(centres[:, 1]).astype(int) - half
    window_out = (top < 0) | (left < 0) | (top + size > h) | (left + size > w)
    cell_objects = ndi.find_objects(cells)
    cell_edge = np.zeros(len(ids), bool)
    for i, k in enumerate(ids):
        sl = cell_objects[k - 1] if k - 1 < len(cell_objects) else None
        if sl is not None:
            cell_edge[i] = (
                sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w
            )
    flagged = window_out | cell_edge
    if border == "drop":
        keep = ~flagged
        ids, centres, top, left, flagged = (
            ids[keep],
            centres[keep],
            top[keep],
            left[keep],
            flagged[keep],
        )
    crops = np.zeros((len(ids), c + 1, size, size), np.float32)
    for i, k in enumerate(ids):
        y0, x0 = top[i], left[i]
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + size, h), min(x0 + size, w)
        dy, dx = ys - y0, xs - x0
        crops[i, :c, dy : dy + ye - ys, dx : dx + xe - xs] = image[:, ys:ye, xs:xe]
        crops[i, c, dy : dy + ye - ys, dx : dx + xe - xs] = cells[ys:ye, xs:xe] == k
    return CellCrops(crops, ids, centres, flagged)


def count_puncta(
    image: np.ndarray,
    cells: np.ndarray,
    n_cells: int,
    *,
    sigma: float = 1.0,
    threshold: float = 3.0,
) -> np.ndarray:
    """Count bright spots (mitochondria, lysosomes) per cell.

    Spots are local maxima of a difference of Gaussians (sigma, 3 sigma) that exceed
    ``threshold`` robust standard deviations (MAD) of the filtered field.

    Returns
    -------
    (n_cells,) int array of spot counts for labels 1..n_cells.
    """
    image = np.asarray(image, np.float32)
    dog = ndi.gaussian_filter(image, sigma) - ndi.gaussian_filter(image, 3 * sigma)
    mad = float(np.median(np.abs(dog - np.median(dog)))) * 1.4826
    if mad <= 0:
        mad = float(dog.std()) or 1.0
    peaks = (dog == ndi.maximum_filter(dog, size=3)) & (dog > threshold * mad)
    return np.bincount(cells[peaks].ravel(), minlength=n_cells + 1)[1 : n_cells + 1]


def measure_cells(
    image: np.ndarray,
    nuclei: np.ndarray,
    cells: np.ndarray,
    channel_names: Sequence[str],
    *,
    labels: np.ndarray | None = None,
    puncta_channels: Sequence[str] = ("mito", "lyso"),
    nucleus_channels: Sequence[str] = ("nucleus", "death"),
) -> tuple[np.ndarray, list[str]]:
    """Per-cell morphology, intensity, texture and puncta features.

    Parameters
    ----------
    image : (C, H, W) flat-field and background corrected channels (raw units).
    nuclei, cells : (H, W) int labels; cell k contains nucleus k.
    channel_names : the C channel names.
    labels : which labels to measure, in output order (default 1..n).
    puncta_channels : channels whose spots are counted per cell (absent ones are ignored).
    nucleus_channels : channels also measured inside the nucleus (e.g. death dyes that
        stain DNA).

    Returns
    -------
    features : (n, F) float32
    names : F feature names, e.g. "cell_area", "mito_mean", "mito_puncta".
    """
    from skimage.measure import regionprops_table

    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[0] != len(channel_names):
        raise ValueError(
            f"image must be (C, H, W) with C = {len(channel_names)} channels, got {image.shape}"
        )
    n = int(max(nuclei.max(), cells.max()))
    labels = np.arange(1, n + 1) if labels is None else np.asarray(labels, int)
    columns: dict[str, np.ndarray] = {}
    if len(labels) == 0:
        names = _feature_names(channel_names, puncta_channels, nucleus_channels)
        return np.zeros((0, len(names)), np.float32), names

    def shape_features(lab: np.ndarray, prefix: str) -> None:
        props = regionprops_table(
            lab,
            properties=(
                "label",
                "area",
                "perimeter",
                "eccentricity",
                "solidity",
                "major_axis_length",
                "minor_axis_length",
            ),
        )
        index = {int(k): i for i, k in enumerate(props["label"])}
        rows = np.array([index.get(int(k), -1) for k in labels])
        ok = rows >= 0

        def take(key):
            out = np.full(len(labels), np.nan)
            out[ok] = np.asarray(props[key], float)[rows[ok]]
            return out

        area, perim = take("area"), take("perimeter")
        columns[f"{prefix}_area"] = area
        columns[f"{prefix}_perimeter"] = perim
        with np.errstate(divide="ignore", invalid="ignore"):
            columns[f"{prefix}_form_factor"] = 4 * np.pi * area / np.maximum(perim, 1) ** 2
            columns[f"{prefix}_aspect_ratio"] = take("major_axis_length") / np.maximum(
                take("minor_axis_length"), 1
            )
        columns[f"{prefix}_eccentricity"] = take("eccentricity")
        columns[f"{prefix}_solidity"] = take("solidity")

    shape_features(nuclei, "nucleus")
    shape_features(cells, "cell")
    gradient = None
    for ci, name in enumerate(channel_names):
        ch = image[ci]
        area = np.asarray(ndi.sum(np.ones_like(ch), cells, labels))
        total = np.asarray(ndi.sum(ch, cells, labels))
        with np.errstate(divide="ignore", invalid="ignore"):
            columns[f"{name}_mean"] = np.where(area > 0, total / np.maximum(area, 1), 0)
        columns[f"{name}_integrated"] = total
        columns[f"{name}_std"] = np.nan_to_num(
            np.asarray(ndi.standard_deviation(ch, cells, labels))
        )
        gradient = np.hypot(ndi.sobel(ch, 0), ndi.sobel(ch, 1)) / 8.0
        columns[f"{name}_gradient"] = np.nan_to_num(np.asarray(ndi.mean(gradient, cells, labels)))
        if name in nucleus_channels:
            columns[f"{name}_nucleus_mean"] = np.nan_to_num(
                np.asarray(ndi.mean(ch, nuclei, labels))
            )
        if name in puncta_channels:
            counts = count_puncta(ch, cells, n)
            columns[f"{name}_puncta"] = counts[labels - 1].astype(float)
    names = list(columns)
    expected = _feature_names(channel_names, puncta_channels, nucleus_channels)
    if names != expected:  # keep the documented order stable
        names = expected
    features = np.stack([columns[k] for k in names], axis=1).astype(np.float32)
    return np.nan_to_num(features, nan=0.0), names


def _feature_names(
    channel_names: Sequence[str], puncta_channels: Sequence[str], nucleus_channels: Sequence[str]
) -> list[str]:
    names = []
    for prefix in ("nucleus", "cell"):
        names += [
            f"{prefix}_{k}"
            for k in (
                "area",
                "perimeter",
                "form_factor",
                "aspect_ratio",
                "eccentricity",
                "solidity",
            )
        ]
    for name in channel_names:
        names += [f"{name}_mean", f"{name}_integrated", f"{name}_std", f"{name}_gradient"]
        if name in nucleus_channels:
            names.append(f"{name}_nucleus_mean")
        if name in puncta_channels:
            names.append(f"{name}_puncta")
    return names
