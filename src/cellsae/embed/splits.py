"""Train / validation / test splits of cells that respect how cells are grouped.

Cells from one donor (or one plate, well, or field of view) are not independent
samples: a split by cell lets a model recognise the donor instead of the genotype and
inflates accuracy. Every mode except ``random`` keeps each group whole in one part.

Modes and the group they keep together:

- ``random``: none (one cell per group; for comparison with the paper's split only),
- ``field``: plate + well + field of view,
- ``well``: plate + well,
- ``plate``: plate,
- ``donor``: donor (validation and test donors never appear in training).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._utils import SeedLike, as_rng

logger = logging.getLogger(__name__)

SPLIT_MODES = ("random", "field", "well", "plate", "donor")
PARTS = ("train", "val", "test")

# obs columns whose values, joined, name a group in each mode
_MODE_COLUMNS = {
    "field": ("plate", "well", "field"),
    "well": ("plate", "well"),
    "plate": ("plate",),
    "donor": ("donor",),
}


class SplitError(ValueError):
    """A split cannot be made as asked (too few groups, a class with no training cells)."""


def split_groups(obs: pd.DataFrame, mode: str = "donor") -> np.ndarray:
    """The group label of every cell under ``mode``.

    Parameters
    ----------
    obs : DataFrame with one row per cell; needs the columns the mode names
        (``donor``; ``plate``; ``plate, well``; ``plate, well, field``).
    mode : one of ``random, field, well, plate, donor``.

    Returns
    -------
    (n_cells,) array of str group labels.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}")
    if mode == "random":
        return np.arange(len(obs)).astype(str)
    columns = _MODE_COLUMNS[mode]
    missing = [c for c in columns if c not in obs.columns]
    if missing:
        raise KeyError(f"split mode {mode!r} needs obs column(s) {missing}; found columns: "
                       f"{list(obs.columns)}. Choose another mode or add the column.")
    parts = [obs[c].astype(str).to_numpy() for c in columns]
    groups = parts[0].astype(object)
    for p in parts[1:]:
        groups = groups + "/" + p
    return groups.astype(str)


def _counts_for(n_groups: int, fractions: tuple[float, float, float],
                min_val: int, min_test: int) -> tuple[int, int, int]:
    """How many of ``n_groups`` go to train, val and test."""
    n_val = int(round(fractions[1] * n_groups))
    n_test = int(round(fractions[2] * n_groups))
    if fractions[1] > 0:
        n_val = max(n_val, min_val)
    if fractions[2] > 0:
        n_test = max(n_test, min_test)
    # training always keeps at least one group
    while n_val + n_test > n_groups - 1 and (n_val > 0 or n_test > 0):
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_groups - n_val - n_test, n_val, n_test


