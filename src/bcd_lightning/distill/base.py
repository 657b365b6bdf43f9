"""The plug-in contract every distillation loss follows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor, nn

from bcd_lightning.models.outputs import OUTPUT_FIELDS, SegOutput

__all__ = ["OUTPUT_FIELDS", "DistillLoss", "require", "teacher_fields"]


class DistillLoss(nn.Module):
    """A distillation loss: consumes student and teacher :class:`SegOutput` s, returns a scalar.

    Subclasses set ``uses`` (which SegOutput fields they read) and implement ``forward``. Adapters, if
    any, are submodules of the loss and are trained with the student but never exported with it.

    The teacher fast path computes only the teacher fields the configured losses read: ``teacher_uses``
    when a loss sets it (it reads fewer teacher fields than student fields), else ``uses``. The
    teacher-output cache stores, per training sample, :meth:`teacher_cache_entries` when a loss
    defines them (compact, precomputed quantities it then reads from ``teacher.cached``), else the raw
    teacher fields it uses.
    """

    # Class-level defaults that an instance may narrow in ``__init__`` (e.g. to the one feature it is
    # configured to read), hence instance attributes rather than ClassVars.
    uses: frozenset[str] = frozenset({"logits"})
    #: Fields read from the *teacher* output; ``None``: the same as ``uses``.
    teacher_uses: frozenset[str] | None = None
    # Optional magnitude calibration against the CE (:mod:`bcd_lightning.distill.calibration`), applied to
    # what ``forward`` returns: the submodule ``calibration``, set by :meth:`set_calibration` (no class
    # attribute of that name: it would shadow the registered submodule).

    def set_calibration(self, calibrate: Mapping[str, Any] | None) -> None:
        """``calibrate: {steps, ratio}`` or None (see :mod:`bcd_lightning.distill.calibration`)."""
        from bcd_lightning.distill.calibration import make_calibration

        module = make_calibration(type(self).__name__, calibrate)
        if module is not None:
            self.calibration = module

    def __call__(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        raw = super().__call__(student, teacher, target, ignore_index)
        calibration = self._modules.get("calibration")
        if calibration is None:
            return raw
        return calibration(raw, student.logits, target, ignore_index)

    def teacher_cache_entries(self, teacher: SegOutput, student: SegOutput) -> dict[str, Tensor] | None:
        """What this loss needs from the teacher, as ``name -> [B, ...]`` tensors, or ``None``.

        ``None`` (default): the cache stores the raw teacher fields the loss uses. Otherwise ``forward``
        must work from a teacher output whose ``cached`` holds exactly these entries (and which has
        only the raw fields not replaced by them). Names are global: two losses returning the same name
        must mean the same tensor (e.g. one stage's boundary map at one dilation), so it is stored once.
        ``student`` is a live student output (only its shapes may be used).
        """
        return None

    def forward(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        raise NotImplementedError

    def check_compatible(self, student_stages: int, teacher_stages: int) -> None:
        """Raise ``ValueError`` naming the option when the models lack something this loss reads."""


def require(output: SegOutput, field: Literal["logits", "decoder"]) -> Tensor:
    """``output.<field>``, or a ``ValueError`` naming it when the forward pass left it ``None``."""
    value = getattr(output, field)
    if value is None:
        raise ValueError(
            f"SegOutput.{field} is None: the forward pass was not asked for it; a loss that reads it "
            "must list it in its `uses` (student) / `teacher_uses` (teacher)."
        )
    return value


def teacher_fields(loss: DistillLoss) -> frozenset[str]:
    """The teacher SegOutput fields ``loss`` reads; a ``ValueError`` names the loss if they are invalid."""
    fields = loss.uses if loss.teacher_uses is None else loss.teacher_uses
    fields = frozenset(fields)
    if not fields or not fields <= OUTPUT_FIELDS:
        raise ValueError(
            f"{type(loss).__name__}: `uses`/`teacher_uses` must be a non-empty subset of "
            f"{sorted(OUTPUT_FIELDS)}, got {sorted(fields)}"
        )
    return fields
