"""Pure tensor functions behind every distillation loss (no state, no configuration).

Conventions: student tensors carry gradients, teacher tensors are constants; every reduction is stated
in the docstring and in ``docs/method.md``. Softmax / log-softmax run in fp32 even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``values`` over ``valid`` positions (all when ``valid`` is None); 0 if none is valid."""
    if valid is None:
        return values.mean()
    valid = valid.to(values.dtype)
    # max(count, 1) keeps an all-ignored batch at 0 with a graph instead of NaN.
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def pixel_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Per-pixel ``KL(softmax(z_T/τ) ‖ softmax(z_S/τ))`` over the class axis, ``[B, H, W]``, fp32."""
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / tau, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)


def pixel_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: float = 1.0,
    valid_mask: Tensor | None = None,
) -> Tensor:
    """Pixel logit KD: ``τ² · mean_{valid p} KL(T_p ‖ S_p)`` (CIRKD's reduction: mean over pixels).

    Args:
        student_logits, teacher_logits: ``[B, K, H, W]``; the teacher is resized to the student if needed.
        tau: temperature τ.
        valid_mask: ``[B, H, W]`` bool, False at ignored pixels.
    """
    if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
        teacher_logits = F.interpolate(
            teacher_logits, size=student_logits.shape[-2:], mode="bilinear", align_corners=False
        )
    return tau**2 * masked_mean(pixel_kl(student_logits, teacher_logits, tau), valid_mask)
