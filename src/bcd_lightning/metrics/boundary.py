"""Boundary-quality metrics with sum-reduced states (exact under DDP): Boundary IoU and Boundary F-score."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from bcd_lightning.metrics.morphology import (
    NO_CLASS,
    bit_word,
    boundary_band,
    class_bits,
    has_class_bit,
    masked_bincount,
    segmentation_labels,
    window_reduce,
)


def _nan_where(undefined: Tensor, value: Tensor) -> Tensor:
    return torch.where(undefined, torch.full_like(value, float("nan")), value)


def _nanmean(values: Tensor) -> Tensor:
    defined = ~values.isnan()
    return values[defined].mean() if defined.any() else torch.tensor(0.0, device=values.device)


class BoundaryIoU(Metric):
    """Per-class and mean Boundary IoU (Cheng et al., CVPR 2021) over a whole split.

    For class c with GT mask G and predicted mask P, ``G_d = G - erode(G, d)`` is the inner band of width d
    (likewise ``P_d``) and ``BIoU_c = |G_d ∩ P_d| / |G_d ∪ P_d|`` with intersection and union summed over all
    images. The erosion is d iterations of a 3×3 square (a (2d+1)² Chebyshev window) with the image padded
    as background, as the reference ``mask_to_boundary`` (zero ``copyMakeBorder`` then ``cv2.erode``) does:
    mask pixels within d of the image border are boundary. ``d = dilation_pixels`` if given, else
    ``max(1, round(dilation_ratio * image diagonal))``.

    Pixels labelled ``ignore_index`` belong to no class in pred and GT (so the edge of an ignored region
    bounds both masks) and are never counted. The mean is over classes whose union is non-empty;
    ``per_class`` is NaN for the others.
    """

    full_state_update = False
    higher_is_better = True

    intersection: Tensor  # states (add_state): per-class counts
    gt_band: Tensor
    pred_band: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        dilation_ratio: float = 0.02,
        dilation_pixels: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if dilation_pixels is not None and dilation_pixels < 1:
            raise ValueError(f"dilation_pixels must be >= 1, got {dilation_pixels}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.dilation_ratio = dilation_ratio
        self.dilation_pixels = dilation_pixels
        for name in ("intersection", "gt_band", "pred_band"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def dilation(self, height: int, width: int) -> int:
        """Band width d in pixels for an image of this size."""
        if self.dilation_pixels is not None:
            return self.dilation_pixels
        return max(1, round(self.dilation_ratio * math.hypot(height, width)))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``: ``[B, H, W]`` class indices or ``[B, K, H, W]`` scores; ``target``: ``[B, H, W]``."""
        pred, gt = segmentation_labels(preds, target, self.num_classes, self.ignore_index, "BoundaryIoU")
        d = self.dilation(*gt.shape[-2:])
        # One min/max pass per map yields the inner bands of every class at once (see boundary_band).
        gt_band = boundary_band(gt, d, border_is_boundary=True) & (gt != NO_CLASS)
        pred_band = boundary_band(pred, d, border_is_boundary=True) & (pred != NO_CLASS)
        k = self.num_classes
        self.intersection += masked_bincount(gt, gt_band & pred_band & (gt == pred), k)
        self.gt_band += masked_bincount(gt, gt_band, k)
        self.pred_band += masked_bincount(pred, pred_band, k)

    def per_class(self) -> Tensor:
        inter = self.intersection.double()
        union = self.gt_band.double() + self.pred_band.double() - inter
        return _nan_where(union == 0, inter / union.clamp_min(1)).float()

    def compute(self) -> Tensor:
        return _nanmean(self.per_class())


class BoundaryFScore(Metric):
    """Per-class and mean boundary F1 (BF score, Csurka et al. 2013) over a whole split.

    Contour pixels of a class mask are mask pixels with at least one of their **8 neighbours** outside the
    mask; the image frame is not a contour (out-of-image neighbours are ignored). A predicted contour pixel
    is matched if a GT contour pixel of the same class lies within Chebyshev distance ``tolerance``
    (precision), and symmetrically for recall. Matched and total counts are summed over all images per
    class, then ``P = matched_pred / pred``, ``R = matched_gt / gt``, ``F1 = 2PR / (P + R)``.

    ``ignore_index`` pixels belong to no class in pred and GT and are never contour pixels. ``per_class`` is
    NaN for classes with no contour in pred or GT, 0 if only one side has contours; the mean is over the
    defined classes.
    """

    full_state_update = False
    higher_is_better = True

    matched_pred: Tensor  # states (add_state): per-class counts
    total_pred: Tensor
    matched_gt: Tensor
    total_gt: Tensor

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, tolerance: int = 2, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.tolerance = tolerance
        for name in ("matched_pred", "total_pred", "matched_gt", "total_gt"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``: ``[B, H, W]`` class indices or ``[B, K, H, W]`` scores; ``target``: ``[B, H, W]``."""
        pred, gt = segmentation_labels(preds, target, self.num_classes, self.ignore_index, "BoundaryFScore")
        gt_edge = boundary_band(gt, 1, border_is_boundary=False) & (gt != NO_CLASS)
        pred_edge = boundary_band(pred, 1, border_is_boundary=False) & (pred != NO_CLASS)
        pred_hit = torch.zeros_like(pred_edge)
        gt_hit = torch.zeros_like(gt_edge)
        # "Is there a contour pixel of class c nearby" for a word of classes at a time: OR-dilate a
        # bit-per-class map instead of dilating one plane per class.
        dtype, bits = bit_word(self.num_classes)
        for first in range(0, self.num_classes, bits):
            gt_near = window_reduce(
                class_bits(gt, gt_edge, first, dtype, bits), self.tolerance, torch.bitwise_or, 0
            )
            pred_near = window_reduce(
                class_bits(pred, pred_edge, first, dtype, bits), self.tolerance, torch.bitwise_or, 0
            )
            pred_hit |= has_class_bit(gt_near, pred, first, bits)
            gt_hit |= has_class_bit(pred_near, gt, first, bits)
        k = self.num_classes
        self.matched_pred += masked_bincount(pred, pred_edge & pred_hit, k)
        self.total_pred += masked_bincount(pred, pred_edge, k)
        self.matched_gt += masked_bincount(gt, gt_edge & gt_hit, k)
        self.total_gt += masked_bincount(gt, gt_edge, k)

    def precision_recall(self) -> tuple[Tensor, Tensor]:
        """Per-class boundary precision and recall (NaN where there are no pred / GT contour pixels)."""
        tp, np_ = self.matched_pred.double(), self.total_pred.double()
        tg, ng = self.matched_gt.double(), self.total_gt.double()
        precision = _nan_where(np_ == 0, tp / np_.clamp_min(1))
        recall = _nan_where(ng == 0, tg / ng.clamp_min(1))
        return precision.float(), recall.float()

    def per_class(self) -> Tensor:
        precision, recall = self.precision_recall()
        p, r = precision.nan_to_num(0.0), recall.nan_to_num(0.0)
        f1 = torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-12), torch.zeros_like(p))
        return _nan_where((self.total_pred == 0) & (self.total_gt == 0), f1)

    def compute(self) -> Tensor:
        return _nanmean(self.per_class())
