"""Dataset-level IoU from a summed confusion matrix, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from bcd_lightning.metrics import SegmentationIoU


def test_hand_computed_with_ignore() -> None:
    target = torch.tensor([[0, 0, 1, 1, 255, 2]])
    preds = torch.tensor([[0, 1, 1, 1, 2, 0]])
    m = SegmentationIoU(num_classes=3)
    m.update(preds, target)
    # class 0: tp 1, fp 1 (last px), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0, fn 1 -> 0
    iou = m.iou_per_class()
    assert iou.tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert m.compute().item() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_dataset_level_not_per_image_mean() -> None:
    m = SegmentationIoU(num_classes=2, ignore_index=None)
    m.update(torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 1, 1]]))  # class 1 perfect, class 0 absent
    m.update(torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 0, 0]]))
    # class 0: tp 3, fp 0, fn 1 -> 3/4 ; class 1: tp 4, fp 1 -> 4/5
    assert m.compute().item() == pytest.approx((3 / 4 + 4 / 5) / 2)


def test_absent_class_is_nan_and_excluded() -> None:
    m = SegmentationIoU(num_classes=3)
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert math.isnan(m.iou_per_class()[2].item()) and m.compute().item() == 1.0


def test_state_sum_equals_single_pass() -> None:
    g = torch.Generator().manual_seed(0)
    p, t = torch.randint(0, 4, (6, 8, 8), generator=g), torch.randint(0, 4, (6, 8, 8), generator=g)
    a, b, whole = SegmentationIoU(4), SegmentationIoU(4), SegmentationIoU(4)
    a.update(p[:3], t[:3])
    b.update(p[3:], t[3:])
    whole.update(p, t)
    a.confmat += b.confmat  # what a DDP sum-reduction does
    assert a.compute().item() == pytest.approx(whole.compute().item())


def test_label_out_of_range_is_named() -> None:
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        SegmentationIoU(num_classes=3).update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 7]]))
