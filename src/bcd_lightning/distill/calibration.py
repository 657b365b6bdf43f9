"""Magnitude calibration of a loss term against the cross-entropy early in training (BCD's default rule).

A term configured with ``calibrate: {steps: S, ratio: r}`` returns ``c · raw`` where, over its first S
training calls, ``c = r · ΣCE / Σraw`` (running sums of the student's CE and of the raw term, both
detached), and ``c`` is frozen from call S on. So, whatever the dataset, the number of classes or the
teacher's confidence, the weighted term starts at ``weight · r`` times the CE (docs/method.md, "Preset
weights"). ``c`` and the sums are buffers: saved in checkpoints, so a resumed run keeps its factor. Under
DDP the sums are all-reduced, so every rank uses the same factor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

CALIBRATE_KEYS = ("steps", "ratio")


class MagnitudeCalibration(nn.Module):
    """``c · raw`` with ``c = ratio · ΣCE / Σraw`` over the first ``steps`` training calls, then frozen."""

    # Buffers (registered in __init__), declared so type checkers see Tensors, not Tensor | Module.
    factor: Tensor
    ce_sum: Tensor
    raw_sum: Tensor
    calls: Tensor

    def __init__(self, steps: int = 50, ratio: float = 1.0) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"calibrate.steps must be an integer >= 1, got {steps!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
            raise ValueError(f"calibrate.ratio must be a number > 0, got {ratio!r}")
        self.steps, self.ratio = int(steps), float(ratio)
        self.register_buffer("factor", torch.ones((), dtype=torch.float64))
        self.register_buffer("ce_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("raw_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(
        self, raw: Tensor, student_logits: Tensor | None, target: Tensor, ignore_index: int
    ) -> Tensor:
        if self.training and torch.is_grad_enabled() and int(self.calls) < self.steps:
            if student_logits is None:
                raise ValueError("calibrate: the student returned no logits to compute the CE from.")
            with torch.no_grad():
                logits = student_logits.detach().float()
                if logits.shape[-2:] != target.shape[-2:]:
                    logits = F.interpolate(
                        logits, size=target.shape[-2:], mode="bilinear", align_corners=False
                    )
                ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
                sums = torch.stack([ce.double(), raw.detach().double()])
                if dist.is_available() and dist.is_initialized():
                    dist.all_reduce(sums)
                self.ce_sum += sums[0].to(self.ce_sum.device)
                self.raw_sum += sums[1].to(self.raw_sum.device)
                self.calls += 1
                if float(self.raw_sum) > 0:
                    self.factor.fill_(self.ratio * float(self.ce_sum) / float(self.raw_sum))
        return raw * self.factor.to(raw.dtype)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, ratio={self.ratio}, factor={float(self.factor):.4g}"


def make_calibration(owner: str, calibrate: Mapping[str, Any] | None) -> MagnitudeCalibration | None:
    """The calibration module of ``calibrate`` (None: the term is used as it is)."""
    if calibrate is None:
        return None
    if not isinstance(calibrate, Mapping):
        raise ValueError(f"{owner}: option `calibrate` must be null or {{steps, ratio}}, got {calibrate!r}")
    unknown = sorted(set(calibrate) - set(CALIBRATE_KEYS))
    if unknown:
        raise ValueError(
            f"{owner}: option `calibrate` has unknown key(s) {unknown}; valid: {list(CALIBRATE_KEYS)}"
        )
    try:
        return MagnitudeCalibration(**dict(calibrate))
    except ValueError as err:
        raise ValueError(f"{owner}: option {err}") from err
