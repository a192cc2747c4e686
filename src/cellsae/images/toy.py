"""A tiny hand-made plate for tests and smoke runs (not the synthetic neuron world).

:func:`make_toy_plate` writes Opera Phenix-style per-channel, per-z TIFFs with nuclei at
known positions, a death dye in the nuclei of known dead cells, puncta for mito and
lyso, slow vignetting and noise, plus the plate map and the true positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .._utils import SeedLike, as_rng
from .io import well_name

__all__ = ["make_toy_field", "make_toy_plate"]

TOY_CHANNELS = {1: "nucleus", 2: "death", 3: "mito", 4: "lyso"}


def make_toy_field(
    size: int = 128,
    n_cells: int = 8,
    *,
    radius: float = 6.0,
    dead_fraction: float = 0.3,
    n_planes: int = 3,
    seed: SeedLike = 0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """One field: ``(4, Z, size, size)`` uint16 (nucleus, death, mito, lyso) and its
    truth table (x, y, dead), nuclei at least 3.2 radii apart."""
    rng = as_rng(seed)
    centres: list[tuple[float, float]] = []
    margin = radius + 2
    for _ in range(n_cells * 200):
        if len(centres) == n_cells:
            break
        c = rng.uniform(margin, size - margin, 2)
        if all(np.hypot(*(c - np.array(o))) > 3.2 * radius for o in centres):
            centres.append((float(c[0]), float(c[1])))
    yy, xx = np.mgrid[:size, :size]
    nucleus = np.zeros((size, size), np.float32)
    death = np.zeros_like(nucleus)
    body = np.zeros_like(nucleus)
    dead = rng.random(len(centres)) < dead_fraction
    for (cy, cx), is_dead in zip(centres, dead, strict=True):
        r = radius * rng.uniform(0.85, 1.15)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = (u / (1.2 * r)) ** 2 + (v / (0.85 * r)) ** 2
        nuc = np.clip(1.5 - inside, 0, 1)
        nucleus += nuc * rng.uniform(0.7, 1.0)
        death += nuc * (rng.uniform(0.8, 1.0) if is_dead else rng.uniform(0.0, 0.06))
        body += np.exp(-(dy**2 + dx**2) / (2 * (2.2 * r) ** 2))
    mito = np.zeros_like(nucleus)
    lyso = np.zeros_like(nucleus)
    for img, n_spots in ((mito, 60 * max(len(centres), 1)), (lyso, 25 * max(len(centres), 1))):
        ys = rng.integers(0, size, n_spots)
        xs = rng.integers(0, size, n_spots)
        keep = rng.random(n_spots) < body[ys, xs]
        img[ys[keep], xs[keep]] = 1.0
    mito = ndi.gaussian_filter(mito, 0.8) * 6 + 0.25 * body
    lyso = ndi.gaussian_filter(lyso, 0.8) * 6
    vignette = 1.0 - 0.25 * (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 2) ** 2)
    channels = np.stack([nucleus, death, mito, lyso]) * vignette
    gains = np.array([3000, 4000, 2500, 2500], np.float32)[:, None, None]
    stack = np.empty((4, n_planes, size, size), np.uint16)
    focus = n_planes // 2
    for z in range(n_planes):
        blur = 0.6 + 1.5 * abs(z - focus)
        plane = np.stack([ndi.gaussian_filter(c, blur) for c in channels]) * gains
        plane *= 1.0 - 0.2 * abs(z - focus)
        plane += 200 + rng.normal(0, 20, plane.shape)
        stack[:, z] = np.clip(plane, 0, 65535).astype(np.uint16)
    truth = pd.DataFrame(
        {"x": [c[1] for c in centres], "y": [c[0] for c in centres], "dead": dead.astype(bool)}
    )
    return stack, truth


def make_toy_plate(
    root: str | Path,
    *,
    plate: str = "plate01",
    wells: tuple[str, ...] = ("B02", "B03"),
    n_fields: int = 2,
    size: int = 128,
    n_cells: int = 8,
    n_planes: int = 3,
    seed: SeedLike = 0,
) -> dict:
    """Write a toy plate under ``root/plate`` plus ``root/platemap.csv`` and
    ``root/truth_positions.csv`` (the layout of the synthetic plates).

    Returns
    -------
    dict with ``plate_dir``, ``platemap`` and ``truth`` paths.
    """
    import tifffile

    from .io import parse_well

    rng = as_rng(seed)
    root = Path(root)
    plate_dir = root / plate
    plate_dir.mkdir(parents=True, exist_ok=True)
    truth_rows, map_rows = [], []
    for wi, well in enumerate(wells):
        row, col = parse_well(well)
        map_rows.append(
            {
                "plate": plate,
                "well": well_name(row, col),
                "row": row,
                "col": col,
                "donor": f"d{wi % 2}",
                "genotype": "WT" if wi % 2 == 0 else "MUT",
                "condition": "ctrl",
            }
        )
        for field in range(1, n_fields + 1):
            stack, truth = make_toy_field(size, n_cells, n_planes=n_planes, seed=rng)
            for ci in range(stack.shape[0]):
                for z in range(n_planes):
                    name = f"r{row:02d}c{col:02d}f{field:02d}p{z + 1:02d}-ch{ci + 1}sk1fk1fl1.tiff"
                    tifffile.imwrite(plate_dir / name, stack[ci, z])
            truth.insert(0, "field", field)
            truth.insert(0, "well", well_name(row, col))
            truth.insert(0, "plate", plate)
            truth["cell_index"] = np.arange(len(truth))
            truth_rows.append(truth)
    platemap = root / "platemap.csv"
    pd.DataFrame(map_rows).to_csv(platemap, index=False)
    truth_path = root / "truth_positions.csv"
    pd.concat(truth_rows, ignore_index=True)[
        ["plate", "well", "field", "x", "y", "cell_index", "dead"]
    ].to_csv(truth_path, index=False)
    return {"plate_dir": plate_dir, "platemap": platemap, "truth": truth_path}
