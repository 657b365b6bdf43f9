"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher") for segmentation.

Written as any user plug-in is: this one module and one preset (``conf/distill/dist.yaml``); nothing else
in the package names it. Equations: docs/method.md ("DIST").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bcd_lightning.distill.base import DistillLoss, require
from bcd_lightning.models.outputs import SegOutput

#: Added to the product of norms, as the reference ``cosine_similarity``.
EPS = 1e-8


def pearson(a: Tensor, b: Tensor, dim: int, eps: float = EPS) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim``: the cosine of the centred vectors, with
    ``eps`` added to the product of norms (as the reference)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    norms = torch.linalg.vector_norm(a, dim=dim) * torch.linalg.vector_norm(b, dim=dim)
    return (a * b).sum(dim) / (norms + eps)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    valid_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(β·L_inter + γ·L_intra, L_inter, L_intra)`` on the class probabilities ``y = softmax(z/τ)``.

    Pixels are the samples: with ``P`` the valid pixels of the whole batch (all when ``valid_mask`` is
    None), ``L_inter = τ²·(1 − mean_{p ∈ P} ρ(y^S_p, y^T_p))`` (correlation across the K classes of each
    pixel) and ``L_intra = τ²·(1 − mean_k ρ(y^S_{·k}, y^T_{·k}))`` (correlation across the pixels P of each
    class k). An all-ignored batch gives 0 (with a graph).

    Args:
        student_logits, teacher_logits: ``[B, K, H, W]``; the teacher is resized to the student if needed.
        valid_mask: ``[B, H, W]`` bool, False at ignored pixels.
    """
    if tau <= 0:
        raise ValueError(f"dist_loss: tau must be > 0, got {tau}")
    if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
        teacher_logits = F.interpolate(
            teacher_logits, size=student_logits.shape[-2:], mode="bilinear", align_corners=False
        )
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        k = student_logits.shape[1]
        # [B, K, H, W] -> [P, K] rows, one per pixel.
        y_s = F.softmax(student_logits.float() / tau, dim=1).movedim(1, -1).reshape(-1, k)
        y_t = F.softmax(teacher_logits.detach().float() / tau, dim=1).movedim(1, -1).reshape(-1, k)
        if valid_mask is not None:
            keep = valid_mask.reshape(-1)
            y_s, y_t = y_s[keep], y_t[keep]
        if y_s.shape[0] == 0:
            zero = student_logits.sum() * 0.0
            return zero, zero, zero
        inter = tau**2 * (1.0 - pearson(y_s, y_t, dim=1).mean())
        intra = tau**2 * (1.0 - pearson(y_s, y_t, dim=0).mean())
        return beta * inter + gamma * intra, inter, intra


class DIST(DistillLoss):
    """DIST on the logits: ``β·τ²(1 − mean_p ρ_inter) + γ·τ²(1 − mean_k ρ_intra)`` over non-ignored pixels.

    Args:
        tau: temperature (segmentation reference: 1, i.e. none).
        beta: weight of the inter-class (per-pixel) relation (reference: 1).
        gamma: weight of the intra-class (per-class, across pixels) relation (reference: 1).
    """

    uses: frozenset[str] = frozenset({"logits"})

    def __init__(self, tau: float = 1.0, beta: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        for name, value in (("tau", tau), ("beta", beta), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"DIST: option `{name}` must be a number >= 0, got {value!r}")
        if tau == 0:
            raise ValueError("DIST: option `tau` must be > 0, got 0")
        self.tau, self.beta, self.gamma = float(tau), float(beta), float(gamma)

    def forward(
        self, student: SegOutput, teacher: SegOutput, target: Tensor, ignore_index: int = 255
    ) -> Tensor:
        total, _, _ = dist_loss(
            require(student, "logits"),
            require(teacher, "logits"),
            self.tau,
            self.beta,
            self.gamma,
            valid_mask=target != ignore_index,
        )
        return total

    def extra_repr(self) -> str:
        return f"tau={self.tau}, beta={self.beta}, gamma={self.gamma}"
