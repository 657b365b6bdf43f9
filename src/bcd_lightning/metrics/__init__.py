"""Segmentation metrics as torchmetrics ``Metric`` s with sum-reduced states."""

from bcd_lightning.metrics.boundary import BoundaryFScore, BoundaryIoU
from bcd_lightning.metrics.connectivity import ConnectivityError
from bcd_lightning.metrics.iou import SegmentationIoU

__all__ = ["BoundaryFScore", "BoundaryIoU", "ConnectivityError", "SegmentationIoU"]
