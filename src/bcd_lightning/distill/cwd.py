"""Channel-wise distillation (CWD, Shu et al. 2021): match per-channel spatial distributions."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from bcd_lightning.distill.adapters import Feature, FeaturePairLoss
from bcd_lightning.distill.baseline_functional import channel_wise_divergence


class ChannelWiseDistillation(FeaturePairLoss):
    """``τ²/(B·C_S) · Σ_{b,c} KL(softmax_HW(t_bc/τ) ‖ softmax_HW(s_bc/τ))`` on one input.

    The input is ``feature`` of both models (logits by default). The student feature goes through the
    adapter (``auto``: a 1×1 conv to the teacher's width when widths differ, identity otherwise; always
    identity on logits) and is then resized bilinearly to the teacher's spatial size. Labels are not read,
    so no pixel is ignored. ``C_S`` is the student's own width of the input (read before the adapter, as
    the reference); on logits it equals the teacher's. Use two loss terms for "logits and a feature".
    See :func:`~bcd_lightning.distill.baseline_functional.channel_wise_divergence`.

    Args:
        feature: ``"logits"``, ``"decoder"`` or a 0-based stage index.
        tau: temperature τ (CWD / CIRKD: 4 on logits).
        student_adapter: ``auto``, ``none``, ``conv1x1`` or ``conv1x1_bn``.
        avg_pool: average-pool both inputs (kernel = stride) first; null: none.
    """

    needs_equal_widths: ClassVar[bool] = True

    def __init__(
        self,
        feature: Feature = "logits",
        tau: float = 4.0,
        student_adapter: str = "auto",
        avg_pool: int | None = None,
    ) -> None:
        super().__init__(feature, student_adapter, avg_pool)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0:
            raise ValueError(f"{type(self).__name__}: option `tau` must be a number > 0, got {tau!r}")
        self.tau = float(tau)

    def compute(self, student: Tensor, teacher: Tensor, target: Tensor, ignore_index: int) -> Tensor:
        return channel_wise_divergence(student, teacher, self.tau, channels=self.student_width)

    def extra_repr(self) -> str:
        return (
            f"feature={self.feature!r}, tau={self.tau}, student_adapter={self.student_adapter!r}, "
            f"avg_pool={self.avg_pool}"
        )
