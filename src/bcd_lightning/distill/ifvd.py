"""Intra-class feature variation distillation (IFVD, Wang et al. 2020)."""

from __future__ import annotations

from torch import Tensor

from bcd_lightning.distill.adapters import Feature, FeaturePairLoss
from bcd_lightning.distill.baseline_functional import intra_class_variation_mse
from bcd_lightning.models.outputs import SegOutput


class IntraClassVariationDistillation(FeaturePairLoss):
    """``Σ_{valid p} (cos(f^S_p, μ^S_{y_p}) - cos(f^T_p, μ^T_{y_p}))² / #valid``.

    ``μ_k`` is the mean feature of the valid pixels of class k in the same image (each model uses its own
    features), ``y`` the label resized by nearest neighbour to the teacher feature's size (the student
    feature is resized bilinearly to it first; both are average-pooled by ``avg_pool`` when set); ignored
    pixels take no part in prototypes nor the mean.
    Channel-free, so no adapter is needed (``auto`` = none).
    See :func:`~bcd_lightning.distill.baseline_functional.intra_class_variation_mse`.

    Args:
        feature: ``"logits"``, ``"decoder"`` or a 0-based stage index.
        num_classes: K; ``null`` takes it from the student's logits (which then must be computed).
        student_adapter: ``auto``/``none`` (identity), ``conv1x1`` or ``conv1x1_bn``.
        avg_pool: average-pool both features (kernel = stride) first; null: none.
    """

    def __init__(
        self,
        feature: Feature = 2,
        num_classes: int | None = None,
        student_adapter: str = "auto",
        avg_pool: int | None = None,
    ) -> None:
        super().__init__(feature, student_adapter, avg_pool)
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(
                f"{type(self).__name__}: option `num_classes` must be null or an integer >= 1, "
                f"got {num_classes!r}"
            )
        self.num_classes = num_classes
        if num_classes is None:
            self.uses = self.uses | {"logits"}

    def forward(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        k = self.num_classes
        if k is None:
            if student.logits is None:
                raise ValueError(f"{type(self).__name__}: set `num_classes` (no student logits to infer it).")
            k = int(student.logits.shape[1])
        s, t = self.pair(student, teacher)
        return intra_class_variation_mse(s, t, target, k, ignore_index)

    def extra_repr(self) -> str:
        return (
            f"feature={self.feature!r}, num_classes={self.num_classes}, "
            f"student_adapter={self.student_adapter!r}, avg_pool={self.avg_pool}"
        )
