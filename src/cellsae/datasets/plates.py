"""Write synthetic cells as raw plate images, the way a high-content scanner stores them.

Layout of ``<out>/``:

- ``<plate>/r{row:02d}c{col:02d}f{field:02d}p{plane:02d}-ch{channel}sk1fk1fl1.tiff``:
  one 2-D uint16 image per field, z-plane and channel (Opera Phenix / Harmony naming);
  channel numbers as the paper's scanner: 1 nucleus, 2 death, 3 mito, 4 lyso.
- ``platemap.csv``: ``plate, well, row, col, donor, genotype, condition``.
- ``truth_positions.csv``: ``plate, well, field, x, y, cell_index, dead`` with the true
  nucleus centre of every cell in field pixels.
- ``channels.json``: channel number → name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .._utils import atomic_path, atomic_write_text, progress
from .render import CHANNELS, gaussian_blur

logger = logging.getLogger(__name__)

FILE_CHANNELS = {"nucleus": 1, "death": 2, "mito": 3, "lyso": 4}
FILENAME = "r{row:02d}c{col:02d}f{field:02d}p{plane:02d}-ch{channel}sk1fk1fl1.tiff"
_ROWS = "ABCDEFGHIJKLMNOP"


def _place(n: int, field_size: int, crop_size: int, rng) -> np.ndarray:
    """Up to n non-overlapping cell centres on a jittered grid, (n, 2) as (x, y)."""
    step = int(crop_size * 1.3)
    per_side = max(1, (field_size - crop_size) // step + 1)
    slots = np.array([(x, y) for y in range(per_side) for x in range(per_side)])
    chosen = slots[rng.permutation(len(slots))[:n]]
    margin = (field_size - (per_side - 1) * step) / 2
    jitter = rng.uniform(-0.12, 0.12, (len(chosen), 2)) * crop_size
    return (margin + chosen * step + jitter).astype(np.float32)


def write_plates(world_gen, states, factors, plate_idx, obs: pd.DataFrame, out: str | Path, *,
                 field_size: int = 512, n_planes: int = 3, max_cells: int | None = 500,
                 seed: int = 0) -> Path:
    """Render cells into plate fields and write TIFFs, the plate map and true positions.

    Called by :func:`write_world_plates`; cells are the clean renders of the world's
    imaged cells (the crops in ``cells.h5sc`` are the same cells through crop-level noise).
    """
    import tifffile

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    size = world_gen.params.crop_size
    if field_size < 2 * size:
        raise ValueError(f"field_size ({field_size}) must be at least twice the crop size ({size})")
    n = len(obs)
    keep = np.arange(n) if max_cells is None or max_cells >= n else \
        np.sort(rng.choice(n, max_cells, replace=False))
    # the same clean renders as the crops: render the chunks that hold kept cells
    clean = {}
    for start, chunk in world_gen.crops(states, factors, plate_idx, clean=True):
        for j in np.flatnonzero((keep >= start) & (keep < start + len(chunk))):
            clean[int(keep[j])] = chunk[keep[j] - start]
    per_field = max(1, ((field_size - size) // int(size * 1.3) + 1) ** 2)
    sub = obs.iloc[keep]
    positions, platemap = [], []
    st = world_gen.structure
    groups = list(sub.groupby(["plate", "well"], observed=True).indices.items())
    for (plate, well), rows in progress(groups, desc="writing plates", unit="well"):
        cell_ids = keep[rows]
        r, c = _ROWS.index(well[0]) + 1, int(well[1:])
        donor = str(obs["donor"].iloc[cell_ids[0]])
        platemap.append({"plate": plate, "well": well, "row": r, "col": c, "donor": donor,
                         "genotype": str(obs["genotype"].iloc[cell_ids[0]]),
                         "condition": "untreated"})
        p_index = int(str(plate)[5:]) - 1
        for f, fstart in enumerate(range(0, len(cell_ids), per_field)):
            ids = cell_ids[fstart:fstart + per_field]
            centres = _place(len(ids), field_size, size, rng)
            canvas = np.zeros((4, field_size, field_size), np.float32)
            for cid, (x, y) in zip(ids, centres, strict=True):
                x0, y0 = int(round(x - size / 2)), int(round(y - size / 2))
                canvas[:, y0:y0 + size, x0:x0 + size] += clean[int(cid)]
                positions.append({"plate": plate, "well": well, "field": f + 1,
                                  "x": float(x0 + size / 2), "y": float(y0 + size / 2),
                                  "cell_index": int(cid), "dead": bool(obs["dead"].iloc[cid])})
            gain = st.plate_gain[p_index] * st.donor_gain[obs["donor"].cat.codes.iloc[ids[0]]]
            yy, xx = np.mgrid[0:field_size, 0:field_size] / field_size - 0.5
            vignette = 1.0 - 0.8 * (xx**2 + yy**2)
            field = canvas * gain[:, None, None] * vignette + st.plate_offset[p_index][:, None, None]
            focus = int(rng.integers(0, n_planes))
            for plane in range(n_planes):
                sigma = np.array([0.6 + 1.8 * abs(plane - focus)], np.float32)
                img = gaussian_blur(field[None], sigma)[0]
                img = 2.0 * np.tanh(np.clip(img, 0, None) / 2.0)
                img = rng.poisson(img * 300).astype(np.float32) / 300
                img = np.clip(img * 20000 + 200 + rng.normal(0, 20, img.shape), 0, 65535)
                for ci, name in enumerate(CHANNELS):
                    fname = FILENAME.format(row=r, col=c, field=f + 1, plane=plane + 1,
                                            channel=FILE_CHANNELS[name])
                    with atomic_path(out / str(plate) / fname) as tmp:
                        tifffile.imwrite(tmp, img[ci].astype(np.uint16), compression="zlib")
    _write_csv(out / "platemap.csv", pd.DataFrame(platemap))
    _write_csv(out / "truth_positions.csv", pd.DataFrame(positions))
    atomic_write_text(out / "channels.json",
                      json.dumps({str(v): k for k, v in FILE_CHANNELS.items()}, indent=1))
    logger.info("wrote %d cells into plate fields under %s", len(keep), out)
    return out


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_world_plates(out: str | Path, n_cells: int = 500, *, seed: int = 0, crop_size: int = 64,
                       field_size: int = 512, n_planes: int = 3, max_cells: int | None = None,
                       **kwargs) -> Path:
    """Generate a world (same parameters as :func:`neuron_world`) and write its plates."""
    from .world import _Generator, _params_from

    params = _params_from(n_cells, seed, crop_size, kwargs.pop("genotype_proportions",
                          (0.25, 0.25, 0.25, 0.25)), kwargs.pop("rna_genotype_proportions", None),
                          **kwargs)
    gen = _Generator(params)
    img_states, _, paired = gen.states()
    obs, plate_idx = gen.cells_obs(img_states, paired)
    factors = gen.factors(img_states)
    return write_plates(gen, img_states, factors, plate_idx, obs, out, field_size=field_size,
                        n_planes=n_planes, max_cells=max_cells, seed=params.seed)
