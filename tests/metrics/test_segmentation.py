from __future__ import annotations

import numpy as np
import pytest

from cellsae.metrics.segmentation import detection_f1, instance_iou, match_instances


def _labels():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6] = 1
    labels[10:16, 10:16] = 2
    labels[2:5, 12:18] = 3
    return labels


def test_perfect_match_and_label_permutation():
    truth = _labels()
    perm = np.array([0, 3, 1, 2])
    result = match_instances(truth, perm[truth])
    assert result.f1 == 1.0 and result.mean_matched_iou == 1.0 and result.tp == 3


def test_counts_misses_and_false_positives():
    truth = _labels()
    pred = truth.copy()
    pred[pred == 3] = 0  # missed
    pred[18:20, 0:3] = 7  # spurious
    pred[10:16, 10:13] = 0  # half of object 2: IoU 0.5 still matches at 0.5
    r = match_instances(truth, pred)
    assert (r.tp, r.fp, r.fn) == (2, 1, 1)
    assert r.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert match_instances(truth, pred, iou_threshold=0.6).tp == 1
    iou, t_ids, p_ids = instance_iou(truth, pred)
    assert iou.shape == (3, 3) and iou[1, list(p_ids).index(2)] == pytest.approx(0.5)


def test_empty_and_invalid_inputs():
    empty = np.zeros((5, 5), int)
    assert match_instances(empty, empty).f1 == 1.0
    assert match_instances(_labels(), np.zeros((20, 20), int)).recall == 0.0
    with pytest.raises(ValueError, match="same shape"):
        match_instances(empty, np.zeros((4, 4), int))
    with pytest.raises(TypeError, match="boolean mask"):
        match_instances(empty > 0, empty)


def test_detection_f1_is_one_to_one(rng):
    truth = rng.uniform(0, 100, (30, 2))
    pred = truth[rng.permutation(30)] + rng.normal(0, 0.5, (30, 2))
    assert detection_f1(truth, pred, max_distance=3).f1 == 1.0
    doubled = np.concatenate([pred, pred[:5] + 0.1])
    r = detection_f1(truth, doubled, max_distance=3)
    assert (r.tp, r.fp, r.fn) == (30, 5, 0)
    far = detection_f1(truth, truth + 1000, max_distance=3)
    assert far.tp == 0 and far.f1 == 0.0
    assert detection_f1(np.zeros((0, 2)), pred).f1 == 0.0
