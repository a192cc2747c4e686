"""The paper's unit: regular grid tiles of a field, not segmented cells.

Park et al. (2026) cut each field's maximum projection into non-overlapping ``S × S`` tiles
(``S = 128``), keep the tiles that pass a four-test QC, and give every tile a death rate
measured in pixels (REFERENCE_CODE.md §1–2). This module reproduces those steps as pure
functions plus :func:`ingest_tiles`, which turns plate folders into the same ``.h5sc``
crops file as :func:`cellsae.images.ingest` with ``obs["unit"] = "tile"``.

Steps and the paper's defaults (all options of :class:`TileConfig`):

- projection: per-pixel maximum over the **first 5 z-planes** (sorted by plane); a stack
  with fewer planes is skipped (``skip_short_stacks``);
- grid: tiles at ``(y, x) = (i S, j S)`` from the top-left corner, incomplete edge tiles
  dropped, ``⌊H/S⌋ · ⌊W/S⌋`` tiles per field (:func:`tile_grid`, :func:`cut_tiles`);
- QC on the raw (uint16-scale) CNN channels, rejected at the first failing test
  (:func:`tile_qc`): 0. the sum over channels of the SD < 3500; 1. the sum over channels
  of the sum of each channel's top 15 % pixel values < 8000; 2. the variance of the
  Laplacian of the per-pixel channel maximum < 50,000; 3. after "Fiji-style" scaling
  (channels with SD ≥ 655 have their 10th percentile subtracted and are rescaled so the
  99.5th percentile maps to 65535, then clipped), the fraction of pixels whose channel
  maximum is ≤ 4000 > 0.65;
- death rate (:func:`preprocess_death`, :func:`pooled_death_threshold`,
  :func:`tile_death_rates`): nuclei segmented on the whole field only to make a binary
  nuclear mask (nuclei touching the field border or of area ≤ 40 px removed); the death
  channel blurred (Gaussian σ 1) and background-subtracted (rolling ball, radius 25) per
  tile, clamped at 0; one 3-class multi-Otsu threshold ``T`` (its upper threshold) fitted
  on the nuclear pixels of **all** eligible tiles pooled; per tile the pixel rate
  ``#(nuclear px ≥ T) / #(nuclear px)`` and the intensity-weighted rate
  ``Σ I[nuclear, ≥ T] / Σ I[nuclear]`` (the paper uses the latter downstream: our
  ``death_rate``). Edge tiles of the grid and tiles with < 25 % nuclear area get NaN.

The paper segments nuclei with StarDist (``2D_versatile_fluo``); here the segmentation
backend is an option (``segmentation_backend``; ``"stardist"`` when installed).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from .._utils import atomic_write_text, progress
from ..config import StrictModel, validate_config
from .io import ImageReadError, PlateSource, discover_plates, parse_channel_map

logger = logging.getLogger(__name__)

__all__ = [
    "QC_TESTS",
    "TileConfig",
    "TileIngestResult",
    "cut_tiles",
    "edge_tiles",
    "ingest_tiles",
    "max_projection",
    "nuclear_mask",
    "pooled_death_threshold",
    "preprocess_death",
    "process_tile_field",
    "tile_death_rates",
    "tile_grid",
    "tile_qc",
]

QC_TESTS = ("signal_spread", "signal_sum", "focus", "background")
_UINT16_MAX = 65535.0


class TileConfig(StrictModel):
    """Settings of :func:`ingest_tiles`; the defaults are the paper's (REFERENCE_CODE §1–2).

    channels : channel map, "id=name" pairs (default the paper's scanner).
    pattern : file-name pattern; ``"paper"`` is the paper's ``r<row>c<col>f<field>p<plane>-
        ch<channel>`` reader (see :data:`cellsae.images.PATTERN_PRESETS`).
    crop_channels : channels written into the tiles, in order (the paper's composite
        [ch3, ch4, ch1]; the death channel is never a CNN input).
    tile_size : S of the S × S grid.
    n_planes : planes of the maximum projection (the first ``n_planes`` by plane index).
    skip_short_stacks : skip fields with fewer than ``n_planes`` planes (the paper);
        False projects whatever planes there are.
    min_std_sum, min_signal_sum, top_fraction, min_laplacian_var, max_background_fraction,
    fiji_min_std, background_level : the four QC tests, in uint16 units.
    min_nucleus_area : nuclei of this area or less are dropped from the mask (pixels).
    blur_sigma, rolling_ball_radius : death-channel preprocessing.
    otsu_classes : classes of the pooled multi-Otsu; its upper threshold is used.
    death_threshold : a fixed threshold instead of the pooled multi-Otsu (uint16 units).
    min_nucleus_fraction : tiles with a smaller nuclear area fraction get no death rate.
    exclude_edge_tiles : tiles on the outer ring of the grid get no death rate.
    """

    channels: str = "3=mito,4=lyso,1=nucleus,2=death"
    pattern: str = "paper"
    crop_channels: tuple[str, ...] = ("mito", "lyso", "nucleus")
    nucleus_channel: str = "nucleus"
    death_channel: str | None = "death"
    tile_size: int = Field(128, ge=8, le=2048)
    n_planes: int = Field(5, ge=1)
    skip_short_stacks: bool = True
    min_std_sum: float = Field(3500.0, ge=0)
    min_signal_sum: float = Field(8000.0, ge=0)
    top_fraction: float = Field(0.15, gt=0, le=1)
    min_laplacian_var: float = Field(50_000.0, ge=0)
    max_background_fraction: float = Field(0.65, ge=0, le=1)
    fiji_min_std: float = Field(655.0, ge=0)
    background_level: float = Field(4000.0, ge=0)
    segmentation_backend: str = "classical"
    segmentation_params: dict[str, Any] = Field(default_factory=dict)
    min_nucleus_area: int = Field(40, ge=0)
    blur_sigma: float = Field(1.0, ge=0)
    rolling_ball_radius: float = Field(25.0, ge=0)
    otsu_classes: int = Field(3, ge=2, le=5)
    death_threshold: float | None = None
    min_nucleus_fraction: float = Field(0.25, ge=0, le=1)
    exclude_edge_tiles: bool = True
    unmapped_wells: Literal["skip", "error"] = "skip"
    # seed: accepted with the pipeline's common settings; tiling itself is deterministic
    n_workers: int = Field(1, ge=0)
    seed: int = Field(0, ge=0)


# -- projection and grid ------------------------------------------------------------------


def max_projection(stack: np.ndarray, n_planes: int = 5, *, strict: bool = True) -> np.ndarray:
    """Per-pixel maximum over the first ``n_planes`` z-planes.

    Parameters
    ----------
    stack : (C, Z, H, W) array, planes in increasing plane index.
    n_planes : planes to use.
    strict : raise when the stack has fewer planes (the paper skips such fields).

    Returns
    -------
    (C, H, W) array of the input dtype.
    """
    stack = np.asarray(stack)
    if stack.ndim != 4:
        raise ValueError(f"stack must be (C, Z, H, W), got shape {stack.shape}")
    if stack.shape[1] < n_planes and strict:
        raise ValueError(
            f"the stack has {stack.shape[1]} z-planes but the projection needs "
            f"{n_planes}; set skip_short_stacks: false to project fewer planes"
        )
    return stack[:, :n_planes].max(axis=1)


def tile_grid(shape: Sequence[int], tile_size: int = 128) -> np.ndarray:
    """Top-left corners of the non-overlapping tiles of an image, row-major.

    Parameters
    ----------
    shape : (H, W) (or any shape ending in H, W).
    tile_size : S.

    Returns
    -------
    (⌊H/S⌋ · ⌊W/S⌋, 2) int array of ``(y, x)``; incomplete edge tiles are dropped.
    """
    h, w = int(shape[-2]), int(shape[-1])
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    ny, nx = h // tile_size, w // tile_size
    yy, xx = np.meshgrid(np.arange(ny) * tile_size, np.arange(nx) * tile_size, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)


def cut_tiles(image: np.ndarray, tile_size: int = 128) -> np.ndarray:
    """Cut an image into its grid tiles (no copy of pixels beyond the reshape).

    Parameters
    ----------
    image : (C, H, W) or (H, W) array.

    Returns
    -------
    (n_tiles, C, S, S) (or (n_tiles, S, S)) array in the order of :func:`tile_grid`.
    """
    image = np.asarray(image)
    squeeze = image.ndim == 2
    if squeeze:
        image = image[None]
    c, h, w = image.shape
    ny, nx = h // tile_size, w // tile_size
    if ny == 0 or nx == 0:
        raise ValueError(f"an image of {h}×{w} px holds no {tile_size}×{tile_size} tile")
    cropped = image[:, : ny * tile_size, : nx * tile_size]
    tiles = cropped.reshape(c, ny, tile_size, nx, tile_size).transpose(1, 3, 0, 2, 4)
    tiles = tiles.reshape(ny * nx, c, tile_size, tile_size)
    return tiles[:, 0] if squeeze else tiles


def edge_tiles(shape: Sequence[int], tile_size: int = 128) -> np.ndarray:
    """(n_tiles,) bool: the tile lies on the outer ring of the grid (first/last row or column).

    The paper excludes tiles with x or y equal to 0 or ``size − S`` from the death rate.
    """
    h, w = int(shape[-2]), int(shape[-1])
    ny, nx = h // tile_size, w // tile_size
    grid = tile_grid(shape, tile_size)
    iy, ix = grid[:, 0] // tile_size, grid[:, 1] // tile_size
    return (iy == 0) | (ix == 0) | (iy == ny - 1) | (ix == nx - 1)


# -- QC -----------------------------------------------------------------------------------


def _laplacian_var(img: np.ndarray) -> np.ndarray:
    """Variance of OpenCV's 3×3 Laplacian (ksize 1, reflect-101 border) per tile.

    img : (n, S, S) float64.
    """
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="reflect")  # numpy reflect = reflect-101
    lap = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4 * img
    return lap.reshape(len(img), -1).var(axis=1)


def tile_qc(
    tiles: np.ndarray,
    *,
    min_std_sum: float = 3500.0,
    min_signal_sum: float = 8000.0,
    top_fraction: float = 0.15,
    min_laplacian_var: float = 50_000.0,
    max_background_fraction: float = 0.65,
    fiji_min_std: float = 655.0,
    background_level: float = 4000.0,
) -> pd.DataFrame:
    """The paper's four-test tile QC (``04_patch_QC.py``), vectorised over tiles.

    Parameters
    ----------
    tiles : (n_tiles, C, S, S) array in raw uint16 units (the CNN channels).
    min_std_sum, min_signal_sum, top_fraction, min_laplacian_var, max_background_fraction,
    fiji_min_std, background_level : thresholds (see the module docstring).

    Returns
    -------
    DataFrame with one row per tile: ``std_sum``, ``signal_sum``, ``laplacian_var``,
    ``background_fraction``, ``qc_pass`` (bool) and ``qc_reason`` (the first failing test
    of :data:`QC_TESTS`, "" when passed).
    """
    x = np.asarray(tiles, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"tiles must be (n_tiles, C, S, S), got shape {x.shape}")
    n, c, s, _ = x.shape
    flat = x.reshape(n, c, -1)
    std_sum = flat.std(axis=2).sum(axis=1)
    n_top = max(1, int(top_fraction * s * s))
    top = np.partition(flat, flat.shape[2] - n_top, axis=2)[:, :, -n_top:]
    signal_sum = top.sum(axis=(1, 2))
    lap_var = _laplacian_var(x.max(axis=1))
    # "Fiji-style" scaling of channels with enough spread, then background = dim channel max
    sd = flat.std(axis=2)
    p10 = np.percentile(flat, 10, axis=2)
    p995 = np.percentile(flat, 99.5, axis=2)
    span = np.where(p995 > p10, p995 - p10, 1.0)
    scaled = np.clip((flat - p10[..., None]) / span[..., None] * _UINT16_MAX, 0, _UINT16_MAX)
    scaled = np.where((sd >= fiji_min_std)[..., None], scaled, flat)
    background = (scaled.max(axis=1) <= background_level).mean(axis=1)
    fails = np.stack(
        [
            std_sum < min_std_sum,
            signal_sum < min_signal_sum,
            lap_var < min_laplacian_var,
            background > max_background_fraction,
        ],
        axis=1,
    )
    first = np.where(fails.any(axis=1), fails.argmax(axis=1), -1)
    reason = np.array([""] + list(QC_TESTS), dtype=object)[first + 1]
    return pd.DataFrame(
        {
            "std_sum": std_sum,
            "signal_sum": signal_sum,
            "laplacian_var": lap_var,
            "background_fraction": background,
            "qc_pass": first < 0,
            "qc_reason": reason.astype(str),
        }
    )


# -- death rate ---------------------------------------------------------------------------


def nuclear_mask(labels: np.ndarray, *, min_area: int = 40) -> np.ndarray:
    """Binary nuclear mask from a field's nucleus labels, as the paper builds it.

    Nuclei touching the field border and nuclei of area ``≤ min_area`` pixels are removed.

    Parameters
    ----------
    labels : (H, W) int label image of the whole field (0 = background).

    Returns
    -------
    (H, W) bool.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label image, got shape {labels.shape}")
    if labels.max() <= 0:
        return np.zeros(labels.shape, bool)
    area = np.bincount(labels.ravel())
    keep = area > min_area
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep[border] = False
    keep[0] = False
    return keep[labels]


def preprocess_death(
    tiles: np.ndarray, *, blur_sigma: float = 1.0, rolling_ball_radius: float = 25.0
) -> np.ndarray:
    """Blur (Gaussian σ) and subtract a rolling-ball background per tile, clamped at 0.

    Parameters
    ----------
    tiles : (n_tiles, S, S) death-channel tiles (uint16 units).

    Returns
    -------
    (n_tiles, S, S) float32.
    """
    from scipy.ndimage import gaussian_filter
    from skimage.restoration import rolling_ball

    x = np.asarray(tiles, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"death tiles must be (n_tiles, S, S), got shape {x.shape}")
    out = np.empty_like(x)
    for i in range(len(x)):  # rolling_ball works on one image at a time
        img = gaussian_filter(x[i], blur_sigma) if blur_sigma > 0 else x[i]
        bg = rolling_ball(img, radius=rolling_ball_radius) if rolling_ball_radius > 0 else 0.0
        out[i] = np.clip(img - bg, 0, None)
    return out


def pooled_death_threshold(
    nuclear_pixels: np.ndarray | Sequence[np.ndarray], *, classes: int = 3
) -> float:
    """One multi-Otsu threshold over the nuclear death-channel pixels of all tiles pooled.

    Parameters
    ----------
    nuclear_pixels : 1-D array, or a list of 1-D arrays (one per tile), of preprocessed
        death intensities inside the nuclear mask.
    classes : multi-Otsu classes (the paper: 3); the upper threshold is returned.

    Returns
    -------
    float, the threshold T.
    """
    from skimage.filters import threshold_multiotsu

    if not isinstance(nuclear_pixels, np.ndarray):
        parts = [np.asarray(p, np.float64).ravel() for p in nuclear_pixels]
        pixels = np.concatenate(parts) if parts else np.zeros(0)
    else:
        pixels = np.asarray(nuclear_pixels, np.float64).ravel()
    pixels = pixels[np.isfinite(pixels)]
    if len(np.unique(pixels)) < classes:
        raise ValueError(
            f"the pooled nuclear pixels hold {len(np.unique(pixels))} distinct "
            f"values; a {classes}-class multi-Otsu needs at least {classes}. "
            "Are there tiles with nuclei? (set death_threshold to fix one)"
        )
    return float(threshold_multiotsu(pixels, classes=classes)[-1])


def tile_death_rates(
    death: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    *,
    min_nucleus_fraction: float = 0.25,
    eligible: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per-tile death rates from preprocessed death tiles and nuclear masks.

    Parameters
    ----------
    death : (n_tiles, S, S) preprocessed death intensities (:func:`preprocess_death`).
    mask : (n_tiles, S, S) bool nuclear mask.
    threshold : T (:func:`pooled_death_threshold`); a pixel is "dead" when ``≥ T``.
    min_nucleus_fraction : tiles with a smaller nuclear area fraction get NaN rates.
    eligible : (n_tiles,) bool, optional; False gives NaN (e.g. edge tiles).

    Returns
    -------
    DataFrame with ``nuclear_fraction``, ``n_nuclear_px``, ``death_pixel_rate``
    (``#(nuclear px ≥ T) / #nuclear px``), ``death_intensity_rate`` (``Σ I[nuclear, ≥ T] /
    Σ I[nuclear]``; NaN when the nuclear intensity sums to 0) and ``intensity_per_pixel``.
    """
    d = np.asarray(death, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if d.shape != m.shape or d.ndim != 3:
        raise ValueError(
            f"death and mask must both be (n_tiles, S, S), got {d.shape} and {m.shape}"
        )
    n = len(d)
    n_px = m.reshape(n, -1).sum(axis=1)
    fraction = n_px / float(d.shape[1] * d.shape[2])
    above = m & (d >= threshold)
    n_above = above.reshape(n, -1).sum(axis=1)
    total = np.where(m, d, 0).reshape(n, -1).sum(axis=1)
    total_above = np.where(above, d, 0).reshape(n, -1).sum(axis=1)
    ok = (fraction >= min_nucleus_fraction) & (n_px > 0)
    if eligible is not None:
        ok &= np.asarray(eligible, bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        pixel_rate = np.where(ok, n_above / np.maximum(n_px, 1), np.nan)
        intensity_rate = np.where(
            ok & (total > 0), total_above / np.where(total > 0, total, 1), np.nan
        )
        per_px = np.where(ok, total / np.maximum(n_px, 1), np.nan)
    return pd.DataFrame(
        {
            "nuclear_fraction": fraction,
            "n_nuclear_px": n_px.astype(np.int64),
            "death_pixel_rate": pixel_rate,
            "death_intensity_rate": intensity_rate,
            "intensity_per_pixel": per_px,
        }
    )


# -- one field ----------------------------------------------------------------------------


def process_tile_field(stack: np.ndarray, names: Sequence[str], cfg: TileConfig) -> dict:
    """All per-field work on a read ``(C, Z, H, W)`` stack: projection, tiles, QC, masks.

    Returns a dict with ``tiles`` (n_pass, C_crop, S, S) float16 in [0, 1] (raw / 65535),
    ``table`` (one row per grid tile: position, edge, QC), and for the QC-passed tiles
    eligible for a death rate ``death`` (preprocessed) and ``mask`` (nuclear).
    """
    from .segmentation import segment_nuclei

    names = list(names)
    missing = [c for c in (*cfg.crop_channels, cfg.nucleus_channel) if c not in names]
    if missing:
        raise ValueError(
            f"channel(s) {missing} are not in the channel map {names}; fix "
            "'channels' or 'crop_channels'"
        )
    mip = max_projection(stack, cfg.n_planes, strict=cfg.skip_short_stacks).astype(np.float32)
    s = cfg.tile_size
    grid = tile_grid(mip.shape, s)
    crop_idx = [names.index(c) for c in cfg.crop_channels]
    tiles = cut_tiles(mip[crop_idx], s)
    qc = tile_qc(
        tiles,
        min_std_sum=cfg.min_std_sum,
        min_signal_sum=cfg.min_signal_sum,
        top_fraction=cfg.top_fraction,
        min_laplacian_var=cfg.min_laplacian_var,
        max_background_fraction=cfg.max_background_fraction,
        fiji_min_std=cfg.fiji_min_std,
        background_level=cfg.background_level,
    )
    table = qc.assign(
        y=grid[:, 0],
        x=grid[:, 1],
        tile_row=grid[:, 0] // s,
        tile_col=grid[:, 1] // s,
        edge=edge_tiles(mip.shape, s),
    )
    out = {
        "tiles": (tiles[qc["qc_pass"].to_numpy()] / _UINT16_MAX).astype(np.float16),
        "table": table,
    }
    if cfg.death_channel is not None and cfg.death_channel in names:
        labels = segment_nuclei(
            mip[names.index(cfg.nucleus_channel)],
            backend=cfg.segmentation_backend,
            **cfg.segmentation_params,
        )
        mask = cut_tiles(nuclear_mask(labels, min_area=cfg.min_nucleus_area), s)
        fraction = mask.reshape(len(mask), -1).mean(axis=1)
        eligible = qc["qc_pass"].to_numpy() & (fraction >= cfg.min_nucleus_fraction)
        if cfg.exclude_edge_tiles:
            eligible &= ~table["edge"].to_numpy()
        table["nuclear_fraction"] = fraction
        table["death_eligible"] = eligible
        death = cut_tiles(mip[names.index(cfg.death_channel)], s)[eligible]
        out["death"] = preprocess_death(
            death, blur_sigma=cfg.blur_sigma, rolling_ball_radius=cfg.rolling_ball_radius
        )
        out["mask"] = mask[eligible]
    return out


def _tile_task(task: dict) -> dict:
    """Read and process one field; write its part file. Plain values in, a record out."""
    cfg = TileConfig(**task["config"])
    record = {
        "plate": task["plate"],
        "well": task["well"],
        "field": task["field"],
        "status": "ok",
        "reason": "",
        "n_tiles": 0,
        "n_tiles_pass": 0,
    }
    try:
        source = PlateSource.from_table(
            task["folder"],
            pd.DataFrame(task["files"]),
            pattern=cfg.pattern,
            name=task["plate"],
            planes=task["planes"],
        )
        stack = source.read_field(task["well"], task["field"], task["channel_ids"])
        result = process_tile_field(stack, task["channel_names"], cfg)
    except (ImageReadError, ValueError) as err:
        record.update(status="skipped", reason=str(err))
        logger.warning(
            "skipping %s %s field %s: %s", task["plate"], task["well"], task["field"], err
        )
        return record
    table = result["table"]
    record.update(n_tiles=int(len(table)), n_tiles_pass=int(table["qc_pass"].sum()))
    for test in QC_TESTS:
        record[f"qc_failed_{test}"] = int((table["qc_reason"] == test).sum())
    arrays = {
        "tiles": result["tiles"],
        "table": np.array(table.to_json(orient="split")),
        "record": np.array(json.dumps(record)),
    }
    if "death" in result:
        arrays["death"] = result["death"].astype(np.float32)
        arrays["mask"] = result["mask"]
    part = Path(task["part"])
    tmp = part.with_name(part.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(part)
    return record


# -- the whole run ------------------------------------------------------------------------


@dataclass(frozen=True)
class TileIngestResult:
    """What :func:`ingest_tiles` produced."""

    path: Path
    n_tiles: int
    n_tiles_rejected: int
    n_fields: int
    n_fields_skipped: int
    n_tiles_with_death_rate: int
    death_threshold: float
    qc: pd.DataFrame

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "n_tiles": self.n_tiles,
            "n_tiles_rejected": self.n_tiles_rejected,
            "n_fields": self.n_fields,
            "n_fields_skipped": self.n_fields_skipped,
            "n_tiles_with_death_rate": self.n_tiles_with_death_rate,
            "death_threshold": self.death_threshold,
        }


def _map_row(table: pd.DataFrame | None, plate: str, well: str) -> dict | None:
    if table is None:
        return {}
    sel = table[table["well"] == well]
    if "plate" in table.columns:
        sel = sel[sel["plate"].astype(str) == plate]
    if not len(sel):
        return None
    row = sel.iloc[0].to_dict()
    for k in ("plate", "well", "row", "col"):
        row.pop(k, None)
    return row


def _run(tasks: list[dict], n_workers: int) -> list[dict]:
    if not tasks:
        return []
    if n_workers <= 1:
        return [_tile_task(t) for t in progress(tasks, desc="tiling fields", unit="field")]
    import concurrent.futures as cf
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    records = []
    with cf.ProcessPoolExecutor(n_workers, mp_context=mp.get_context(method)) as pool:
        futures = [pool.submit(_tile_task, t) for t in tasks]
        for fut in progress(
            cf.as_completed(futures), total=len(futures), desc="tiling fields", unit="field"
        ):
            records.append(fut.result())
    return records


def ingest_tiles(
    plate_dir: str | Path,
    out: str | Path,
    *,
    platemap: str | Path | pd.DataFrame | None = None,
    config: TileConfig | dict | None = None,
    overwrite: bool = False,
    **settings,
) -> TileIngestResult:
    """Plate folders → grid tiles with the paper's QC and death rates, as an ``.h5sc`` file.

    Parameters
    ----------
    plate_dir : a plate folder, or a folder of plate folders.
    out : the ``.h5sc`` to write (temporary name + rename; field parts in ``<out>.parts``,
        removed on success).
    platemap : plate-map CSV or DataFrame (``well``, optionally ``plate``, donor, genotype…);
        wells absent from it are skipped.
    config : :class:`TileConfig` or a dict of its fields; ``**settings`` override fields.
    overwrite : replace an existing ``out``.

    Returns
    -------
    TileIngestResult. The file holds ``obsm["single_cell_images"]`` (n_tiles, C, S, S)
    float16 (raw / 65535, channels ``crop_channels``) for the QC-passed tiles; ``obs``
    with plate, well, field, ``x``/``y`` (top-left pixel), ``tile_row``/``tile_col``,
    ``edge``, ``unit = "tile"``, the platemap columns, ``nuclear_fraction``,
    ``death_pixel_rate``, ``death_intensity_rate`` and ``death_rate`` (= the intensity
    rate, the paper's downstream choice; NaN where not eligible); ``uns["qc"]`` (per
    field, with the count of tiles failing each test) and ``uns["death_threshold"]``.
    """
    from ..crops import H5scWriter
    from .io import read_platemap

    if isinstance(config, TileConfig):
        data = {**config.model_dump(), **settings}
    else:
        data = {**(config or {}), **settings}
    cfg = validate_config(TileConfig, data, source="tile ingest settings")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"output '{out}' already exists; pass overwrite=True or choose another path"
        )
    plates = discover_plates(plate_dir, pattern=cfg.pattern)
    table = None
    if platemap is not None:
        table = platemap if isinstance(platemap, pd.DataFrame) else read_platemap(platemap)
    tasks, records = [], []
    parts = out.with_name(out.name + ".parts")
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    names: list[str] | None = None
    for plate in plates:
        if not isinstance(plate, PlateSource) or not plate.per_plane:
            raise ValueError(
                f"plate '{plate.name}': tile ingestion reads per-plane TIFF "
                "folders (e.g. the 'paper' or 'phenix' pattern)"
            )
        cmap = parse_channel_map(cfg.channels, plate.channels)
        plate_names = list(cmap.values())
        if names is None:
            names = plate_names
        elif plate_names != names:
            raise ValueError(
                f"all plates must have the same channels; '{plate.name}' has "
                f"{plate_names}, the first plate {names}"
            )
        rows = plate.files.groupby(["well", "field"]).indices
        for well, field in plate.fields():
            if _map_row(table, plate.name, well) is None:
                if cfg.unmapped_wells == "error":
                    raise ValueError(
                        f"plate '{plate.name}': well {well} has images but is not "
                        "in the plate map; add it or use unmapped_wells='skip'"
                    )
                records.append(
                    {
                        "plate": plate.name,
                        "well": well,
                        "field": field,
                        "status": "skipped",
                        "n_tiles": 0,
                        "n_tiles_pass": 0,
                        "reason": f"well {well} is not in the plate map",
                    }
                )
                continue
            tasks.append(
                {
                    "folder": str(plate.folder),
                    "plate": plate.name,
                    "well": well,
                    "field": field,
                    "files": plate.files.iloc[rows[(well, field)]].to_dict("records"),
                    "planes": plate.planes,
                    "channel_ids": list(cmap),
                    "channel_names": plate_names,
                    "config": cfg.model_dump(),
                    "part": str(parts / f"{plate.name}_{well}_f{field:03d}.npz"),
                }
            )
    records += _run(tasks, cfg.n_workers)
    qc = pd.DataFrame(records).sort_values(["plate", "well", "field"]).reset_index(drop=True)
    done = qc[(qc["status"] == "ok") & (qc["n_tiles_pass"] > 0)]
    if not len(done):
        shutil.rmtree(parts, ignore_errors=True)
        raise ValueError(
            f"no tile passed QC in any field ({len(qc)} fields; statuses "
            f"{qc['status'].value_counts().to_dict()}; first reasons "
            f"{list(qc['reason'].head(3))}); nothing written to '{out}'. "
            "Check the QC thresholds against your image intensities."
        )

    def part_of(rec) -> Path:
        return parts / f"{rec.plate}_{rec.well}_f{int(rec.field):03d}.npz"

    # pass 1: pooled threshold over every eligible tile's nuclear pixels
    has_death = cfg.death_channel is not None and cfg.death_channel in (names or [])
    threshold = float("nan")
    if has_death:
        if cfg.death_threshold is not None:
            threshold = float(cfg.death_threshold)
        else:
            pooled = []
            for rec in done.itertuples():
                with np.load(part_of(rec)) as z:
                    if "death" in z and len(z["death"]):
                        pooled.append(z["death"][z["mask"]])
            if not pooled:
                raise ValueError(
                    f"no QC-passed tile is eligible for a death rate (interior tile with a "
                    f"nuclear area fraction >= min_nucleus_fraction={cfg.min_nucleus_fraction})"
                    "; lower min_nucleus_fraction for sparse cultures, set "
                    "exclude_edge_tiles: false for small fields, or set death_channel: null"
                )
            threshold = pooled_death_threshold(pooled, classes=cfg.otsu_classes)
            logger.info(
                "pooled %d-class multi-Otsu death threshold: %.4g (%d fields)",
                cfg.otsu_classes,
                threshold,
                len(pooled),
            )
    # pass 2: obs of the QC-passed tiles, rates, crops
    frames = []
    for rec in done.itertuples():
        with np.load(part_of(rec)) as z:
            t = pd.read_json(StringIO(str(z["table"])), orient="split")
            if has_death:
                cols = ("death_pixel_rate", "death_intensity_rate", "intensity_per_pixel")
                rates = np.full((len(t), len(cols)), np.nan)
                elig = t["death_eligible"].to_numpy(bool)
                if elig.any():
                    r = tile_death_rates(
                        z["death"],
                        z["mask"],
                        threshold,
                        min_nucleus_fraction=cfg.min_nucleus_fraction,
                    )
                    rates[elig] = r[list(cols)].to_numpy(float)
                t = t.assign(**{c: rates[:, i] for i, c in enumerate(cols)})
        t = t[t["qc_pass"].to_numpy(bool)].copy()
        t.insert(0, "plate", str(rec.plate))
        t.insert(1, "well", str(rec.well))
        t.insert(2, "field", int(rec.field))
        for k, v in (_map_row(table, str(rec.plate), str(rec.well)) or {}).items():
            t[k] = v
        frames.append(t)
    obs = pd.concat(frames, ignore_index=True)
    obs["unit"] = "tile"
    if has_death:
        obs["death_rate"] = obs["death_intensity_rate"]
    obs = obs.drop(
        columns=["qc_pass", "qc_reason", "death_eligible", "n_nuclear_px"], errors="ignore"
    )
    obs.index = [
        f"{p}_{w}_f{f}_t{r}_{c}"
        for p, w, f, r, c in zip(
            obs["plate"], obs["well"], obs["field"], obs["tile_row"], obs["tile_col"], strict=True
        )
    ]
    for col in obs.columns:
        if obs[col].dtype == object:
            obs[col] = obs[col].astype(str).astype("category")
    qc_table = qc.copy()
    for col in qc_table.columns:
        if qc_table[col].dtype == object:
            qc_table[col] = qc_table[col].fillna("").astype(str)
    uns = {
        "qc": qc_table,
        "death_threshold": threshold,
        "ingest": {"unit": "tile", "config": json.dumps(cfg.model_dump(), default=str)},
    }
    with H5scWriter(
        out, obs, channel_names=list(cfg.crop_channels), crop_size=cfg.tile_size, uns=uns
    ) as writer:
        for rec in progress(list(done.itertuples()), desc="writing tiles", unit="field"):
            with np.load(part_of(rec)) as z:
                writer.write(z["tiles"])
    atomic_write_text(out.with_name(out.stem + ".qc.csv"), qc_table.to_csv(index=False))
    shutil.rmtree(parts, ignore_errors=True)
    n_rejected = int(qc["n_tiles"].sum() - qc["n_tiles_pass"].sum())
    n_rate = int(np.isfinite(obs["death_rate"].to_numpy(float)).sum()) if has_death else 0
    logger.info(
        "wrote %d tiles (%d rejected by QC, %d with a death rate) from %d fields to %s",
        len(obs),
        n_rejected,
        n_rate,
        len(qc),
        out,
    )
    return TileIngestResult(
        out,
        len(obs),
        n_rejected,
        len(qc),
        int((qc["status"] != "ok").sum()),
        n_rate,
        threshold,
        qc_table,
    )
