"""Box mAP against hand-computed COCO cases (101-point interpolated precision, IoU 0.50:0.95)."""

from __future__ import annotations

import pytest
import torch

from bcd_lightning.detection.metrics import DetectionMetrics


def gt(boxes, labels, crowd=None):
    n = len(boxes)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "iscrowd": torch.tensor(crowd or [0] * n, dtype=torch.int64),
    }


def pred(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_one_box_at_iou_062() -> None:
    m = DetectionMetrics(["a"])
    # GT 10 x 10 (area 100); prediction 10 x 16.13 containing it: IoU = 100 / 161.3 = 0.62.
    m.update([pred([[0, 0, 10, 10 / 0.62]], [0.9], [1])], [gt([[0, 0, 10, 10]], [1])])
    summary, per_class = m.compute()
    # A hit at thresholds 0.50, 0.55, 0.60 (AP 1), a miss at the 7 others (AP 0): mAP = 3 / 10.
    assert summary["map"] == pytest.approx(0.3, abs=1e-6)
    assert summary["map_50"] == pytest.approx(1.0)
    assert summary["map_75"] == pytest.approx(0.0)
    assert per_class == {"a": pytest.approx(0.3, abs=1e-6)}


def test_false_positive_ranked_first_and_a_missed_object() -> None:
    m = DetectionMetrics(["a"])
    targets = [gt([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1])]
    preds = [pred([[20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])]
    m.update(preds, targets)
    summary, _ = m.compute()
    # Ranked: FP (P 0, R 0), TP (P 1/2, R 1/2). Interpolated precision is 1/2 for recall 0..0.5 (51 of the
    # 101 recall points), 0 above: AP = 51 * 0.5 / 101 at every IoU threshold.
    assert summary["map"] == pytest.approx(51 * 0.5 / 101, abs=1e-6)
    assert summary["map_50"] == pytest.approx(51 * 0.5 / 101, abs=1e-6)


def test_detection_on_a_crowd_box_is_ignored_not_a_false_positive() -> None:
    m = DetectionMetrics(["a"])
    targets = [gt([[0, 0, 10, 10], [40, 40, 80, 80]], [1, 1], crowd=[0, 1])]
    preds = [pred([[41, 41, 79, 79], [0, 0, 10, 10]], [0.95, 0.9], [1, 1])]
    m.update(preds, targets)
    assert m.compute()[0]["map"] == pytest.approx(1.0)


def test_empty_image_and_per_class() -> None:
    m = DetectionMetrics(["a", "b"])
    m.update([pred([], [], []), pred([[0, 0, 10, 10]], [0.5], [2])], [gt([], []), gt([[0, 0, 10, 10]], [2])])
    summary, per_class = m.compute()
    assert summary["map"] == pytest.approx(1.0)
    assert per_class == {"b": pytest.approx(1.0)}  # class a has no ground truth anywhere: undefined, left out
