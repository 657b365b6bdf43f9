"""Dataset-level mean IoU from a summed confusion matrix (exact under DDP)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class SegmentationIoU(Metric):
    """Per-class and mean IoU over a whole split.

    Pixels labelled ``ignore_index`` are skipped. IoU_k = TP / (TP + FP + FN) from the confusion matrix
    summed over all images (not averaged per image). The mean is over classes whose union is non-empty;
    ``iou_per_class`` is NaN for the others.
    """

    full_state_update = False
    higher_is_better = True

    confmat: Tensor  # state (add_state): [K, K] counts, rows = ground truth

    def __init__(self, num_classes: int, ignore_index: int | None = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``: ``[B, H, W]`` class indices or ``[B, K, H, W]`` scores; ``target``: ``[B, H, W]``."""
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"SegmentationIoU: preds {tuple(preds.shape)} vs target {tuple(target.shape)}")
        valid = (
            target != self.ignore_index
            if self.ignore_index is not None
            else torch.ones_like(target, dtype=torch.bool)
        )
        t = target[valid].long()
        p = preds[valid].long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(
                f"SegmentationIoU: target values {sorted(set(t.unique().tolist()))} outside "
                f"[0, {self.num_classes}) and not ignore_index={self.ignore_index}"
            )
        idx = t * self.num_classes + p
        self.confmat += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def iou_per_class(self) -> Tensor:
        cm = self.confmat.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan"))).float()

    per_class = iou_per_class

    def compute(self) -> Tensor:
        iou = self.iou_per_class()
        present = ~iou.isnan()
        return iou[present].mean() if present.any() else torch.tensor(0.0)
