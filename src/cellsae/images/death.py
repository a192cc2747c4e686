"""Dead/alive calls from a death-dye channel and death rates per well and field.

A dead cell takes up the dye (e.g. propidium iodide, SYTOX) into its nucleus, so the
per-cell signal is the mean dye intensity inside the nucleus. Intensities of live and
dead cells differ by a factor rather than an offset, so the automatic threshold is set
on the log scale, separately for each plate (staining and exposure vary by plate).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["call_dead", "death_rates", "death_threshold"]


def death_threshold(intensity: np.ndarray, *, method: str = "otsu") -> float:
    """Automatic dead/alive threshold on per-cell death-dye intensities.

    Parameters
    ----------
    intensity : (n_cells,) non-negative dye intensities of one plate.
    method : "otsu" (Otsu's threshold on log intensity) or "gmm" (the crossing point of
        a two-component Gaussian mixture on log intensity).

    Returns
    -------
    float threshold in the units of ``intensity``; cells above it are called dead.
    ``inf`` when there are fewer than 10 cells (no call is possible).
    """
    x = np.asarray(intensity, np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 10:
        logger.warning(
            "only %d cells with a death-dye measurement: no automatic threshold; "
            "pass a threshold explicitly",
            len(x),
        )
        return float("inf")
    floor = max(np.percentile(x[x > 0], 1) if (x > 0).any() else 1e-6, 1e-6)
    logx = np.log(np.maximum(x, floor))
    if np.ptp(logx) == 0:
        return float("inf")
    if method == "otsu":
        from skimage.filters import threshold_otsu

        return float(np.exp(threshold_otsu(logx, nbins=256)))
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        gmm = GaussianMixture(2, random_state=0).fit(logx[:, None])
        grid = np.linspace(logx.min(), logx.max(), 2048)[:, None]
        post = gmm.predict_proba(grid)
        high = int(np.argmax(gmm.means_.ravel()))
        above = np.flatnonzero(post[:, high] > 0.5)
        return float(np.exp(grid[above[0], 0])) if len(above) else float("inf")
    raise ValueError(f"method must be 'otsu' or 'gmm', got {method!r}")


def call_dead(
    intensity: np.ndarray,
    plate: Sequence | None = None,
    *,
    threshold: float | dict | None = None,
    method: str = "otsu",
) -> tuple[np.ndarray, dict]:
    """Call cells dead when their death-dye intensity exceeds a plate-wise threshold.

    Parameters
    ----------
    intensity : (n_cells,) death-dye intensity per cell.
    plate : (n_cells,) plate of each cell (default: all one plate).
    threshold : a number used for every plate, a dict {plate: number}, or None for the
        automatic threshold of :func:`death_threshold` per plate.

    Returns
    -------
    dead : (n_cells,) bool
    thresholds : {plate: threshold used}
    """
    intensity = np.asarray(intensity, np.float64)
    plate = np.zeros(len(intensity), int) if plate is None else np.asarray(plate)
    if len(plate) != len(intensity):
        raise ValueError(f"plate has {len(plate)} entries for {len(intensity)} cells")
    dead = np.zeros(len(intensity), bool)
    used: dict = {}
    for p in pd.unique(plate):
        sel = plate == p
        if isinstance(threshold, dict):
            if p not in threshold:
                raise KeyError(
                    f"no death threshold given for plate {p!r}; thresholds were "
                    f"given for {sorted(threshold)}"
                )
            t = float(threshold[p])
        elif threshold is not None:
            t = float(threshold)
        else:
            t = death_threshold(intensity[sel], method=method)
        used[p.item() if hasattr(p, "item") else p] = t
        dead[sel] = intensity[sel] > t
    return dead, used


def death_rates(
    obs: pd.DataFrame, *, by: Sequence[str] = ("plate", "well"), dead_key: str = "dead"
) -> pd.DataFrame:
    """Fraction of dead cells per group (e.g. per well, or per well and field).

    Returns
    -------
    DataFrame with the ``by`` columns, ``n_cells``, ``n_dead`` and ``death_rate``.
    """
    missing = [k for k in (*by, dead_key) if k not in obs.columns]
    if missing:
        raise KeyError(f"obs lacks column(s) {missing}; available: {list(obs.columns)}")
    grouped = obs.groupby(list(by), observed=True)[dead_key]
    table = grouped.agg(n_cells="size", n_dead="sum").reset_index()
    table["n_dead"] = table["n_dead"].astype(int)
    table["death_rate"] = table["n_dead"] / table["n_cells"].clip(lower=1)
    return table
