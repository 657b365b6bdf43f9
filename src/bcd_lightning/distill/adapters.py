"""Connectors between student and teacher features: which input a loss reads, and the adapter on it.

A feature-based loss names its input in the config (``feature: logits | decoder | <stage index>``) and
the adapter applied to the *student* side (``student_adapter: auto | none | conv1x1 | conv1x1_bn``).
Adapters are submodules of the loss, so they live under ``distill_losses.<name>.`` in the
LightningModule: they train with the student (they are in ``parameters()``, hence in the optimizer),
resume with it, and are never part of the student model (its weights are the ``model.`` keys only).

Widths must be known when the module is built (before the optimizer exists, and identical on every DDP
rank), so :class:`~bcd_lightning.lit.distillation.DistillationModule` calls :func:`bind_adapters` with
the student's and teacher's widths right after instantiating the losses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from bcd_lightning.distill.base import DistillLoss
from bcd_lightning.models.outputs import SegOutput

ADAPTER_KINDS = ("auto", "none", "conv1x1", "conv1x1_bn")
NAMED_FEATURES = ("logits", "decoder")

Feature = int | str


@dataclass(frozen=True)
class ModelWidths:
    """Channel widths of a model's :class:`SegOutput` fields (``decoder=None``: unknown)."""

    logits: int
    stages: tuple[int, ...]
    decoder: int | None = None


def model_widths(model: Any) -> ModelWidths:
    """Widths of a :class:`~bcd_lightning.models.SegModel` (or a FrozenTeacher wrapping one)."""
    model = getattr(model, "model", model)  # FrozenTeacher -> its SegModel
    decoder = None
    head = getattr(getattr(model, "net", None), "segmentation_head", None)
    # smp's SegmentationHead is Sequential(conv, upsampling, activation): its conv reads the decoder feature.
    conv = head[0] if isinstance(head, nn.Sequential) and len(head) else None
    if isinstance(conv, nn.Conv2d):
        decoder = int(conv.in_channels)
    return ModelWidths(int(model.num_classes), tuple(int(c) for c in model.stage_channels), decoder)


def check_feature(owner: str, feature: Any) -> Feature:
    """``feature`` as ``"logits"``, ``"decoder"`` or a stage index >= 0, else a ValueError naming it."""
    if isinstance(feature, str) and feature in NAMED_FEATURES:
        return feature
    if isinstance(feature, int) and not isinstance(feature, bool) and feature >= 0:
        return feature
    raise ValueError(
        f"{owner}: option `feature` must be 'logits', 'decoder' or a 0-based stage index >= 0, "
        f"got {feature!r}"
    )


def field_of(feature: Feature) -> str:
    """The SegOutput field a feature lives in."""
    return feature if isinstance(feature, str) else "stages"


def select_feature(out: SegOutput, feature: Feature, owner: str, who: str) -> Tensor:
    """The tensor ``feature`` names in ``out`` (``who``: "student"/"teacher", for the error message)."""
    if isinstance(feature, int):
        if feature >= len(out.stages):
            raise ValueError(
                f"{owner}: option `feature`={feature} is a stage index, but the {who} returned "
                f"{len(out.stages)} stages (valid 0..{len(out.stages) - 1}; 0-based, stride 2 first)."
            )
        return out.stages[feature]
    value = getattr(out, feature)
    if value is None:
        raise ValueError(f"{owner}: the {who} returned no `{feature}` (SegOutput.{feature} is None).")
    return value


def width_of(widths: ModelWidths, feature: Feature) -> int | None:
    if isinstance(feature, int):
        return widths.stages[feature] if feature < len(widths.stages) else None
    return widths.logits if feature == "logits" else widths.decoder


def build_adapter(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """The student-side connector: ``none`` → Identity, ``conv1x1`` → 1×1 conv with bias,
    ``conv1x1_bn`` → 1×1 conv (no bias) + BatchNorm; ``auto`` → ``conv1x1`` iff widths differ."""
    if kind == "auto":
        kind = "none" if in_channels == out_channels else "conv1x1"
    if kind == "none":
        return nn.Identity()
    if kind == "conv1x1":
        return nn.Conv2d(in_channels, out_channels, kernel_size=1)
    if kind == "conv1x1_bn":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels)
        )
    raise ValueError(f"unknown adapter kind {kind!r}; choose one of {list(ADAPTER_KINDS)}")


