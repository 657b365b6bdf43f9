"""Instance segmentation metrics of Mask R-CNN outputs: box, mask and Boundary AP plus per-instance connectivity.

* AP: the COCO protocol through faster-coco-eval (IoU 0.50:0.95, 101 recall points, 100 detections per
  image, crowd targets ignored), ``iouType`` bbox, segm and boundary. Boundary AP (Cheng et al. 2021) uses
  IoU = min(mask IoU, boundary IoU), the boundary being a mask minus its erosion by
  d = max(1, round(ratio * image diagonal)) pixels.
* Connectivity: predictions with score >= :data:`CONNECTIVITY_MIN_SCORE` (the ones a user keeps) are matched
  to the non-crowd ground truth of their image and class greedily by score at mask IoU >= :data:`MATCH_IOU`,
  each ground truth at most once (COCO's matching at one threshold). For each matched pair,
  C = number of 8-connected components of the binarised mask; ``conn_error`` = mean |C(pred) - C(gt)|,
  ``broken_rate`` = fraction of pairs with C(pred) > C(gt). Relative to the matched ground truth because a
  ground-truth instance may itself be split (e.g. by an occluding thin structure). 0.0 without any pair.

DDP: masks are RLE-encoded in ``update`` and each image is kept as one self-contained record in a list state,
gathered across ranks with ``all_gather_object`` (as torchmetrics' ``MeanAveragePrecision`` does for its RLE
states); connectivity is sum/count tensor states. Both are exact whatever the split of images over ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from bcd_lightning.metrics.morphology import count_components

logger = logging.getLogger(__name__)

#: Scalar results: box / mask / boundary AP (COCO names; -1 = undefined, e.g. no ground truth) and the
#: connectivity of matched instances.
INSTANCE_SUMMARY_KEYS = (
    "map",
    "map_50",
    "map_75",
    "mask_map",
    "mask_map_50",
    "mask_map_75",
    "boundary_map",
    "boundary_map_50",
    "boundary_map_75",
    "conn_error",
    "broken_rate",
)

#: Mask R-CNN mask probabilities are binarised at this value (torchvision's convention).
MASK_THRESHOLD = 0.5
#: Only predictions at least this confident enter the connectivity metric (low-score ones are not kept by
#: a user and would make the numbers depend on how many near-duplicates the model emits).
CONNECTIVITY_MIN_SCORE = 0.5
#: Mask IoU at which a prediction matches a ground-truth instance for the connectivity metric.
MATCH_IOU = 0.5

# (summary prefix, faster-coco-eval iouType, which area the COCO area ranges use)
_EVALS = (("", "bbox", "area_bbox"), ("mask_", "segm", "area_segm"), ("boundary_", "boundary", "area_segm"))


class _Image(NamedTuple):
    """One image's ground truth and detections (numpy / RLE dicts: picklable, device-free)."""

    height: int
    width: int
    gt_boxes: np.ndarray  # [M, 4] xyxy
    gt_labels: np.ndarray  # [M]
    gt_crowd: np.ndarray  # [M]
    gt_rles: tuple[dict[str, Any], ...]
    dt_boxes: np.ndarray  # [N, 4] xyxy
    dt_scores: np.ndarray  # [N]
    dt_labels: np.ndarray  # [N]
    dt_rles: tuple[dict[str, Any], ...]


def _encode(masks: Tensor) -> tuple[dict[str, Any], ...]:
    """RLE of binary masks ``[N, H, W]`` (COCO's column-major run lengths)."""
    from faster_coco_eval.core import mask as mask_utils

    if masks.shape[0] == 0:
        return ()
    arr = np.asfortranarray(masks.permute(1, 2, 0).to(torch.uint8).cpu().numpy())
    return tuple(mask_utils.encode(arr))


def _numpy(x: Tensor, dtype: type) -> np.ndarray:
    return x.detach().cpu().numpy().astype(dtype, copy=False)


