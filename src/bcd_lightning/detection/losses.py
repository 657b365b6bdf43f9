"""Distillation losses on stride-paired FPN levels (see :mod:`.features`); padding never counts.

Plug-in contract (the detection counterpart of :class:`bcd_lightning.distill.base.DistillLoss`): a loss
reads the student's and the teacher's :class:`~.features.Levels` (features, strides, valid masks) on the
strides it is configured for (``strides=None``: every paired stride) and returns a scalar. Losses with
channel adapters build them in :meth:`DetectionLoss.bind` from the two FPN widths.

Reductions (docs/method.md, "Detection"): the BCD terms average over levels (as in segmentation); the
baselines sum over levels, the peers' convention (mmrazor: one CWD loss per FPN level, PKD summed).

Object-level losses (Mask R-CNN) derive from :class:`MaskRoILoss` instead: they read
:class:`~.features.MaskRoIs`, both models' mask-head outputs on the student's positive RoIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from bcd_lightning.detection.features import Levels, MaskRoIs
from bcd_lightning.distill.functional import (
    boundary_map,
    boundary_weighted_kd,
    fused_boundary_map,
    masked_mean,
    pixel_kd,
    self_relation_kl,
)


class DetectionLoss(nn.Module):
    """Base: selection of strides and (optional) per-stride 1x1 adapters from student to teacher width."""

    uses: ClassVar[frozenset[str]] = frozenset({"levels"})
    needs_adapter: ClassVar[bool] = False

    def __init__(self, strides: Sequence[int] | None = None) -> None:
        super().__init__()
        self.strides = None if strides is None else [int(s) for s in strides]
        self.adapters = nn.ModuleDict()

    def bind(self, student_channels: int, teacher_channels: int, strides: Sequence[int]) -> None:
        """1x1 conv adapters (student → teacher width) when this loss needs equal widths and they differ."""
        if self.needs_adapter and student_channels != teacher_channels:
            for s in self.strides or strides:
                self.adapters[str(s)] = nn.Conv2d(student_channels, teacher_channels, 1)

    def select(self, student: Levels, teacher: Levels) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``(student feature (adapted), teacher feature, valid mask)`` per selected stride."""
        strides = self.strides or student.strides
        out = []
        for s in strides:
            if s not in student.strides:
                raise ValueError(f"{type(self).__name__}: stride {s} is not paired (have {student.strides})")
            fs, valid = student.at(s)
            ft, _ = teacher.at(s)
            if str(s) in self.adapters:
                fs = self.adapters[str(s)](fs)
            out.append((fs, ft.detach(), valid))
        return out

    def forward(self, student: Levels, teacher: Levels) -> Tensor:
        raise NotImplementedError


def _valid_extent(valid: Tensor) -> list[tuple[int, int]]:
    """Per image, the valid height and width of a ``[B, h, w]`` mask (padding is bottom/right)."""
    return [(int(v.any(1).sum()), int(v.any(0).sum())) for v in valid]


def _by_extent(fs: Tensor, ft: Tensor, valid: Tensor) -> list[tuple[Tensor, Tensor, float]]:
    """Student and teacher crops of the valid region, one batch per distinct image extent, with the
    share of the batch each holds (one group when all images have the same size, the usual case)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, e in enumerate(_valid_extent(valid)):
        groups.setdefault(e, []).append(i)
    out = []
    for (h, w), idx in groups.items():
        if h and w:
            sel = torch.tensor(idx, device=fs.device)
            out.append(
                (
                    fs.index_select(0, sel)[..., :h, :w],
                    ft.index_select(0, sel)[..., :h, :w],
                    len(idx) / len(valid),
                )
            )
    return out


class BoundaryLevels(DetectionLoss):
    """BCD boundary term: ``(1/L) Σ_l mean_{b, valid p} D(b_l^S(p), b_l^T(p))``, ``D`` the squared (mse)
    or absolute (l1) difference of the channel-free boundary maps (:func:`boundary_map`; no adapter).
    Maps are computed on each image's valid region (padding cropped, so the replicate border sits at the
    image edge, as in segmentation) and averaged over its positions, then over the batch."""

    def __init__(self, strides: Sequence[int] | None = None, variant: str = "mse", dilation: int = 1) -> None:
        super().__init__(strides)
        if variant not in ("mse", "l1"):
            raise ValueError(f"boundary variant must be mse or l1, got {variant!r}")
        self.variant, self.dilation = variant, int(dilation)

    def forward(self, student: Levels, teacher: Levels) -> Tensor:
        total = []
        for fs, ft, valid in self.select(student, teacher):
            level = fs.new_zeros(())
            for s, t, share in _by_extent(fs, ft, valid):
                diff = boundary_map(s, self.dilation) - boundary_map(t, self.dilation)
                level = level + share * (diff.square() if self.variant == "mse" else diff.abs()).mean()
            total.append(level)
        return torch.stack(total).mean()


def node_grid(h: int, w: int, max_nodes: int | None) -> tuple[int, int]:
    """The largest grid with the level's aspect ratio and at most ``max_nodes`` nodes (area pooling)."""
    if max_nodes is None or h * w <= max_nodes:
        return h, w
    scale = (max_nodes / (h * w)) ** 0.5
    return max(1, int(h * scale)), max(1, int(w * scale))


