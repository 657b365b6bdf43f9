"""Pixel-wise logit knowledge distillation (Hinton-style KD applied per pixel)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from bcd_lightning.distill.base import DistillLoss, require
from bcd_lightning.distill.functional import pixel_kd
from bcd_lightning.models.outputs import SegOutput


class LogitKD(DistillLoss):
    """``τ² · mean over non-ignored pixels of KL(softmax(z_T/τ) ‖ softmax(z_S/τ))``.

    Args:
        tau: temperature τ (CIRKD uses 1.0 for pixel KD; larger values soften both distributions).
        calibrate: ``{steps, ratio}``: scale to ``ratio`` × CE early in training
            (:mod:`~bcd_lightning.distill.calibration`); null: unscaled.
    """

    uses: frozenset[str] = frozenset({"logits"})

    def __init__(self, tau: float = 1.0, calibrate: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.set_calibration(calibrate)
        if tau <= 0:
            raise ValueError(f"LogitKD: tau must be > 0, got {tau}")
        self.tau = tau

    def forward(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        return pixel_kd(
            require(student, "logits"),
            require(teacher, "logits"),
            self.tau,
            valid_mask=target != ignore_index,
        )
