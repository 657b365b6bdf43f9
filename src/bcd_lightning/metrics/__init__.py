"""Segmentation metrics as torchmetrics ``Metric`` s with sum-reduced states."""

from bcd_lightning.metrics.iou import SegmentationIoU

__all__ = ["SegmentationIoU"]