def resize_to(x: Tensor, size: Iterable[int]) -> Tensor:
    """Bilinear resize of ``[B, C, H, W]`` to ``size`` (no-op when it matches)."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def check_avg_pool(owner: str, avg_pool: Any) -> int | None:
    """``avg_pool`` as None or an int >= 1, else a ValueError naming the option."""
    if avg_pool is None:
        return None
    if isinstance(avg_pool, bool) or not isinstance(avg_pool, int) or avg_pool < 1:
        raise ValueError(f"{owner}: option `avg_pool` must be null or an integer >= 1, got {avg_pool!r}")
    return int(avg_pool)


class FeaturePairLoss(DistillLoss):
    """A loss on one (student, teacher) feature pair with an optional student-side adapter.

    ``forward`` selects ``feature`` from both outputs, applies the adapter to the student feature (at the
    student's resolution), resizes the result bilinearly to the *teacher's* spatial size when they differ,
    average-pools both by ``avg_pool`` (kernel = stride, ceil mode) when set, and hands both to
    :meth:`compute`. The teacher feature is detached.

    ``avg_pool`` exists for decoders that end at a finer stride than the models a method was written for:
    the originals distil the head's feature before the classifier at stride 8 (DeepLabV3 / PSPNet), a
    U-Net's decoder feature is at stride 1, so ``feature: decoder, avg_pool: 8`` gives the same stride.

    Args:
        feature: ``"logits"``, ``"decoder"`` or a 0-based index into ``SegOutput.stages``.
        student_adapter: ``auto`` (1×1 conv iff widths differ), ``none``, ``conv1x1`` or ``conv1x1_bn``.
        avg_pool: average-pooling kernel = stride applied to both features (null: none).
    """

    uses: frozenset[str] = frozenset({"logits", "stages", "decoder"})
    teacher_uses: frozenset[str] | None = None
    #: Whether :meth:`compute` needs equal student/teacher channel counts (``none`` is then an error).
    needs_equal_widths: ClassVar[bool] = False

    def __init__(
        self, feature: Feature = "logits", student_adapter: str = "auto", avg_pool: int | None = None
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.feature = check_feature(owner, feature)
        self.avg_pool = check_avg_pool(owner, avg_pool)
        if student_adapter not in ADAPTER_KINDS:
            raise ValueError(
                f"{owner}: option `student_adapter` must be one of {list(ADAPTER_KINDS)}, "
                f"got {student_adapter!r}"
            )
        self.student_adapter = student_adapter
        # The fields this instance reads (shadow the class-level supersets): the teacher fast path and
        # the teacher-output cache then compute / store only this one.
        self.uses = frozenset({field_of(self.feature)})
        self.teacher_uses = frozenset({field_of(self.feature)})
        # Identity until bind_widths() knows the widths; an explicit conv adapter must be bound first.
        self.adapter: nn.Module = nn.Identity()
        self._bound = False
        #: The student's own width of ``feature`` (before the adapter), once bound; None if unknown.
        self.student_width: int | None = None

    def bind_widths(self, student: ModelWidths, teacher: ModelWidths) -> None:
        """Build the adapter from the models' widths (called once, before the optimizer is made)."""
        owner = type(self).__name__
        c_s, c_t = width_of(student, self.feature), width_of(teacher, self.feature)
        self.student_width = c_s
        if c_s is None or c_t is None:
            if self.student_adapter in ("none", "auto") and not self.needs_equal_widths:
                self._bound = True  # no adapter needed, widths are checked at forward time if at all
                return
            raise ValueError(
                f"{owner}: cannot tell the channel width of `feature`={self.feature!r} "
                f"(student {c_s}, teacher {c_t}); use a stage index or 'logits'."
            )
        if self.student_adapter == "none" and c_s != c_t and self.needs_equal_widths:
            raise ValueError(
                f"{owner}: `feature`={self.feature!r} has {c_s} student and {c_t} teacher channels; "
                "set `student_adapter: conv1x1` (or auto) to map the student to the teacher's width."
            )
        kind = self.student_adapter
        if kind == "auto" and not self.needs_equal_widths:
            kind = "none"  # channel-free losses (relations, similarity maps) need no adapter
        self.adapter = build_adapter(kind, c_s, c_t)
        self._bound = True

    def check_compatible(self, student_stages: int, teacher_stages: int) -> None:
        if isinstance(self.feature, int) and self.feature >= min(student_stages, teacher_stages):
            raise ValueError(
                f"{type(self).__name__}: option `feature`={self.feature} is a stage index, but the student "
                f"has {student_stages} and the teacher {teacher_stages} stages "
                f"(valid 0..{min(student_stages, teacher_stages) - 1}; 0-based, stride 2 first)."
            )

    def pair(self, student: SegOutput, teacher: SegOutput) -> tuple[Tensor, Tensor]:
        """Student feature (adapted, resized to the teacher's size) and the detached teacher feature, both
        average-pooled by ``avg_pool`` when set."""
        owner = type(self).__name__
        s = select_feature(student, self.feature, owner, "student")
        t = select_feature(teacher, self.feature, owner, "teacher").detach()
        if self.student_adapter in ("conv1x1", "conv1x1_bn") and not self._bound:
            raise RuntimeError(
                f"{owner}: the `{self.student_adapter}` adapter is built by bind_widths(); "
                "DistillationModule does this, call it yourself when using the loss standalone."
            )
        s = self.adapter(s)
        if self.needs_equal_widths and s.shape[1] != t.shape[1]:
            raise ValueError(
                f"{owner}: `feature`={self.feature!r} has {s.shape[1]} student and {t.shape[1]} teacher "
                "channels after the adapter; use `student_adapter: auto` or `conv1x1` (the adapter is built "
                "by bind_widths(), which DistillationModule calls)."
            )
        s = resize_to(s, t.shape[-2:])
        if self.avg_pool is not None and self.avg_pool > 1:
            k = self.avg_pool
            s = F.avg_pool2d(s, k, k, ceil_mode=True)
            t = F.avg_pool2d(t, k, k, ceil_mode=True)
        return s, t

    def compute(self, student: Tensor, teacher: Tensor, target: Tensor, ignore_index: int) -> Tensor:
        raise NotImplementedError

    def forward(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        s, t = self.pair(student, teacher)
        return self.compute(s, t, target, ignore_index)


def bind_adapters(loss: nn.Module, student: Any, teacher: Any) -> None:
    """Give ``loss`` the models' widths if it has adapters to build (a no-op for other losses)."""
    bind = getattr(loss, "bind_widths", None)
    if callable(bind):
        bind(model_widths(student), model_widths(teacher))
