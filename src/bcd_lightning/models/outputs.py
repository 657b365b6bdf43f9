"""The one output type every segmentation model in the framework returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

#: The SegOutput fields a distillation loss may read (``DistillLoss.uses``).
OUTPUT_FIELDS = frozenset({"logits", "stages", "decoder"})


@dataclass
class SegOutput:
    """What a distillation loss may consume.

    Attributes:
        logits: ``[B, K, H, W]`` class scores at input resolution.
        stages: backbone stage features, shallow to deep, *without* the input image
            (for a standard 5-level encoder the strides are 2, 4, 8, 16, 32).
        decoder: ``[B, C, h, w]`` decoder feature right before the segmentation head.
        cached: teacher quantities a loss precomputed once and the teacher-output cache stored (e.g.
            boundary maps), keyed by the names the loss gave them; empty for a live forward pass.

    A forward asked for only some fields (``SegModel.forward(x, outputs=...)``) leaves the others
    ``None`` / ``()``: ``logits`` is ``None`` only then.
    """

    logits: Tensor | None
    stages: tuple[Tensor, ...] = ()
    decoder: Tensor | None = None
    cached: dict[str, Tensor] = field(default_factory=dict)
