"""Distillation losses on stride-paired FPN levels (see :mod:`.features`); padding never counts.

Plug-in contract (the detection counterpart of :class:`bcd_lightning.distill.base.DistillLoss`): a loss
reads the student's and the teacher's :class:`~.features.Levels` (features, strides, valid masks) on the
strides it is configured for (``strides=None``: every paired stride) and returns a scalar. Losses with
channel adapters build them in :meth:`DetectionLoss.bind` from the two FPN widths.

Reductions (docs/method.md, "Detection"): the BCD terms average over levels (as in segmentation); the
baselines sum over levels, the peers' convention (mmrazor: one CWD loss per FPN level, PKD summed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from bcd_lightning.detection.features import Levels
from bcd_lightning.distill.functional import boundary_map, masked_mean, self_relation_kl


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