class InstanceMetrics(Metric):
    """``update(preds, targets)`` with torchvision Mask R-CNN output/target dicts; ``compute()`` →
    (:data:`INSTANCE_SUMMARY_KEYS` dict, mask AP per class name).

    ``preds``: ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]`` in 1..K, ``masks [N, 1, H, W]``
    probabilities; ``targets``: ``boxes [M, 4]``, ``labels [M]``, optional ``iscrowd [M]``,
    ``masks [M, H, W]`` (uint8 / bool).
    """

    full_state_update = False
    images: list[_Image]
    pairs: Tensor
    abs_diff: Tensor
    broken: Tensor

    def __init__(self, class_names: Sequence[str], boundary_dilation_ratio: float = 0.02) -> None:
        super().__init__()
        if not class_names:
            raise ValueError("InstanceMetrics needs at least one class name")
        if boundary_dilation_ratio <= 0:
            raise ValueError(f"boundary_dilation_ratio must be > 0, got {boundary_dilation_ratio}")
        self.class_names = list(class_names)
        self.boundary_dilation_ratio = float(boundary_dilation_ratio)
        self.add_state("images", default=[], dist_reduce_fx=None)
        for name in ("pairs", "abs_diff", "broken"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    # --- update ---------------------------------------------------------------------------------------
    def update(self, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"InstanceMetrics: {len(preds)} predictions for {len(targets)} targets")
        for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
            gt_masks = t["masks"].bool()
            dt_masks = p["masks"]
            if dt_masks.dim() == 4:
                dt_masks = dt_masks[:, 0]
            if gt_masks.dim() != 3 or dt_masks.shape[-2:] != gt_masks.shape[-2:]:
                raise ValueError(
                    f"InstanceMetrics: image {i}: prediction masks {tuple(p['masks'].shape)} vs target masks "
                    f"{tuple(t['masks'].shape)}, need [N, 1, H, W] and [M, H, W] of one image size"
                )
            for what, labels in (("prediction", p["labels"]), ("target", t["labels"])):
                bad = (labels < 1) | (labels > len(self.class_names))
                if bool(bad.any()):
                    raise ValueError(
                        f"InstanceMetrics: image {i}: {what} labels {sorted(set(labels[bad].tolist()))} "
                        f"outside 1..{len(self.class_names)} ({len(self.class_names)} classes)"
                    )
            dt_bin = dt_masks > MASK_THRESHOLD
            crowd = t.get("iscrowd")
            if crowd is None:
                crowd = torch.zeros_like(t["labels"])
            image = _Image(
                height=int(gt_masks.shape[-2]),
                width=int(gt_masks.shape[-1]),
                gt_boxes=_numpy(t["boxes"].reshape(-1, 4), np.float64),
                gt_labels=_numpy(t["labels"], np.int64),
                gt_crowd=_numpy(crowd, np.int64),
                gt_rles=_encode(gt_masks),
                dt_boxes=_numpy(p["boxes"].reshape(-1, 4), np.float64),
                dt_scores=_numpy(p["scores"], np.float64),
                dt_labels=_numpy(p["labels"], np.int64),
                dt_rles=_encode(dt_bin),
            )
            self.images.append(image)
            self._update_connectivity(image, dt_bin, gt_masks)

    def _update_connectivity(self, image: _Image, dt_bin: Tensor, gt_bin: Tensor) -> None:
        pairs = _match(image)
        if not pairs:
            return
        d_idx = torch.tensor([d for d, _ in pairs], device=dt_bin.device)
        g_idx = torch.tensor([g for _, g in pairs], device=gt_bin.device)
        both = torch.cat([dt_bin[d_idx], gt_bin.to(dt_bin.device)[g_idx]])
        # Crop to the joint bounding box of all these masks: it holds every foreground pixel, so the counts
        # are unchanged, and small instances in large images cost little.
        rows, cols = both.any(0).any(1).nonzero(), both.any(0).any(0).nonzero()
        both = both[:, int(rows.min()) : int(rows.max()) + 1, int(cols.min()) : int(cols.max()) + 1]
        counts = count_components(both.to(torch.int8), num_classes=2, connectivity=8)[:, 1]
        c_pred, c_gt = counts[: len(pairs)], counts[len(pairs) :]
        self.pairs += len(pairs)
        self.abs_diff += (c_pred - c_gt).abs().sum().to(self.abs_diff.device)
        self.broken += (c_pred > c_gt).sum().to(self.broken.device)

    # --- compute --------------------------------------------------------------------------------------
    def compute(self) -> tuple[dict[str, float], dict[str, float]]:  # type: ignore[override]
        gt, dt = self._coco_annotations()
        summary: dict[str, float] = {}
        per_class: dict[str, float] = {}
        for prefix, iou_type, area_key in _EVALS:
            stats, precision = self._evaluate(gt, dt, iou_type, area_key)
            summary[f"{prefix}map"], summary[f"{prefix}map_50"], summary[f"{prefix}map_75"] = stats
            if iou_type == "segm":
                per_class = self._per_class(precision, gt, dt)
        pairs = int(self.pairs)
        summary["conn_error"] = float(self.abs_diff) / pairs if pairs else 0.0
        summary["broken_rate"] = float(self.broken) / pairs if pairs else 0.0
        return {k: summary[k] for k in INSTANCE_SUMMARY_KEYS}, per_class

    def _coco_annotations(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """COCO annotation dicts (ids from 1, as COCOeval requires) of all images, built once."""
        from faster_coco_eval.core import mask as mask_utils

        gt: list[dict[str, Any]] = []
        dt: list[dict[str, Any]] = []
        for image_id, im in enumerate(self.images):
            for out, boxes, labels, rles, extra in (
                (gt, im.gt_boxes, im.gt_labels, im.gt_rles, [{"iscrowd": int(c)} for c in im.gt_crowd]),
                (dt, im.dt_boxes, im.dt_labels, im.dt_rles, [{"score": float(s)} for s in im.dt_scores]),
            ):
                areas = mask_utils.area(list(rles)) if rles else []
                for k, (box, label, rle, more) in enumerate(zip(boxes, labels, rles, extra, strict=True)):
                    x0, y0, x1, y1 = (float(v) for v in box)
                    out.append(
                        {
                            "id": len(out) + 1,
                            "image_id": image_id,
                            "category_id": int(label),
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "segmentation": rle,
                            "area_bbox": (x1 - x0) * (y1 - y0),
                            "area_segm": float(areas[k]),
                            "iscrowd": 0,
                            **more,
                        }
                    )
        return gt, dt

    def _evaluate(
        self, gt: list[dict[str, Any]], dt: list[dict[str, Any]], iou_type: str, area_key: str
    ) -> tuple[tuple[float, float, float], np.ndarray]:
        """(AP@[.5:.95], AP@.5, AP@.75) and COCO's precision array ``[T, R, K, A, M]``."""
        from faster_coco_eval import COCO, COCOeval_faster

        images = [{"id": i, "height": im.height, "width": im.width} for i, im in enumerate(self.images)]
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(self.class_names)]

        def dataset(anns: list[dict[str, Any]]) -> COCO:
            # Fresh shallow copies: COCOeval adds its RLE / boundary fields to the annotation dicts.
            anns = [{**a, "area": a[area_key]} for a in anns]
            return COCO({"images": images, "annotations": anns, "categories": categories})

        ev = COCOeval_faster(
            dataset(gt),
            dataset(dt),
            iouType=iou_type,  # type: ignore[arg-type]
            print_function=logger.debug,
            boundary_dilation_ratio=self.boundary_dilation_ratio,
        )
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return (float(ev.stats[0]), float(ev.stats[1]), float(ev.stats[2])), np.asarray(ev.eval["precision"])

    def _per_class(
        self, precision: np.ndarray, gt: list[dict[str, Any]], dt: list[dict[str, Any]]
    ) -> dict[str, float]:
        """Mask AP per class seen in targets or predictions (-1 without ground truth), as torchmetrics
        reports ``map_per_class``: area "all", 100 detections, mean over defined precisions."""
        seen = sorted({a["category_id"] for a in gt} | {a["category_id"] for a in dt})
        out: dict[str, float] = {}
        for label in seen:
            p = precision[:, :, label - 1, 0, -1]
            p = p[p > -1]
            out[self.class_names[label - 1]] = float(p.mean()) if p.size else -1.0
        return out

    # --- distributed ----------------------------------------------------------------------------------
    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None
    ) -> None:
        super()._sync_dist(dist_sync_fn=dist_sync_fn, process_group=process_group)
        group = process_group or self.process_group
        gathered: list[list[_Image] | None] = [None] * dist.get_world_size(group=group)
        dist.all_gather_object(gathered, list(self.images), group=group)
        # Records are self-contained, so their order (ranks one after the other) does not matter.
        self.images = [im for rank in gathered for im in (rank or [])]

    def _apply(self, fn: Any, exclude_state: Sequence[str] = ()) -> torch.nn.Module:
        # The image records hold numpy arrays and RLE dicts, not tensors: nothing to move.
        return super()._apply(fn, exclude_state=("images", *exclude_state))


def _match(image: _Image) -> list[tuple[int, int]]:
    """(prediction, ground truth) index pairs of one image: per class, confident predictions by descending
    score take the unmatched non-crowd ground truth of highest mask IoU, if it is >= MATCH_IOU."""
    from faster_coco_eval.core import mask as mask_utils

    pairs: list[tuple[int, int]] = []
    keep = image.dt_scores >= CONNECTIVITY_MIN_SCORE
    for label in np.unique(image.dt_labels[keep]):
        d = np.flatnonzero(keep & (image.dt_labels == label))
        g = np.flatnonzero((image.gt_labels == label) & (image.gt_crowd == 0))
        if not g.size:
            continue
        d = d[np.argsort(-image.dt_scores[d], kind="stable")]
        ious = np.asarray(
            mask_utils.iou([image.dt_rles[j] for j in d], [image.gt_rles[j] for j in g], [0] * g.size)
        ).reshape(d.size, g.size)
        free = np.ones(g.size, dtype=bool)
        for row, j in enumerate(d):
            cand = np.where(free, ious[row], -1.0)
            best = int(cand.argmax())
            if cand[best] >= MATCH_IOU:
                free[best] = False
                pairs.append((int(j), int(g[best])))
    return pairs