class ContextLevels(DetectionLoss):
    """BCD context term: per level, self-relation KL ``τ² mean_i KL(R_i^T ‖ R_i^S)`` over the valid region
    of each image (padding cropped), its nodes area-pooled to at most ``max_nodes``; mean over levels.
    The exact chunked kernel :func:`self_relation_kl`; channel-free, no adapter."""

    def __init__(self, strides: Sequence[int] | None = None, tau: float = 1.0, max_nodes: int | None = 1024):
        super().__init__(strides)
        if tau <= 0:
            raise ValueError(f"context tau must be > 0, got {tau}")
        self.tau, self.max_nodes = float(tau), max_nodes

    def forward(self, student: Levels, teacher: Levels) -> Tensor:
        total = []
        for fs, ft, valid in self.select(student, teacher):
            level = fs.new_zeros(())
            for s, t, share in _by_extent(fs, ft, valid):
                grid = node_grid(s.shape[-2], s.shape[-1], self.max_nodes)
                level = level + share * self_relation_kl(s, t, self.tau, grid=grid)
            total.append(level)
        return torch.stack(total).mean()


class FitNetLevels(DetectionLoss):
    """FitNet-style feature MSE: ``Σ_l mean_{valid p, c} (A_l(F_l^S) - F_l^T)²``, ``A_l`` a 1x1 adapter
    when the widths differ."""

    needs_adapter = True

    def forward(self, student: Levels, teacher: Levels) -> Tensor:
        return torch.stack(
            [
                masked_mean((fs - ft).square().mean(1), valid)
                for fs, ft, valid in self.select(student, teacher)
            ]
        ).sum()


class CWDLevels(DetectionLoss):
    """Channel-wise distillation (Shu et al. 2021) per level: each channel's spatial softmax at τ over the
    valid positions, ``τ² Σ_{b,c} KL(T_bc ‖ S_bc) / (B·C)``; summed over levels (mmrazor: weight 10 per
    FPN level, τ 1)."""

    needs_adapter = True

    def __init__(self, strides: Sequence[int] | None = None, tau: float = 1.0) -> None:
        super().__init__(strides)
        self.tau = float(tau)

    def forward(self, student: Levels, teacher: Levels) -> Tensor:
        total = []
        for fs, ft, valid in self.select(student, teacher):
            b, c = ft.shape[:2]
            v = valid[:, None].expand(b, c, *valid.shape[1:]).flatten(2)
            neg = torch.finfo(torch.float32).min
            ls = torch.where(v, fs.float().flatten(2) / self.tau, neg).log_softmax(-1)
            lt = torch.where(v, ft.float().flatten(2) / self.tau, neg).log_softmax(-1)
            kl = torch.where(v, lt.exp() * (lt - ls), 0.0).sum(-1)
            total.append(self.tau**2 * kl.sum() / (b * c))
        return torch.stack(total).sum()


def _standardise(x: Tensor, valid: Tensor) -> Tensor:
    """Per channel, zero mean and unit (unbiased) std over the batch's valid positions (PKD's norm)."""
    v = valid[:, None].to(x.dtype)
    n = v.sum().clamp_min(2.0)
    mean = (x * v).sum((0, 2, 3), keepdim=True) / n
    var = ((x - mean).square() * v).sum((0, 2, 3), keepdim=True) / (n - 1)
    return (x - mean) / (var.sqrt() + 1e-6)


