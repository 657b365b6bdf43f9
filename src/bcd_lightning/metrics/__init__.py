"""Segmentation metrics as torchmetrics ``Metric`` s with sum-reduced states."""

from bcd_lightning.metrics.boundary import BoundaryFScore, BoundaryIoU
from bcd_lightning.metrics.collection import METRIC_NAMES, SegMetrics
from bcd_lightning.metrics.connectivity import ConnectivityError
from bcd_lightning.metrics.iou import SegmentationIoU

__all__ = [
    "METRIC_NAMES",
    "BoundaryFScore",
    "BoundaryIoU",
    "ConnectivityError",
    "SegMetrics",
    "SegmentationIoU",
]
