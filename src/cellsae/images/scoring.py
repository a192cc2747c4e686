"""Score an ingestion run against true cell positions (synthetic plates)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ..metrics.segmentation import detection_f1


def score_ingestion(obs: pd.DataFrame, truth: pd.DataFrame, *, max_distance: float = 5.0) -> dict:
    """Detection F1 and death-call accuracy of ingested cells against the truth.

    Parameters
    ----------
    obs : the ingested cells' ``obs`` (``plate, well, field, x, y, dead``).
    truth : true cells (``plate, well, field, x, y, dead``), e.g. the world's
        ``truth_positions.csv``.
    max_distance : a found cell within this many pixels of a true centre is a hit.

    Returns
    -------
    dict with ``detection_f1``, ``detection_precision``, ``detection_recall``,
    ``death_call_accuracy`` (over detected cells), ``true_death_rate``,
    ``called_death_rate``, ``n_true_cells``, ``n_found_cells``.
    """
    missing = [c for c in ("plate", "well", "field", "x", "y", "dead")
               if c not in obs or c not in truth]
    if missing:
        raise KeyError(f"columns {missing} are needed in both the cells' obs and the truth")
    tp = fp = fn = 0
    correct: list[bool] = []
    keys = obs["plate"].astype(str) + "|" + obs["well"].astype(str) + "|" + \
        obs["field"].astype(int).astype(str)
    found_groups = {k: np.asarray(v) for k, v in obs.groupby(keys.to_numpy()).indices.items()}
    for (plate, well, field), group in truth.groupby(["plate", "well", "field"]):
        idx = found_groups.pop(f"{plate}|{well}|{int(field)}", np.zeros(0, int))
        sel = obs.iloc[idx]
        xy_true = group[["x", "y"]].to_numpy(float)
        xy = sel[["x", "y"]].to_numpy(float)
        r = detection_f1(xy_true, xy, max_distance=max_distance)
        tp, fp, fn = tp + r.tp, fp + r.fp, fn + r.fn
        if len(xy):
            dist, nearest = cKDTree(xy_true).query(xy)
            hit = dist <= max_distance
            correct += list(sel["dead"].to_numpy()[hit] == group["dead"].to_numpy()[nearest[hit]])
    fp += sum(len(v) for v in found_groups.values())  # cells found in fields with no truth
    return {
        "detection_f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "detection_precision": tp / max(tp + fp, 1),
        "detection_recall": tp / max(tp + fn, 1),
        "death_call_accuracy": float(np.mean(correct)) if correct else float("nan"),
        "true_death_rate": float(truth["dead"].mean()),
        "called_death_rate": float(obs["dead"].mean()) if len(obs) else float("nan"),
        "n_true_cells": int(len(truth)),
        "n_found_cells": int(len(obs)),
    }
