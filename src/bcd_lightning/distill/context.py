"""Context distillation (BCD, implicit part): match pixel self-relations of the decoder features."""

from __future__ import annotations

import math
from typing import ClassVar

from torch import Tensor

from bcd_lightning.distill.base import DistillLoss
from bcd_lightning.distill.functional import cosine_relation_mse, self_relation_kl
from bcd_lightning.models.outputs import SegOutput

CONTEXT_VARIANTS = ("kl", "mse")


def _check_optional_int(owner: str, name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: option `{name}` must be null or an integer >= 1, got {value!r}")
    return value


def node_grid(
    input_size: tuple[int, int],
    feature_sizes: list[tuple[int, int]],
    stride: int | None,
    max_nodes: int | None,
) -> tuple[int, int]:
    """The ``h×w`` node grid of the context loss.

    Start from ``ceil(input / stride)`` (``stride=None``: no target), never finer than the coarsest of
    ``feature_sizes`` (a coarser decoder is kept, not upsampled); then, if ``h·w > max_nodes``, divide
    both sides by the smallest integer k with ``ceil(h/k)·ceil(w/k) <= max_nodes``.
    """
    h = min(s[0] for s in feature_sizes)
    w = min(s[1] for s in feature_sizes)
    if stride is not None:
        h = min(h, math.ceil(input_size[0] / stride))
        w = min(w, math.ceil(input_size[1] / stride))
    if max_nodes is not None and h * w > max_nodes:
        k = 2
        while math.ceil(h / k) * math.ceil(w / k) > max_nodes:
            k += 1
        h, w = math.ceil(h / k), math.ceil(w / k)
    return h, w


class ContextDistillation(DistillLoss):
    """Self-relation distillation on the decoder feature (see docs/method.md).

    ``variant="kl"``: ``τ² · mean_{b,i} KL(R_i^T ‖ R_i^S)``, ``R_i = softmax_j(x_i·x_j/τ)``
    (:func:`~bcd_lightning.distill.functional.self_relation_kl`, exact, chunked, O(chunk·N) memory);
    ``variant="mse"``: mean squared difference of cosine relations
    (:func:`~bcd_lightning.distill.functional.cosine_relation_mse`, via Gram matrices).

    Args:
        tau: relation temperature τ (``"kl"`` only).
        stride: node grid = input size / ``stride`` (average pooling); ``None`` keeps the decoder
            resolution. The cost is O(N²) in the number of nodes N, so this decides the price.
        max_nodes: optional cap on N, reached by pooling further.
        chunk_size: rows per chunk (``None``: 16 MiB fp32 work blocks, 64 MiB in all).
        variant: ``"kl"`` or ``"mse"``.

    No parameters: relations are N×N whatever the channel counts.
    """

    uses: ClassVar[frozenset[str]] = frozenset({"decoder", "logits"})

    def __init__(
        self,
        tau: float = 1.0,
        stride: int | None = 8,
        max_nodes: int | None = None,
        chunk_size: int | None = None,
        variant: str = "kl",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0:
            raise ValueError(f"{name}: option `tau` must be a number > 0, got {tau!r}")
        if variant not in CONTEXT_VARIANTS:
            raise ValueError(
                f"{name}: option `variant` must be one of {list(CONTEXT_VARIANTS)}, got {variant!r}"
            )
        self.tau = float(tau)
        self.stride = _check_optional_int(name, "stride", stride)
        self.max_nodes = _check_optional_int(name, "max_nodes", max_nodes)
        self.chunk_size = _check_optional_int(name, "chunk_size", chunk_size)
        self.variant = variant

    def forward(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        if student.decoder is None or teacher.decoder is None:
            missing = "student" if student.decoder is None else "teacher"
            raise ValueError(
                f"{type(self).__name__}: the {missing} model returned no decoder feature "
                "(SegOutput.decoder is None); this loss needs it."
            )
        s, t = student.decoder, teacher.decoder
        grid = node_grid(
            (student.logits.shape[-2], student.logits.shape[-1]),
            [(s.shape[-2], s.shape[-1]), (t.shape[-2], t.shape[-1])],
            self.stride,
            self.max_nodes,
        )
        if self.variant == "kl":
            return self_relation_kl(s, t, self.tau, chunk_size=self.chunk_size, grid=grid)
        return cosine_relation_mse(s, t, grid=grid)

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, stride={self.stride}, max_nodes={self.max_nodes}, "
            f"chunk_size={self.chunk_size}, variant={self.variant!r}"
        )
