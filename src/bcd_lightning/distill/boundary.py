"""Boundary distillation (BCD, explicit part): match channel-free boundary maps of backbone stages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

from bcd_lightning.distill.base import DistillLoss, require
from bcd_lightning.distill.functional import (
    BOUNDARY_VARIANTS,
    boundary_distillation,
    boundary_map,
    boundary_weighted_kd,
    fused_boundary_map,
)
from bcd_lightning.models.outputs import SegOutput


def _check_stages(owner: str, stages: Sequence[int]) -> list[int]:
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Iterable):
        raise ValueError(f"{owner}: option `stages` must be a list of stage indices, got {stages!r}")
    stages = list(stages)
    if not stages or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in stages):
        raise ValueError(
            f"{owner}: option `stages` must be a non-empty list of stage indices >= 0, got {stages}"
        )
    if len(set(stages)) != len(stages):
        raise ValueError(f"{owner}: option `stages` has duplicate indices: {stages}")
    return stages


def _check_dilation(owner: str, dilation: int) -> int:
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"{owner}: option `dilation` must be an integer >= 1, got {dilation!r}")
    return dilation


def _check_positive(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{owner}: option `{name}` must be a number > 0, got {value!r}")
    return float(value)


def boundary_map_name(stage: int, dilation: int) -> str:
    """Teacher-output cache entry of one stage's boundary map (shared by every loss that reads it)."""
    return f"boundary_map/stage{stage}/dilation{dilation}"


def teacher_boundary_maps(teacher: SegOutput, stages: Sequence[int], dilation: int) -> dict[str, Tensor]:
    """``{boundary_map_name: [B, H, W] map}`` of the teacher's ``stages`` (what the cache stores)."""
    return {
        boundary_map_name(i, dilation): boundary_map(teacher.stages[i].detach(), dilation) for i in stages
    }


def _teacher_stage_inputs(teacher: SegOutput, stages: Sequence[int], dilation: int) -> list[Tensor] | None:
    """The cached ``[B, H, W]`` teacher boundary maps of ``stages``, or ``None`` for a live teacher."""
    maps = []
    for i in stages:
        m = teacher.cached.get(boundary_map_name(i, dilation))
        if m is None:
            return None
        maps.append(m)
    return maps


def _stages_error(owner: str, stages: list[int], available: dict[str, int]) -> ValueError:
    counts = " and ".join(f"the {who} has {n} stages" for who, n in available.items())
    return ValueError(
        f"{owner}: option `stages`={stages} uses stage index {max(stages)}, but {counts} "
        f"(valid indices 0..{min(available.values()) - 1}; stages are 0-based, stride 2 first)."
    )


