"""The metric set every validation, test and evaluation reports, under one set of names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import torch
from torch import Tensor, nn

from bcd_lightning.metrics.boundary import BoundaryFScore, BoundaryIoU
from bcd_lightning.metrics.connectivity import ConnectivityError
from bcd_lightning.metrics.iou import SegmentationIoU

#: Logged name -> whether higher is better.
METRIC_NAMES = {"mIoU": True, "boundary_iou": True, "boundary_f": True, "connectivity_err": False}


class _ClassMetric(Protocol):
    """What SegMetrics calls on each of its metrics (all have per-class values)."""

    def update(self, preds: Tensor, target: Tensor) -> None: ...
    def compute(self) -> Tensor: ...
    def per_class(self) -> Tensor: ...
    def reset(self) -> None: ...


class SegMetrics(nn.Module):
    """mIoU, Boundary IoU, boundary F-score and connectivity error, updated together from one prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict(
            {
                "mIoU": SegmentationIoU(num_classes, ignore_index),
                "boundary_iou": BoundaryIoU(num_classes, ignore_index),
                "boundary_f": BoundaryFScore(num_classes, ignore_index),
                "connectivity_err": ConnectivityError(num_classes, ignore_index),
            }
        )

    @torch.no_grad()
    def _items(self) -> list[tuple[str, _ClassMetric]]:
        return [(name, cast(_ClassMetric, m)) for name, m in self.metrics.items()]

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``: ``[B, H, W]`` class indices (argmax once, here, for every metric)."""
        for _, metric in self._items():
            metric.update(preds, target)

    def compute(self) -> dict[str, float]:
        return {name: float(metric.compute()) for name, metric in self._items()}

    def per_class(self, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
        return {
            name: dict(zip(class_names, metric.per_class().tolist(), strict=True))
            for name, metric in self._items()
        }

    def reset(self) -> None:
        for _, metric in self._items():
            metric.reset()