def split_cells(groups: Sequence | np.ndarray, *, labels: Sequence | np.ndarray | None = None,
                fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: SeedLike = 0,
                what: str = "group") -> np.ndarray:
    """Assign whole groups of cells to train, val and test.

    Parameters
    ----------
    groups : (n_cells,) group label of each cell (see :func:`split_groups`).
    labels : (n_cells,) class of each cell, optional. When every group holds one class
        (a donor has one genotype) the split is stratified: each class sends its own
        groups to every part, so every class is seen in training and held out. When
        groups mix classes, groups are shuffled and assigned by cell count.
    fractions : (train, val, test) shares of groups; normalised to sum to 1. A zero
        share leaves that part empty.
    seed : int or numpy Generator.
    what : the word for a group in error messages (``donor``, ``plate``, …).

    Returns
    -------
    (n_cells,) array of ``"train"``, ``"val"`` or ``"test"``.

    Raises
    ------
    SplitError
        Fewer groups than the non-empty parts need (e.g. a single donor: no held-out
        split is possible), or a class whose groups cannot fill training and test.
    """
    groups = np.asarray(groups).astype(str)
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0 or fr[0] <= 0:
        raise ValueError(f"fractions must be three non-negative shares (train, val, test) with "
                         f"train > 0, got {tuple(fractions)}")
    fr = tuple(fr / fr.sum())
    rng = as_rng(seed)
    n_parts = 1 + int(fr[1] > 0) + int(fr[2] > 0)
    uniq = np.unique(groups)
    if len(uniq) < n_parts:
        raise SplitError(
            f"found {len(uniq)} {what}(s) ({', '.join(uniq[:5])}) but a split into "
            f"{n_parts} parts needs at least {n_parts}; no held-out {what} is possible. "
            f"Add {what}s, use a finer split mode (e.g. 'field'), or set the val/test "
            "fraction to 0."
        )
    assignment: dict[str, str] = {}
    stratified = False
    if labels is not None:
        labels = np.asarray(labels).astype(str)
        if len(labels) != len(groups):
            raise ValueError(f"labels has {len(labels)} entries but groups has {len(groups)}")
        frame = pd.DataFrame({"g": groups, "y": labels})
        per_group = frame.groupby("g", sort=True)["y"].nunique()
        stratified = bool((per_group == 1).all())
    if stratified:
        group_label = pd.DataFrame({"g": groups, "y": labels}).drop_duplicates("g")
        for label, sub in group_label.groupby("y", sort=True):
            gs = sub["g"].to_numpy()
            gs = gs[rng.permutation(len(gs))]
            n_train, n_val, n_test = _counts_for(len(gs), fr, int(fr[1] > 0), int(fr[2] > 0))
            if len(gs) < n_parts:
                logger.warning("class %r has only %d %s(s): it cannot appear in every part "
                               "of the split", label, len(gs), what)
            for g in gs[:n_train]:
                assignment[g] = "train"
            for g in gs[n_train:n_train + n_val]:
                assignment[g] = "val"
            for g in gs[n_train + n_val:]:
                assignment[g] = "test"
    else:
        sizes = pd.Series(groups).value_counts()
        order = uniq[rng.permutation(len(uniq))]
        n_train, n_val, n_test = _counts_for(len(order), fr, int(fr[1] > 0), int(fr[2] > 0))
        # assign the shuffled groups by cumulative cell share, keeping each part non-empty
        total = float(len(groups))
        cum = 0.0
        bounds = (fr[0], fr[0] + fr[1])
        remaining = {"val": n_val, "test": n_test}
        for i, g in enumerate(order):
            left = len(order) - i
            share = cum / total
            if share < bounds[0] and left > remaining["val"] + remaining["test"]:
                part = "train"
            elif remaining["val"] > 0 and (share < bounds[1] or remaining["test"] == 0):
                part = "val"
            elif remaining["test"] > 0:
                part = "test"
            else:
                part = "train"
            if part in remaining:
                remaining[part] -= 1
            assignment[g] = part
            cum += sizes[g]
    out = np.array([assignment[g] for g in groups], dtype=object).astype(str)
    return out


def make_split(obs: pd.DataFrame, mode: str = "donor", *, label_key: str | None = "genotype",
               fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: SeedLike = 0) -> np.ndarray:
    """Split the cells of ``obs`` by ``mode`` (see the module docstring).

    Parameters
    ----------
    obs : DataFrame with one row per cell.
    mode : ``random``, ``field``, ``well``, ``plate`` or ``donor``.
    label_key : obs column to stratify on (``None`` to skip).
    fractions : (train, val, test) shares of groups.
    seed : int or numpy Generator.

    Returns
    -------
    (n_cells,) array of ``"train"``, ``"val"``, ``"test"``.
    """
    groups = split_groups(obs, mode)
    labels = None
    if label_key is not None:
        if label_key not in obs.columns:
            raise KeyError(f"label column {label_key!r} not in obs; found: {list(obs.columns)}")
        labels = obs[label_key].to_numpy()
    what = "cell" if mode == "random" else mode
    return split_cells(groups, labels=labels, fractions=fractions, seed=seed, what=what)


def check_split(split: Sequence | np.ndarray, groups: Sequence | np.ndarray | None = None, *,
                what: str = "donor") -> None:
    """Raise SplitError if a group appears in more than one part, or a value is not a part.

    Parameters
    ----------
    split : (n_cells,) ``"train" | "val" | "test"`` (other values are not allowed).
    groups : (n_cells,) group of each cell, e.g. donor; optional.
    """
    split = np.asarray(split).astype(str)
    bad = sorted(set(np.unique(split)) - set(PARTS))
    if bad:
        raise SplitError(f"split values must be one of {PARTS}, found {bad}")
    if groups is None:
        return
    groups = np.asarray(groups).astype(str)
    if len(groups) != len(split):
        raise ValueError(f"split has {len(split)} entries but {what}s has {len(groups)}")
    frame = pd.DataFrame({"g": groups, "s": split})
    n_parts = frame.groupby("g")["s"].nunique()
    leaking = n_parts[n_parts > 1].index.tolist()
    if leaking:
        raise SplitError(f"{len(leaking)} {what}(s) appear in more than one part of the split "
                         f"(first: {leaking[:3]}); held-out {what}s must never be trained on. "
                         f"Make the split with cellsae.embed.make_split(obs, mode={what!r}).")
