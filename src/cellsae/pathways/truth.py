"""Score found gene modules against known modules (a planted hierarchy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score


def match_levels(hierarchy, truth: Mapping[str, Sequence[str]]) -> dict[str, tuple[int, float]]:
    """ARI of the found level nearest in module count to each true level.

    Parameters
    ----------
    hierarchy : a :class:`cellsae.pathways.Hierarchy`.
    truth : level name → true module label of every gene in ``hierarchy.genes`` (``""``
        for genes outside every true module; those genes are left out of the score).

    Returns
    -------
    level name → (index of the matched found level, adjusted Rand index).
    """
    out = {}
    for level, labels in truth.items():
        labels = np.asarray(labels).astype(str)
        if len(labels) != len(hierarchy.genes):
            raise ValueError(f"truth level '{level}' has {len(labels)} labels for "
                             f"{len(hierarchy.genes)} genes")
        mask = labels != ""
        if mask.sum() < 2:
            continue
        n_true = len(set(labels[mask]))
        j = int(np.argmin([abs(n - n_true) for n in hierarchy.n_modules]))
        out[level] = (j, float(adjusted_rand_score(labels[mask], hierarchy.labels[j][mask])))
    return out
