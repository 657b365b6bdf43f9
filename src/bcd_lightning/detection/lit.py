"""Detection training and distillation: ``L = Σ detector losses + Σ_name w_name(step) · loss_name``.

Shared with segmentation by import: loss-term weights and schedules (:mod:`bcd_lightning.distill
.schedules`), the non-finite guard (:mod:`bcd_lightning.lit.nonfinite`), optimizer and LR schedule
(:mod:`bcd_lightning.lit.optim`) and the teacher pattern of :class:`~bcd_lightning.lit.DistillationModule`
(the teacher is not a registered submodule: not in ``parameters()``, the optimizer, DDP or checkpoints;
``_apply`` moves it with the module; :class:`~bcd_lightning.callbacks.TeacherGuard` works unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from rich.console import Console
from torch import Tensor, nn

from bcd_lightning.detection.data import Target
from bcd_lightning.detection.features import (
    FeatureTap,
    FrozenDetector,
    backbone_channels,
    by_stride,
    has_mask_head,
    mask_rois,
    paired_levels,
)
from bcd_lightning.detection.instance_metrics import InstanceMetrics
from bcd_lightning.detection.losses import DetectionLoss, MaskRoILoss
from bcd_lightning.detection.metrics import DetectionMetrics, metrics_for
from bcd_lightning.distill.schedules import WeightSchedule, as_schedule, scheduled_weight
from bcd_lightning.lit.nonfinite import NonFiniteGuard
from bcd_lightning.lit.optim import (
    OptimizerFactory,
    SchedulerConfig,
    SchedulerFactory,
    as_scheduler,
    check_optimizer,
    step_schedule,
)


@dataclass
class DetectionTerm:
    """One ``distill.losses`` entry: the loss, its weight and its schedule (as in segmentation)."""

    loss: DetectionLoss | MaskRoILoss
    weight: float = 1.0
    schedule: WeightSchedule | Mapping[str, Any] | None = None


def drop_crowd(target: Target) -> Target:
    """The target without crowd instances (they are for the metric only); masks kept when present."""
    keep = (
        target["iscrowd"] == 0 if "iscrowd" in target else torch.ones_like(target["labels"], dtype=torch.bool)
    )
    return {k: target[k][keep] for k in ("boxes", "labels", "masks") if k in target}


class DetectionModule(L.LightningModule):
    """Trains a torchvision detector; with ``teacher`` and ``losses`` it distils on stride-paired levels
    and, for Mask R-CNN, on the student's positive RoIs.

    Each step: the student's own training forward (its loss dict), hooks capture its ``ImageList`` and
    FPN levels, the teacher runs only its backbone on ``image_list.tensors`` (no grad, eval), and every
    level loss reads the paired levels. Object-level losses (:class:`MaskRoILoss`) read
    :class:`~.features.MaskRoIs`: the teacher's mask head on the proposals the student's mask branch
    trained on. Logs ``train/loss/<name>`` raw and ``_weighted``, val/test box mAP (and mask / Boundary AP
    and connectivity for Mask R-CNN; ``primary_metric`` names the one checkpoints select on).
    ``optimizer`` and ``scheduler`` are those of :class:`~bcd_lightning.lit.SegmentationModule`.
    """

    teacher: FrozenDetector | None  # set with object.__setattr__: not a submodule

    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str],
        teacher: FrozenDetector | None = None,
        losses: Mapping[str, DetectionTerm | Mapping[str, Any]] | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerConfig | SchedulerFactory | Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        nonfinite: str = "stop",
    ) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        terms = {
            n: t if isinstance(t, DetectionTerm) else DetectionTerm(**dict(t))
            for n, t in (losses or {}).items()
        }
        if terms and teacher is None:
            raise ValueError("distill.losses is set but there is no teacher (detection.teacher.ckpt)")
        object.__setattr__(self, "teacher", teacher)  # not a submodule: see the module docstring
        self.strides: list[int] = []
        if teacher is not None:
            self.strides = self._paired_strides(model, teacher.model)
        schedules = {}
        rois = any(isinstance(t.loss, MaskRoILoss) for t in terms.values())
        for name, term in terms.items():
            if not isinstance(term.loss, DetectionLoss | MaskRoILoss):
                raise TypeError(
                    f"distill.losses.{name}.loss must be a DetectionLoss or MaskRoILoss, got {type(term.loss)}"
                )
            try:
                assert teacher is not None
                if isinstance(term.loss, MaskRoILoss) and not (
                    has_mask_head(model) and has_mask_head(teacher.model)
                ):
                    raise ValueError(
                        "an object-level (mask RoI) loss needs Mask R-CNN student and teacher "
                        "(detection.student.model.arch and detection.teacher.model.arch = mask_rcnn)"
                    )
                term.loss.bind(backbone_channels(model), backbone_channels(teacher.model), self.strides)
                for s in term.loss.strides or []:
                    if s not in self.strides:
                        raise ValueError(
                            f"stride {s} is not produced by both models (paired: {self.strides})"
                        )
                schedules[name] = as_schedule(term.schedule)
            except ValueError as err:
                raise ValueError(f"distill.losses.{name}: {err}") from err
        self.distill_losses = nn.ModuleDict({n: t.loss for n, t in terms.items()})
        self.loss_weights = {n: float(t.weight) for n, t in terms.items()}
        self.loss_schedules = schedules
        check_optimizer(optimizer)
        self.optimizer_cfg = optimizer  # a `_partial_` torch optimizer (None: lit.optim.DEFAULT_OPTIMIZER)
        self.scheduler_cfg = as_scheduler(dict(scheduler) if isinstance(scheduler, Mapping) else scheduler)
        self.nonfinite_guard = NonFiniteGuard(nonfinite)
        self.tap = FeatureTap(model, rois=rois) if terms else None
        self.masks = has_mask_head(model)
        self.primary_metric = "mask_map" if self.masks else "map"
        self.teacher_val_map: float | None = None
        self.teacher_metric = self.primary_metric
        self.save_hyperparameters({"class_names": self.class_names, "config": dict(config or {})})
        self.val_metrics = metrics_for(self.class_names, self.masks)
        self.test_metrics = metrics_for(self.class_names, self.masks)

    @staticmethod
    def _paired_strides(student: nn.Module, teacher: nn.Module, size: int = 128) -> list[int]:
        """Strides both backbones produce, probed once on a blank batch (levels pair by stride, not key)."""
        from torchvision.models.detection.image_list import ImageList

        x = torch.zeros(1, 3, size, size)
        il = ImageList(x, [(size, size)])
        with torch.no_grad():
            modes = student.training
            student.eval()
            s = by_stride(student.get_submodule("backbone")(x), il)
            student.train(modes)
            t = by_stride(teacher.get_submodule("backbone")(x), il)
        return sorted(set(s) & set(t))

    # --- the teacher stays outside the module ---------------------------------------------------------
    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> DetectionModule:
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def on_fit_start(self) -> None:
        if self.teacher is None:
            return
        self.teacher.train(False)
        # The student's metric when the teacher can produce it (a box-only teacher of a Mask R-CNN student,
        # or a box-only student's data without masks, is scored on boxes).
        masks = self.masks and has_mask_head(self.teacher.model)
        self.teacher_metric = "mask_map" if masks else "map"
        metric = metrics_for(self.class_names, masks)
        datamodule = getattr(self.trainer, "datamodule", None)  # attached by fit(), not a declared attribute
        if datamodule is None:
            raise RuntimeError(
                "DetectionModule scores its teacher on the val split: fit it with a datamodule"
            )
        for images, targets in datamodule.val_dataloader():
            images = [i.to(self.device) for i in images]
            metric.update([{k: v.cpu() for k, v in p.items()} for p in self.teacher(images)], targets)
        self.teacher_val_map = metric.compute()[0][self.teacher_metric]
        Console().print(
            f"[bold]Teacher val {self.teacher_metric} before fitting: {self.teacher_val_map:.4f}[/bold]"
        )

    # --- training -----------------------------------------------------------------------------------
    def weight_at(self, name: str, step: int) -> float:
        return scheduled_weight(
            self.loss_weights[name], self.loss_schedules.get(name) or WeightSchedule(), step
        )

    def training_step(self, batch: tuple[list[Tensor], list[Target]], batch_idx: int) -> Tensor | None:
        images, targets = batch
        snapshot = self.nonfinite_guard.snapshot(self)
        n = len(images)
        if self.tap is not None:
            self.tap.clear()
        loss_dict = self.model(images, [drop_crowd(t) for t in targets])
        det = torch.stack(list(loss_dict.values())).sum()
        for key, value in loss_dict.items():
            self.log(f"train/loss/{key}", value, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/loss/det", det, on_step=True, on_epoch=True, batch_size=n)
        total, raw_terms = det, {}
        if self.tap is not None:
            assert (
                self.teacher is not None and self.tap.image_list is not None and self.tap.features is not None
            )
            image_list = self.tap.image_list
            teacher_feats = self.teacher.backbone_features(image_list.tensors)
            s_levels, t_levels = paired_levels(self.tap.features, teacher_feats, image_list, self.strides)
            rois = mask_rois(self.tap, self.model, self.teacher, teacher_feats) if self.tap.rois else None
            for name, loss in self.distill_losses.items():
                weight = self.weight_at(name, self.global_step)
                # Computed even at weight 0 (warm-up): adapters then get a zero gradient, which DDP needs.
                raw = loss(rois) if isinstance(loss, MaskRoILoss) else loss(s_levels, t_levels)
                raw_terms[name] = raw
                self.log(f"train/weight/{name}", weight, on_step=True, on_epoch=False, batch_size=n)
                self.log(f"train/loss/{name}", raw, on_step=True, on_epoch=True, batch_size=n)
                self.log(
                    f"train/loss/{name}_weighted", weight * raw, on_step=True, on_epoch=True, batch_size=n
                )
                total = total + weight * raw
            self.tap.clear()  # drop the references to this step's graph
        if not torch.isfinite(total):
            weights = {name: self.weight_at(name, self.global_step) for name in raw_terms}
            return self.nonfinite_guard.on_nonfinite(self, {"det": det, **raw_terms}, weights, snapshot)
        self.log("train/loss/total", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        return total

    # --- evaluation ---------------------------------------------------------------------------------
    def _eval_step(
        self, batch: tuple[list[Tensor], list[Target]], metrics: DetectionMetrics | InstanceMetrics
    ) -> None:
        images, targets = batch
        preds = self.model(images)
        if self.tap is not None:
            self.tap.clear()
        metrics.update(preds, targets)

    def validation_step(self, batch: tuple[list[Tensor], list[Target]], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: tuple[list[Tensor], list[Target]], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        summary, _ = self.val_metrics.compute()
        for key, value in summary.items():
            self.log(f"val/{key}", value, prog_bar=key == self.primary_metric)
        if self.teacher_val_map is not None:
            self.log(f"val/teacher_{self.teacher_metric}", self.teacher_val_map)
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        summary, per_class = self.test_metrics.compute()
        for key, value in summary.items():
            self.log(f"test/{key}", value)
        for name, value in per_class.items():
            self.log(f"test/AP/{name}", value)
        self.test_metrics.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_guard"] = self.nonfinite_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_guard.load_state_dict(checkpoint.get("nonfinite_guard", {}))

    def configure_optimizers(self) -> OptimizerLRScheduler:
        return step_schedule(self, self.optimizer_cfg, self.scheduler_cfg)
