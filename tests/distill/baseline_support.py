"""Small helpers shared by the baseline-loss tests (independent numpy references live in each test)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bcd_lightning.distill.adapters import ModelWidths
from bcd_lightning.models.outputs import SegOutput


def out(feature: Tensor, logits: Tensor | None = None, decoder: Tensor | None = None) -> SegOutput:
    """A SegOutput whose stage 0 is ``feature`` (logits default to a constant 4-class map)."""
    if logits is None:
        logits = torch.zeros(feature.shape[0], 4, *feature.shape[-2:])
    return SegOutput(logits=logits, stages=(feature,), decoder=decoder)


def widths(stage: int, logits: int = 4, decoder: int | None = None) -> ModelWidths:
    return ModelWidths(logits=logits, stages=(stage,), decoder=decoder)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float((p * (np.log(p) - np.log(q))).sum())


def np_unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / max(n, 1e-6)
