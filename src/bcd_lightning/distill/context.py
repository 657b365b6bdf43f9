"""Context distillation (BCD, implicit part): match pixel self-relations of the decoder features."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
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
        calibrate: ``{steps, ratio}``: scale to ``ratio`` × CE early in training
            (:mod:`~bcd_lightning.distill.calibration`); null: unscaled.

    No parameters: relations are N×N whatever the channel counts.
    """

    uses: frozenset[str] = frozenset({"decoder", "logits"})
    # The student's logits give the input size; from the teacher only the decoder feature is read.
    teacher_uses: frozenset[str] | None = frozenset({"decoder"})

    def __init__(
        self,
        tau: float = 1.0,
        stride: int | None = 8,
        max_nodes: int | None = None,
        chunk_size: int | None = None,
        variant: str = "kl",
        calibrate: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.set_calibration(calibrate)
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
        cached = self._cached_nodes(student, teacher)
        if cached is not None:
            teacher = SegOutput(logits=teacher.logits, decoder=cached)
        if student.decoder is None or teacher.decoder is None:
            missing = "student" if student.decoder is None else "teacher"
            raise ValueError(
                f"{type(self).__name__}: the {missing} model returned no decoder feature "
                "(SegOutput.decoder is None); this loss needs it."
            )
        s, t = student.decoder, teacher.decoder
        grid = self._grid(student, t)
        if self.variant == "kl":
            return self_relation_kl(s, t, self.tau, chunk_size=self.chunk_size, grid=grid)
        return cosine_relation_mse(s, t, grid=grid)

    def _grid(self, student: SegOutput, teacher_decoder: Tensor) -> tuple[int, int]:
        s, t = student.decoder, teacher_decoder
        assert s is not None and student.logits is not None
        return node_grid(
            (student.logits.shape[-2], student.logits.shape[-1]),
            [(s.shape[-2], s.shape[-1]), (t.shape[-2], t.shape[-1])],
            self.stride,
            self.max_nodes,
        )

    def teacher_cache_entries(self, teacher: SegOutput, student: SegOutput) -> dict[str, Tensor]:
        # The loss reads the teacher decoder only after average-pooling it to the node grid, so the
        # pooled (un-normalised) feature is all it needs: 32x32 nodes instead of the full-size map. The
        # grid also depends on the student's decoder size, hence its place in the name.
        if teacher.decoder is None or student.decoder is None:
            raise ValueError(f"{type(self).__name__}: a decoder feature is missing (SegOutput.decoder).")
        grid = self._grid(student, teacher.decoder)
        t = teacher.decoder.detach()
        pooled = t if tuple(t.shape[-2:]) == grid else F.adaptive_avg_pool2d(t.float(), grid)
        return {f"{self._entry_prefix()}{grid[0]}x{grid[1]}": pooled}

    def _entry_prefix(self) -> str:
        return f"decoder_nodes/stride{self.stride}/max_nodes{self.max_nodes}/"

    def _cached_nodes(self, student: SegOutput, teacher: SegOutput) -> Tensor | None:
        """The cached pooled teacher decoder of this loss's node grid, if the teacher output has it."""
        prefix = self._entry_prefix()
        for name, value in teacher.cached.items():
            if name.startswith(prefix) and student.decoder is not None:
                # Pooling a grid-sized map to the same grid is the identity, so reuse is exact; a
                # student with another decoder size would need another grid (and another cache).
                if self._grid(student, value) != tuple(value.shape[-2:]):
                    raise ValueError(
                        f"{type(self).__name__}: the cached teacher nodes {tuple(value.shape[-2:])} do not "
                        "match this student's node grid; the teacher-output cache was filled for another "
                        "student decoder size."
                    )
                return value
        return None

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, stride={self.stride}, max_nodes={self.max_nodes}, "
            f"chunk_size={self.chunk_size}, variant={self.variant!r}"
        )
