"""Student training under a frozen teacher with pluggable distillation losses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from bcd_lightning.data.datamodule import trainer_datamodule
from bcd_lightning.distill.adapters import bind_adapters
from bcd_lightning.distill.base import DistillLoss, teacher_fields
from bcd_lightning.distill.schedules import WeightSchedule, as_schedule, scheduled_weight
from bcd_lightning.lit.segmentation import SegmentationModule
from bcd_lightning.metrics import SegmentationIoU
from bcd_lightning.models import FrozenTeacher, SegModel, SegOutput
from bcd_lightning.teacher_cache import TeacherCache
from bcd_lightning.utils.errors import UserError
from bcd_lightning.utils.logs import get_logger

log = get_logger(__name__)


@dataclass
class LossTerm:
    """One entry of ``distill.losses``: the loss module, its weight in the total and its schedule."""

    loss: DistillLoss
    weight: float = 1.0
    schedule: WeightSchedule | Mapping[str, Any] | None = None


class TeacherQualityError(UserError, RuntimeError):
    """The teacher scores below ``teacher_min_miou`` before fitting (e.g. a mis-loaded checkpoint)."""


class DistillationModule(SegmentationModule):
    """``L = CE(z_S, y) + Σ_name weight_name(step) · loss_name(S, T)``.

    The teacher is deliberately *not* a registered submodule: it is absent from ``parameters()`` (so
    from the optimizer and from DDP's gradient sync), from ``state_dict()`` (so from checkpoints), and
    from ``train()``/``eval()`` recursion. ``_apply`` forwards device/dtype moves to it.

    Args:
        student: the model being trained.
        teacher: the frozen teacher (same class count as the student).
        losses: name → :class:`LossTerm` (or a mapping with ``loss``, ``weight`` and ``schedule``, see
            :mod:`bcd_lightning.distill.schedules`; ``weight_name(step)`` is its scheduled weight).
        teacher_min_miou: stop before fitting when the teacher's val mIoU is below this value.
        teacher_cache: optional teacher-output cache, opened (and filled once) at fit start; training
            steps then read the teacher's outputs from it instead of running the teacher.
        **kwargs: see :class:`SegmentationModule`.
    """

    teacher: FrozenTeacher  # not a submodule (set with object.__setattr__): declared for the type checker

    def __init__(
        self,
        student: SegModel,
        teacher: FrozenTeacher,
        losses: Mapping[str, LossTerm | Mapping[str, Any]],
        teacher_min_miou: float | None = None,
        teacher_cache: TeacherCache | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=student, **kwargs)
        if teacher.num_classes != student.num_classes:
            raise ValueError(
                f"Teacher predicts {teacher.num_classes} classes, student {student.num_classes}: "
                "distillation needs the same label space (check teacher.model.num_classes)."
            )
        object.__setattr__(self, "teacher", teacher)
        terms = {name: t if isinstance(t, LossTerm) else LossTerm(**dict(t)) for name, t in losses.items()}
        schedules: dict[str, WeightSchedule] = {}
        for name, term in terms.items():
            if not isinstance(term.loss, DistillLoss):
                raise TypeError(
                    f"distill.losses.{name}.loss must be a DistillLoss, got {type(term.loss).__name__}"
                )
            try:
                term.loss.check_compatible(len(student.stage_channels), len(teacher.model.stage_channels))
                bind_adapters(term.loss, student, teacher)  # builds adapters (e.g. 1x1 convs) from widths
                schedule = as_schedule(term.schedule)
            except ValueError as err:
                raise ValueError(f"distill.losses.{name}: {err}") from err
            schedules[name] = schedule
        # Registered so adapters (if a loss has any) train with the student and resume with it.
        self.distill_losses = nn.ModuleDict({name: t.loss for name, t in terms.items()})
        self.loss_weights = {name: float(t.weight) for name, t in terms.items()}
        self.loss_schedules = schedules
        self.teacher_min_miou = teacher_min_miou
        self.teacher_val_miou: float | None = None
        self.teacher_cache = teacher_cache

    # --- the teacher stays frozen -------------------------------------------------------------------
    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> DistillationModule:
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def on_fit_start(self) -> None:
        self.teacher.train(False)
        self.teacher_val_miou = self._score_teacher()
        log.info("Teacher val mIoU before fitting: %.4f", self.teacher_val_miou)
        for logger in self.loggers:
            logger.log_metrics({"teacher/val_mIoU": self.teacher_val_miou}, step=0)
        if self.teacher_min_miou is not None and self.teacher_val_miou < self.teacher_min_miou:
            raise TeacherQualityError(
                f"Teacher val mIoU {self.teacher_val_miou:.4f} is below teacher_min_miou="
                f"{self.teacher_min_miou}: is teacher.ckpt the right checkpoint for teacher.model?"
            )
        if self.teacher_cache is not None:
            self._prepare_teacher_cache()

    @torch.no_grad()
    def _score_teacher(self) -> float:
        """Teacher mIoU on the full validation split: each rank scores its disjoint share (no padding,
        see data.datamodule.evaluation_sampler) and the confusion matrices are summed across ranks."""
        datamodule = trainer_datamodule(self.trainer)
        limit = _batch_limit(self.trainer)
        metric = SegmentationIoU(self.num_classes, self.ignore_index).to(self.device)
        for i, batch in enumerate(datamodule.val_dataloader()):
            if limit is not None and i >= limit:
                break
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            metric.update(self.teacher(batch["image"], outputs={"logits"}).logits.argmax(1), batch["mask"])
        return float(metric.compute())  # mIoU only: this runs once, before fitting

    # --- training -----------------------------------------------------------------------------------
    def extra_terms(self, batch: Mapping[str, Tensor], out: SegOutput) -> dict[str, tuple[Tensor, float]]:
        """Each distillation loss on the student's and the teacher's outputs, with its scheduled weight."""
        teacher_out = self._teacher_outputs(batch)
        return {
            name: (
                loss(out, teacher_out, batch["mask"], self.ignore_index),
                self.weight_at(name, self.global_step),
            )
            for name, loss in self.losses().items()
        }

    def losses(self) -> dict[str, DistillLoss]:
        """The distillation losses by name (``distill_losses`` holds only DistillLoss modules)."""
        return {name: cast(DistillLoss, loss) for name, loss in self.distill_losses.items()}

    def weight_at(self, name: str, step: int) -> float:
        """Effective weight of loss ``name`` at optimizer step ``step`` (a pure function: resumes exactly)."""
        # A term added after construction (only weight set) is constant.
        schedule = self.loss_schedules.get(name) or WeightSchedule()
        return scheduled_weight(self.loss_weights[name], schedule, step)

    # --- teacher fast path and teacher-output cache -------------------------------------------------
    @property
    def teacher_fields(self) -> frozenset[str]:
        """Teacher fast path: only the fields some loss reads are computed (and kept alive)."""
        fields = frozenset().union(*(teacher_fields(loss) for loss in self.losses().values()))
        return fields or frozenset({"logits"})

    def _teacher_outputs(self, batch: Mapping[str, Tensor]) -> SegOutput:
        """What the losses read from the teacher: from the cache when it is open, else a forward pass
        of only the fields they use (``teacher.precision`` autocast, no grad)."""
        if self.teacher_cache is not None and self.teacher_cache.ready:
            if "index" not in batch:
                raise KeyError(
                    "teacher.cache is on but the training batch has no 'index' (sample positions): "
                    "use SegDataModule's train_dataloader or wrap the dataset in data.datamodule.WithIndex."
                )
            return self.teacher_cache.lookup(batch["index"], self.device)
        return self.teacher(batch["image"], outputs=self.teacher_fields)

    def _prepare_teacher_cache(self) -> None:
        """Open the teacher-output cache; rank 0 fills it first when it does not exist yet."""
        assert self.teacher_cache is not None
        trainer, datamodule = self.trainer, trainer_datamodule(self.trainer)
        kwargs: dict[str, Any] = dict(
            teacher=self.teacher,
            student=self.model,
            losses=self.losses(),
            dataset=datamodule.train_set,
            batch_size=datamodule.batch_size,
            device=self.device,
            num_workers=datamodule.num_workers,
            log=log.info,
        )
        if trainer.world_size > 1 and not trainer.is_global_zero:
            trainer.strategy.barrier("teacher_cache")
            self.teacher_cache.prepare(**kwargs, may_fill=False)
            return
        self.teacher_cache.prepare(**kwargs)
        if trainer.world_size > 1:
            trainer.strategy.barrier("teacher_cache")

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.teacher_val_miou is not None:
            self.log("val/teacher_mIoU", self.teacher_val_miou)


def _batch_limit(trainer: Any) -> int | None:
    """How many validation batches the trainer itself would run (fast_dev_run / limit_val_batches)."""
    if trainer.fast_dev_run:
        return int(trainer.fast_dev_run)
    limit = trainer.limit_val_batches
    if isinstance(limit, int):
        return limit
    if isinstance(limit, float) and limit < 1.0:
        return max(1, int(limit * len(trainer_datamodule(trainer).val_dataloader())))
    return None