class BoundaryDistillation(DistillLoss):
    """``L_B = Σ_l w_l · mean_p (b_l^S - b_l^T)²`` over the chosen backbone stages (see docs/method.md).

    Args:
        stages: 0-based indices into ``SegOutput.stages``; for a 5-level encoder (strides 2..32)
            the default ``(1, 2, 3, 4)`` means strides 4, 8, 16, 32.
        stage_weights: one weight per stage; ``None`` = ``1/len(stages)`` each.
        variant: ``"mse"``, ``"l1"`` or ``"kl"`` (spatial softmax over the map at temperature ``tau``).
        dilation: neighbour offset of the 8-neighbourhood.
        tau: temperature of the ``"kl"`` variant (maps live in [0, 1], so τ < 1 sharpens).
        calibrate: ``{steps, ratio}``: scale to ``ratio`` × CE early in training
            (:mod:`~bcd_lightning.distill.calibration`); null: unscaled.

    No parameters: boundary maps have no channel axis, so any student/teacher widths compare directly.
    """

    uses: frozenset[str] = frozenset({"stages"})

    def __init__(
        self,
        stages: Sequence[int] = (1, 2, 3, 4),
        stage_weights: Sequence[float] | None = None,
        variant: str = "mse",
        dilation: int = 1,
        tau: float = 0.1,
        calibrate: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.set_calibration(calibrate)
        name = type(self).__name__
        self.stages = _check_stages(name, stages)
        if stage_weights is not None:
            if isinstance(stage_weights, (str, bytes)) or not isinstance(stage_weights, Iterable):
                raise ValueError(
                    f"{name}: option `stage_weights` must be a list or null, got {stage_weights!r}"
                )
            weights = list(stage_weights)
            if len(weights) != len(self.stages):
                raise ValueError(
                    f"{name}: option `stage_weights`={weights} has {len(weights)} entries but option "
                    f"`stages`={self.stages} has {len(self.stages)}"
                )
            if any(not isinstance(w, (int, float)) or w < 0 for w in weights) or not any(
                w > 0 for w in weights
            ):
                raise ValueError(
                    f"{name}: option `stage_weights` must be numbers >= 0, not all 0, got {weights}"
                )
            stage_weights = [float(w) for w in weights]
        self.stage_weights = stage_weights
        if variant not in BOUNDARY_VARIANTS:
            raise ValueError(
                f"{name}: option `variant` must be one of {list(BOUNDARY_VARIANTS)}, got {variant!r}"
            )
        self.variant = variant
        self.dilation = _check_dilation(name, dilation)
        self.tau = _check_positive(name, "tau", tau)

    def check_compatible(self, student_stages: int, teacher_stages: int) -> None:
        if max(self.stages) >= min(student_stages, teacher_stages):
            raise _stages_error(
                type(self).__name__, self.stages, {"student": student_stages, "teacher": teacher_stages}
            )

    def teacher_cache_entries(self, teacher: SegOutput, student: SegOutput) -> dict[str, Tensor]:
        # The loss reads the teacher's stages only through their channel-free boundary maps.
        return teacher_boundary_maps(teacher, self.stages, self.dilation)

    def forward(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        teacher_maps = _teacher_stage_inputs(teacher, self.stages, self.dilation)
        if teacher_maps is None:
            self.check_compatible(len(student.stages), len(teacher.stages))
            teacher_maps = [teacher.stages[i] for i in self.stages]
        else:
            self.check_compatible(len(student.stages), max(self.stages) + 1)
        return boundary_distillation(
            [student.stages[i] for i in self.stages],
            teacher_maps,
            self.stage_weights,
            variant=self.variant,
            dilation=self.dilation,
            tau=self.tau,
        )

    def extra_repr(self) -> str:
        return (
            f"stages={self.stages}, stage_weights={self.stage_weights}, variant={self.variant!r}, "
            f"dilation={self.dilation}, tau={self.tau}"
        )


class BoundaryWeightedKD(DistillLoss):
    """Pixel KD weighted by the teacher's fused boundary map (see docs/method.md).

    ``τ² · Σ_p w_p v_p KL_p / Σ_p w_p v_p`` with ``w`` the mean of the teacher's boundary maps over
    ``stages`` (resized to the logits) and ``v`` False at ignored pixels.

    Args:
        stages: 0-based teacher stage indices whose boundary maps are fused into the weight.
        tau: KD temperature τ.
        dilation: neighbour offset of the boundary maps.
        calibrate: ``{steps, ratio}``: scale to ``ratio`` × CE early in training; null: unscaled.
    """

    uses: frozenset[str] = frozenset({"logits", "stages"})

    def __init__(
        self,
        stages: Sequence[int] = (1, 2, 3, 4),
        tau: float = 1.0,
        dilation: int = 1,
        calibrate: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.set_calibration(calibrate)
        name = type(self).__name__
        self.stages = _check_stages(name, stages)
        self.tau = _check_positive(name, "tau", tau)
        self.dilation = _check_dilation(name, dilation)

    def check_compatible(self, student_stages: int, teacher_stages: int) -> None:
        # Only the teacher's stages are read.
        if max(self.stages) >= teacher_stages:
            raise _stages_error(type(self).__name__, self.stages, {"teacher": teacher_stages})

    def teacher_cache_entries(self, teacher: SegOutput, student: SegOutput) -> dict[str, Tensor]:
        # Per-stage maps, not the fused one: tiny, shared with BoundaryDistillation, fused at loss time.
        return {
            "logits": require(teacher, "logits"),
            **teacher_boundary_maps(teacher, self.stages, self.dilation),
        }

    def forward(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        maps = _teacher_stage_inputs(teacher, self.stages, self.dilation)
        if maps is None:
            self.check_compatible(len(student.stages), len(teacher.stages))
            maps = [teacher.stages[i].detach() for i in self.stages]
        student_logits = require(student, "logits")
        weight = fused_boundary_map(maps, student_logits.shape[-2:], self.dilation)
        return boundary_weighted_kd(
            student_logits, require(teacher, "logits"), weight, self.tau, valid_mask=target != ignore_index
        )

    def extra_repr(self) -> str:
        return f"stages={self.stages}, tau={self.tau}, dilation={self.dilation}"
