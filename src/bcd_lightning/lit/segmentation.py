"""Supervised segmentation training: teacher pre-training and the baseline student."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor

from bcd_lightning.lit.nonfinite import NonFiniteGuard
from bcd_lightning.lit.optim import (
    OptimizerFactory,
    SchedulerConfig,
    SchedulerFactory,
    as_scheduler,
    check_optimizer,
    step_schedule,
)
from bcd_lightning.metrics import SegMetrics
from bcd_lightning.models import SegModel, SegOutput


class SegmentationModule(L.LightningModule):
    """Trains ``model`` with pixel cross-entropy; logs dataset-level mIoU at validation and test.

    Args:
        model: the network being trained (saved in checkpoints under ``model.``).
        num_classes, ignore_index, class_names: label space.
        optimizer: ``params -> Optimizer``, e.g. a ``_partial_`` torch optimizer from ``conf/optimizer``.
        scheduler: a :class:`~bcd_lightning.lit.optim.SchedulerConfig` or a ``_partial_`` torch
            scheduler (see :mod:`bcd_lightning.lit.optim`).
        config: the composed run config as a plain dict, stored in the checkpoint so ``bcd-eval`` can
            rebuild the model from the checkpoint alone.
        nonfinite: ``stop`` or ``skip`` a training step whose loss is NaN/inf (:mod:`.nonfinite`).
    """

    def __init__(
        self,
        model: SegModel,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerConfig | SchedulerFactory | Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        nonfinite: str = "stop",
    ) -> None:
        super().__init__()
        if model.num_classes != num_classes:
            raise ValueError(
                f"Model predicts {model.num_classes} classes but the data has num_classes={num_classes}."
            )
        self.model = model
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        check_optimizer(optimizer)
        self.optimizer_cfg = optimizer  # a `_partial_` torch optimizer (None: lit.optim.DEFAULT_OPTIMIZER)
        self.scheduler_cfg = as_scheduler(dict(scheduler) if isinstance(scheduler, Mapping) else scheduler)
        self.nonfinite_guard = NonFiniteGuard(nonfinite)
        # Plain values only: checkpoints load with torch's weights_only=True.
        self.save_hyperparameters(
            {
                "num_classes": num_classes,
                "ignore_index": ignore_index,
                "class_names": self.class_names,
                "config": dict(config or {}),
            }
        )
        self.val_metrics = SegMetrics(num_classes, ignore_index)
        self.test_metrics = SegMetrics(num_classes, ignore_index)

    def forward(self, x: Tensor) -> SegOutput:
        return self.model(x)

    def cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        if (target != self.ignore_index).any():
            return F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)
        return logits.sum() * 0.0  # an all-ignored crop contributes nothing, without NaN

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor | None:
        """``CE + Σ weight · term`` over :meth:`extra_terms`; a non-finite total goes to the guard."""
        snapshot = self.nonfinite_guard.snapshot(self)  # nonfinite=skip only: BatchNorm statistics
        target = batch["mask"]
        out = self.model(batch["image"])
        extra = self.extra_terms(batch, out)
        ce = self.cross_entropy(out.logits, target)
        total = sum((weight * raw for raw, weight in extra.values()), start=ce)
        # One device sync per step (not one per term); the slow path names the culprit and its weight.
        if not torch.isfinite(total):
            raws = {name: raw for name, (raw, _) in extra.items()}
            weights = {name: weight for name, (_, weight) in extra.items()}
            return self.nonfinite_guard.on_nonfinite(self, {"ce": ce, **raws}, weights, snapshot)
        n = len(target)
        self.log("train/loss/ce", ce, on_step=True, on_epoch=True, batch_size=n)
        for name, (raw, weight) in extra.items():
            self.log(f"train/weight/{name}", weight, on_step=True, on_epoch=False, batch_size=n)
            self.log(f"train/loss/{name}", raw, on_step=True, on_epoch=True, batch_size=n)
            self.log(f"train/loss/{name}_weighted", weight * raw, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/loss/total", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        return total

    def extra_terms(self, batch: Mapping[str, Tensor], out: SegOutput) -> dict[str, tuple[Tensor, float]]:
        """Loss terms added to the cross-entropy, ``name -> (raw value, weight)``: none here."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_guard"] = self.nonfinite_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_guard.load_state_dict(checkpoint.get("nonfinite_guard", {}))

    def _eval_step(self, batch: Mapping[str, Tensor], stage: str) -> None:
        logits = self.model(batch["image"]).logits
        loss = self.cross_entropy(logits, batch["mask"])
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=len(batch["mask"]))
        getattr(self, f"{stage}_metrics").update(logits.argmax(1), batch["mask"])

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=name == "mIoU")
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_metrics.compute().items():
            self.log(f"test/{name}", value)
        for name, per_class in self.test_metrics.per_class(self.class_names).items():
            for class_name, value in per_class.items():
                self.log(f"test/{'IoU' if name == 'mIoU' else name}/{class_name}", value)
        self.test_metrics.reset()

    def configure_optimizers(self) -> OptimizerLRScheduler:
        return step_schedule(self, self.optimizer_cfg, self.scheduler_cfg)