class PKDLevels(DetectionLoss):
    """PKD (Cao et al. 2022): standardise each channel of student and teacher, then
    ``Σ_l mean_{valid p, c} (Ŝ - T̂)² / 2`` (= 1 − Pearson correlation); mmrazor weight 6 / 10."""

    needs_adapter = True

    def forward(self, student: Levels, teacher: Levels) -> Tensor:
        total = []
        for fs, ft, valid in self.select(student, teacher):
            diff = _standardise(fs.float(), valid) - _standardise(ft.float(), valid)
            total.append(masked_mean(diff.square().mean(1), valid) / 2)
        return torch.stack(total).sum()


# --- object level: the mask branch on the student's positive RoIs (Mask R-CNN) ----------------------------
class MaskRoILoss(nn.Module):
    """Base of the object-level losses: ``forward(rois: MaskRoIs) -> scalar``; no adapters (channel-free
    or on logits). A step without positive RoIs gives 0 with a graph (DDP needs every parameter used)."""

    uses: ClassVar[frozenset[str]] = frozenset({"rois"})
    strides: list[int] | None = None

    def bind(self, student_channels: int, teacher_channels: int, strides: Sequence[int]) -> None:
        """Nothing to build: the object-level losses need no adapter."""

    def forward(self, rois: MaskRoIs) -> Tensor:
        raise NotImplementedError


def binary_logits(logits: Tensor) -> Tensor:
    """``[N, h, w]`` mask logits z as two-class logits ``[N, 2, h, w]`` = (z, 0): their softmax at τ is
    (σ(z/τ), 1 − σ(z/τ)), so the pixel KL of segmentation is exactly the Bernoulli KL of the masks."""
    return torch.stack([logits, torch.zeros_like(logits)], 1)


def _empty(rois: MaskRoIs) -> Tensor | None:
    if rois.student_logits.shape[0] == 0:
        return rois.student_logits.sum() * 0.0 + rois.student_features.sum() * 0.0
    return None


class MaskKD(MaskRoILoss):
    """Mask-logit KD (baseline): ``τ² mean_{n, p} KL(σ(z_T/τ) ‖ σ(z_S/τ))`` over the student's positive
    RoIs and the 28x28 positions of each RoI's assigned class channel (Bernoulli KL per pixel)."""

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"mask KD tau must be > 0, got {tau}")
        self.tau = float(tau)

    def forward(self, rois: MaskRoIs) -> Tensor:
        empty = _empty(rois)
        if empty is not None:
            return empty
        return pixel_kd(binary_logits(rois.student_logits), binary_logits(rois.teacher_logits), self.tau)


class BoundaryMaskKD(MaskKD):
    """BCD at the object level, boundary term: mask-logit KD weighted by the teacher's boundary map of its
    RoI features, ``τ² Σ_{n,p} w_np KL_np / Σ_{n,p} w_np`` with ``w_n`` = :func:`boundary_map` of the
    teacher's 14x14 mask-head features of RoI n, bilinearly resized to 28x28 (segmentation's
    boundary-weighted KD, per object)."""

    def __init__(self, tau: float = 1.0, dilation: int = 1) -> None:
        super().__init__(tau)
        self.dilation = int(dilation)

    def forward(self, rois: MaskRoIs) -> Tensor:
        empty = _empty(rois)
        if empty is not None:
            return empty
        weight = fused_boundary_map([rois.teacher_features], rois.student_logits.shape[-2:], self.dilation)
        return boundary_weighted_kd(
            binary_logits(rois.student_logits), binary_logits(rois.teacher_logits), weight, self.tau
        )


class RoIContext(MaskRoILoss):
    """BCD at the object level, context term: inside each positive RoI, the self-relation KL
    ``τ² mean_i KL(R_i^T ‖ R_i^S)`` of the mask-head features (14x14, area-pooled to ``grid``: 7x7 = 49
    nodes by default), averaged over RoIs (channel-free: student and teacher widths may differ)."""

    def __init__(self, tau: float = 1.0, grid: Sequence[int] = (7, 7)) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"RoI context tau must be > 0, got {tau}")
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"RoI context grid must be two sizes >= 1, got {list(grid)}")
        self.tau, self.grid = float(tau), (int(grid[0]), int(grid[1]))

    def forward(self, rois: MaskRoIs) -> Tensor:
        empty = _empty(rois)
        if empty is not None:
            return empty
        return self_relation_kl(rois.student_features, rois.teacher_features, self.tau, grid=self.grid)
