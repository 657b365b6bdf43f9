"""The one output type every segmentation model in the framework returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class SegOutput:
    """What a distillation loss may consume.

    Attributes:
        logits: ``[B, K, H, W]`` class scores at input resolution.
        stages: backbone stage features, shallow to deep, *without* the input image
            (for a standard 5-level encoder the strides are 2, 4, 8, 16, 32).
        decoder: ``[B, C, h, w]`` decoder feature right before the segmentation head.
    """

    logits: Tensor
    stages: tuple[Tensor, ...] = ()
    decoder: Tensor | None = None
