"""Tensor helpers shared by the loss functions of :mod:`~bcd_lightning.distill.functional` and
:mod:`~bcd_lightning.distill.baseline_functional` (internal: not part of the plug-in API)."""

from __future__ import annotations

import torch
from torch import Tensor

#: Norm floor for per-pixel normalisation: a (near-)zero feature becomes the zero vector (affinity 0).
NORM_EPS = 1e-6


def upcast(x: Tensor) -> Tensor:
    """fp32 for half / bfloat16 / fp32 inputs; float64 stays float64 (reference tests)."""
    return x if x.dtype == torch.float64 else x.float()


def no_autocast(x: Tensor) -> torch.autocast:
    """A context where matmuls and reductions run in fp32 even inside a bf16/fp16 autocast region."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def normalize_channels(x: Tensor, dim: int) -> Tensor:
    """``x / max(‖x‖, NORM_EPS)`` along ``dim``."""
    # Same value as x / x.norm(...).clamp_min(eps), but a plain square-sum: torch's norm reduction over a
    # non-innermost axis is ~10x slower on CPU.
    return x * x.square().sum(dim, keepdim=True).clamp_min(NORM_EPS**2).rsqrt()
