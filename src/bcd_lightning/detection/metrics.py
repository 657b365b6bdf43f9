"""Box mAP through torchmetrics' ``MeanAveragePrecision`` (COCO protocol), with an installed backend.

``MeanAveragePrecision`` keeps every prediction and target as list states gathered across ranks before
``compute``, so the numbers are exact under DDP. The backend is ``faster_coco_eval`` (numpy only; also
Boundary AP for instance masks) or ``pycocotools``: ``pip install 'bcd_lightning[detection]'``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from torch import Tensor, nn

from bcd_lightning.utils.config_check import ConfigError

if TYPE_CHECKING:
    from bcd_lightning.detection.instance_metrics import InstanceMetrics

#: Scalar results reported in tables and logs (torchmetrics' names; -1 means "not defined", e.g. no
#: small objects in the data).
# faster-coco-eval prints its summary table at INFO on every compute.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

SUMMARY_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


Backend = Literal["pycocotools", "faster_coco_eval"]


def available_backend() -> Backend:
    candidates: tuple[tuple[str, Backend], ...] = (
        ("faster_coco_eval", "faster_coco_eval"),
        ("pycocotools", "pycocotools"),
    )
    for module, name in candidates:
        if importlib.util.find_spec(module) is not None:
            return name
    raise ConfigError(
        "Box mAP needs faster-coco-eval or pycocotools: pip install 'bcd_lightning[detection]' "
        "(or pip install faster-coco-eval)."
    )


class DetectionMetrics(nn.Module):
    """``update(preds, targets)`` with torchvision's output/target dicts; ``compute()`` → scalar dict
    (:data:`SUMMARY_KEYS`) plus ``per_class`` (AP per class name)."""

    def __init__(self, class_names: Sequence[str], backend: Backend | None = None) -> None:
        super().__init__()
        from torchmetrics.detection import MeanAveragePrecision

        self.class_names = list(class_names)
        self.map = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", class_metrics=True, backend=backend or available_backend()
        )

    def update(self, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        self.map.update(
            [{k: p[k].detach() for k in ("boxes", "scores", "labels")} for p in preds],
            [{k: t[k] for k in ("boxes", "labels", "iscrowd") if k in t} for t in targets],
        )

    def compute(self) -> tuple[dict[str, float], dict[str, float]]:
        out = self.map.compute()
        summary = {k: float(out[k]) for k in SUMMARY_KEYS}
        per_class: dict[str, float] = {}
        classes = out["classes"].reshape(-1).tolist()
        values = out["map_per_class"].reshape(-1).tolist()
        for label, value in zip(classes, values, strict=False):
            if 1 <= int(label) <= len(self.class_names):
                per_class[self.class_names[int(label) - 1]] = float(value)
        return summary, per_class

    def reset(self) -> None:
        self.map.reset()


def metrics_for(class_names: Sequence[str], masks: bool) -> DetectionMetrics | InstanceMetrics:
    """The metric of a detector: box mAP, or with instance masks box / mask / Boundary AP and connectivity."""
    if not masks:
        return DetectionMetrics(class_names)
    from bcd_lightning.detection.instance_metrics import InstanceMetrics

    if importlib.util.find_spec("faster_coco_eval") is None:  # Boundary AP exists only there
        raise ConfigError(
            "Instance metrics (mask / Boundary AP) need faster-coco-eval: pip install 'bcd_lightning[detection]' "
            "(or pip install faster-coco-eval)."
        )
    return InstanceMetrics(class_names)
