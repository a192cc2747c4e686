"""Segmentation and detection accuracy: instance masks against a labelled truth.

Pure functions, arrays in and numbers out. Instances are matched one-to-one by the
Hungarian algorithm on intersection-over-union (masks) or on distance (point detections).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

__all__ = ["MatchResult", "detection_f1", "instance_iou", "match_instances", "segmentation_f1"]


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching predicted instances to true ones.

    ``f1 = 2 tp / (2 tp + fp + fn)``; ``mean_matched_iou`` is the mean IoU (or, for point
    detections, the mean distance) over the matched pairs, NaN when nothing matched.
    """

    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def _result(
    n_true: int, n_pred: int, tp: int, matched_values: np.ndarray, threshold: float
) -> MatchResult:
    fp, fn = n_pred - tp, n_true - tp
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else (1.0 if n_pred == 0 else 0.0)
    denom = 2 * tp + fp + fn
    f1 = 2 * tp / denom if denom else 1.0
    mean = float(np.mean(matched_values)) if len(matched_values) else float("nan")
    return MatchResult(
        int(n_true),
        int(n_pred),
        int(tp),
        int(fp),
        int(fn),
        float(precision),
        float(recall),
        float(f1),
        mean,
        float(threshold),
    )


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        if labels.dtype == bool:
            raise TypeError(
                f"{name} is a boolean mask; pass an instance label image "
                "(e.g. scipy.ndimage.label(mask)[0])"
            )
        if not np.all(np.mod(labels, 1) == 0):
            raise TypeError(f"{name} must be an integer label image, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} has negative labels; background must be 0, objects > 0")
    return labels


def instance_iou(true_labels: np.ndarray, pred_labels: np.ndarray):
    """Pairwise IoU between every true and every predicted instance.

    Parameters
    ----------
    true_labels, pred_labels : integer label images of the same shape (any dimension),
        0 is background.

    Returns
    -------
    iou : (n_true, n_pred) array
    true_ids, pred_ids : the label values for rows and columns.
    """
    t = _check_labels(true_labels, "true_labels")
    p = _check_labels(pred_labels, "pred_labels")
    if t.shape != p.shape:
        raise ValueError(
            f"true_labels and pred_labels must have the same shape, got {t.shape} and {p.shape}"
        )
    t, p = t.ravel(), p.ravel()
    true_ids, t_inv = np.unique(t, return_inverse=True)
    pred_ids, p_inv = np.unique(p, return_inverse=True)
    counts = sparse.coo_matrix(
        (np.ones(t.size, np.int64), (t_inv, p_inv)), shape=(len(true_ids), len(pred_ids))
    ).toarray()
    t_fg = true_ids != 0
    p_fg = pred_ids != 0
    area_t = counts.sum(1)[t_fg]
    area_p = counts.sum(0)[p_fg]
    inter = counts[np.ix_(t_fg, p_fg)].astype(np.float64)
    union = area_t[:, None] + area_p[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou, true_ids[t_fg], pred_ids[p_fg]


def match_instances(
    true_labels: np.ndarray, pred_labels: np.ndarray, *, iou_threshold: float = 0.5
) -> MatchResult:
    """Match predicted to true instances one-to-one on IoU and count hits.

    A pair counts as a true positive when its IoU is at least ``iou_threshold``; the
    matching maximises total IoU (Hungarian), which for thresholds >= 0.5 equals the
    unique greedy matching.

    Parameters
    ----------
    true_labels, pred_labels : integer label images of the same shape, 0 = background.
    iou_threshold : float in (0, 1].

    Returns
    -------
    MatchResult with precision, recall, F1 and the mean IoU of matched pairs.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    iou, true_ids, pred_ids = instance_iou(true_labels, pred_labels)
    if iou.size == 0:
        return _result(len(true_ids), len(pred_ids), 0, np.array([]), iou_threshold)
    score = np.where(iou >= iou_threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(-score)
    keep = score[rows, cols] >= iou_threshold
    matched = iou[rows[keep], cols[keep]]
    return _result(len(true_ids), len(pred_ids), int(keep.sum()), matched, iou_threshold)


def segmentation_f1(
    true_labels: np.ndarray, pred_labels: np.ndarray, *, iou_threshold: float = 0.5
) -> float:
    """F1 of instance segmentation at an IoU threshold (see :func:`match_instances`)."""
    return match_instances(true_labels, pred_labels, iou_threshold=iou_threshold).f1


def detection_f1(
    true_xy: np.ndarray, pred_xy: np.ndarray, *, max_distance: float = 5.0
) -> MatchResult:
    """Detection accuracy of predicted object centres against true positions.

    Pairs are matched one-to-one minimising total distance (Hungarian); a pair within
    ``max_distance`` is a true positive.

    Parameters
    ----------
    true_xy : (n_true, d) array of true centres.
    pred_xy : (n_pred, d) array of predicted centres, same units.
    max_distance : float > 0, the largest distance that still counts as a hit.

    Returns
    -------
    MatchResult; its ``mean_matched_iou`` field holds the mean matched *distance* and
    ``threshold`` holds ``max_distance``.
    """
    true_xy = np.asarray(true_xy, dtype=np.float64)
    pred_xy = np.asarray(pred_xy, dtype=np.float64)
    if max_distance <= 0:
        raise ValueError(f"max_distance must be positive, got {max_distance}")
    for name, arr in (("true_xy", true_xy), ("pred_xy", pred_xy)):
        if arr.ndim != 2 and arr.size:
            raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {arr.shape}")
    if len(true_xy) == 0 or len(pred_xy) == 0:
        return _result(len(true_xy), len(pred_xy), 0, np.array([]), max_distance)
    if true_xy.shape[1] != pred_xy.shape[1]:
        raise ValueError(
            f"true_xy and pred_xy must have the same number of coordinates, got "
            f"{true_xy.shape[1]} and {pred_xy.shape[1]}"
        )
    from scipy.spatial import cKDTree

    neighbours = cKDTree(true_xy).query_ball_tree(cKDTree(pred_xy), max_distance)
    pair_t = np.repeat(np.arange(len(true_xy)), [len(n) for n in neighbours])
    pair_p = np.fromiter((j for n in neighbours for j in n), dtype=np.int64, count=len(pair_t))
    if len(pair_t) == 0:
        return _result(len(true_xy), len(pred_xy), 0, np.array([]), max_distance)
    # Only pairs within range can match: a dense cost with a large penalty elsewhere
    # (callers match per field, so the matrix stays modest).
    big = max_distance * 10 + 1.0
    cost = np.full((len(true_xy), len(pred_xy)), big)
    cost[pair_t, pair_p] = np.linalg.norm(true_xy[pair_t] - pred_xy[pair_p], axis=1)
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] <= max_distance
    return _result(
        len(true_xy), len(pred_xy), int(keep.sum()), cost[rows[keep], cols[keep]], max_distance
    )
