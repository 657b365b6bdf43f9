"""The plug-in contract every distillation loss follows."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from bcd_lightning.models.outputs import SegOutput

#: SegOutput fields a loss may read.
OUTPUT_FIELDS = frozenset({"logits", "stages", "decoder"})


class DistillLoss(nn.Module):
    """A distillation loss: consumes student and teacher :class:`SegOutput` s, returns a scalar.

    Subclasses set ``uses`` (which SegOutput fields they read) and implement ``forward``. Adapters, if
    any, are submodules of the loss and are trained with the student but never exported with it.
    """

    uses: ClassVar[frozenset[str]] = frozenset({"logits"})

    def forward(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        raise NotImplementedError

    def check_compatible(self, student_stages: int, teacher_stages: int) -> None:
        """Raise ``ValueError`` naming the option when the models lack something this loss reads."""
