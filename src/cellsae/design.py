"""Is the studied factor confounded with batch? A check of the experimental design.

In the paper every mutant class is one line (one donor) imaged on its own plates and
dates, so "genotype" cannot be told apart from donor, plate or imaging day: a classifier
or a differential test may find the batch, not the biology. :func:`check_design` reads the
per-unit table (``obs``) and flags, for the studied factor (genotype):

- levels that come from a **single donor** (no donor replication: donor and level are
  the same thing);
- pairs of levels imaged on **disjoint sets of plates** (their contrast is a plate
  contrast), and levels whose plates no other level shares.

The pipeline logs the warning and the report shows it (see ``docs/paper_mode.md``).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["DesignCheck", "check_design"]


@dataclass(frozen=True)
class DesignCheck:
    """The outcome of :func:`check_design`."""

    factor: str
    levels: list[str]
    single_donor_levels: list[str] = field(default_factory=list)
    disjoint_plate_pairs: list[tuple[str, str]] = field(default_factory=list)
    isolated_plate_levels: list[str] = field(default_factory=list)
    donors_per_level: dict = field(default_factory=dict)
    plates_per_level: dict = field(default_factory=dict)

    @property
    def confounded(self) -> bool:
        """True when any level is single-donor or any pair of levels shares no plate."""
        return bool(self.single_donor_levels or self.disjoint_plate_pairs)

    @property
    def message(self) -> str:
        """A sentence naming the confounded levels ("" when the design is balanced)."""
        if not self.confounded:
            return ""
        parts = []
        if self.single_donor_levels:
            parts.append(
                f"level(s) {', '.join(self.single_donor_levels)} of '{self.factor}' "
                "each come from a single donor, so they are confounded with donor"
            )
        if self.disjoint_plate_pairs:
            pairs = "; ".join(f"{a} vs {b}" for a, b in self.disjoint_plate_pairs)
            parts.append(
                f"these '{self.factor}' contrasts share no plate, so they are "
                f"confounded with plate/batch: {pairs}"
            )
        if self.isolated_plate_levels:
            parts.append(
                f"level(s) {', '.join(self.isolated_plate_levels)} are on plates no "
                "other level uses"
            )
        return (
            "the studied factor is confounded with batch: "
            + "; ".join(parts)
            + ". Differences between these levels cannot be separated from donor or plate "
            "effects; hold out whole donors/plates and read effects with caution."
        )

    def to_dict(self) -> dict:
        return {
            "factor": self.factor,
            "levels": self.levels,
            "confounded": self.confounded,
            "single_donor_levels": self.single_donor_levels,
            "disjoint_plate_pairs": [list(p) for p in self.disjoint_plate_pairs],
            "isolated_plate_levels": self.isolated_plate_levels,
            "donors_per_level": self.donors_per_level,
            "plates_per_level": self.plates_per_level,
            "message": self.message,
        }


def check_design(
    obs: pd.DataFrame,
    factor: str = "genotype",
    *,
    donor_key: str | None = "donor",
    plate_key: str | None = "plate",
    warn: bool = True,
) -> DesignCheck:
    """Check whether the levels of ``factor`` are confounded with donor or plate.

    Parameters
    ----------
    obs : DataFrame, one row per unit (cell or tile).
    factor : the studied factor's column (genotype).
    donor_key, plate_key : columns naming donor and plate; a missing column (or None)
        skips that part of the check.
    warn : log a warning naming the levels when the design is confounded.

    Returns
    -------
    DesignCheck
    """
    if factor not in obs.columns:
        raise KeyError(f"factor column {factor!r} not in obs; found: {list(obs.columns)}")
    y = obs[factor].astype(str)
    levels = sorted(y.unique())
    donors: dict = {}
    plates: dict = {}
    single: list[str] = []
    pairs: list[tuple[str, str]] = []
    isolated: list[str] = []
    if donor_key is not None and donor_key in obs.columns:
        sets = (
            obs.assign(_y=y)
            .groupby("_y", observed=True)[donor_key]
            .agg(lambda s: sorted(set(s.astype(str))))
        )
        donors = {str(k): list(v) for k, v in sets.items()}
        single = [lv for lv in levels if len(donors.get(lv, [])) == 1]
    if plate_key is not None and plate_key in obs.columns:
        sets = (
            obs.assign(_y=y)
            .groupby("_y", observed=True)[plate_key]
            .agg(lambda s: sorted(set(s.astype(str))))
        )
        plates = {str(k): list(v) for k, v in sets.items()}
        pairs = [
            (a, b)
            for a, b in itertools.combinations(levels, 2)
            if not set(plates[a]) & set(plates[b])
        ]
        if len(levels) > 1:
            isolated = [
                lv
                for lv in levels
                if all(not set(plates[lv]) & set(plates[o]) for o in levels if o != lv)
            ]
    result = DesignCheck(
        factor=factor,
        levels=levels,
        single_donor_levels=single,
        disjoint_plate_pairs=pairs,
        isolated_plate_levels=isolated,
        donors_per_level=donors,
        plates_per_level=plates,
    )
    if warn and result.confounded:
        logger.warning("design check: %s", result.message)
    return result
