"""Every detection loss: 0 when student equals teacher, hand-computed values, padding excluded."""

from __future__ import annotations

import pytest
import torch

from bcd_lightning.detection.features import Levels, valid_mask
from bcd_lightning.detection.losses import (
    BoundaryLevels,
    ContextLevels,
    CWDLevels,
    FitNetLevels,
    PKDLevels,
    node_grid,
)

ALL = [BoundaryLevels(), ContextLevels(max_nodes=20), FitNetLevels(), CWDLevels(tau=2.0), PKDLevels()]
SIZES = [(64, 64), (40, 48)]  # second image padded to 64 x 64


def levels(channels: int = 6, seed: int = 0) -> Levels:
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, channels, 64 // s, 64 // s, generator=g) for s in (8, 16)]
    return Levels(feats, [8, 16], [valid_mask(SIZES, f, s) for f, s in zip(feats, (8, 16), strict=True)])


def replaced(lv: Levels, features: list[torch.Tensor]) -> Levels:
    return Levels(features, lv.strides, lv.valid)


@pytest.mark.parametrize("loss", ALL, ids=lambda m: type(m).__name__)
def test_zero_when_student_equals_teacher(loss: torch.nn.Module) -> None:
    t = levels()
    s = replaced(t, [f.clone().requires_grad_() for f in t.features])
    value = loss(s, t)
    assert abs(float(value.detach())) < 1e-5
    assert float(loss(levels(seed=1), t)) > 1e-3  # and not 0 for a different student


@pytest.mark.parametrize("loss", ALL, ids=lambda m: type(m).__name__)
def test_padding_is_excluded(loss: torch.nn.Module) -> None:
    s, t = levels(seed=1), levels(seed=2)
    value = loss(s, t)
    noisy = [
        torch.where(v[:, None], f, torch.randn_like(f) * 100)
        for f, v in zip(s.features, s.valid, strict=True)
    ]
    noisy_t = [
        torch.where(v[:, None], f, torch.randn_like(f) * 100)
        for f, v in zip(t.features, t.valid, strict=True)
    ]
    torch.testing.assert_close(loss(replaced(s, noisy), replaced(t, noisy_t)), value)


def test_gradients_reach_the_student_only() -> None:
    t = levels(seed=2)
    s = replaced(t, [torch.randn_like(f).requires_grad_() for f in t.features])
    for loss in ALL:
        loss(s, t).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s.features)
    assert all(f.grad is None for f in t.features)


def test_fitnet_hand_computed() -> None:
    t = levels()
    s = replaced(t, [torch.zeros_like(f) for f in t.features])
    ones = replaced(t, [torch.ones_like(f) for f in t.features])
    # mean over valid positions and channels of (0 - 1)^2 = 1 per level, summed over 2 levels.
    assert float(FitNetLevels()(s, ones)) == pytest.approx(2.0)


def test_cwd_matches_reference_formula() -> None:
    tau = 2.0
    s, t = levels(seed=1), levels(seed=2)
    expected = 0.0
    for fs, ft, v in zip(s.features, t.features, t.valid, strict=True):
        b, c = fs.shape[:2]
        for i in range(b):
            for k in range(c):
                p = torch.softmax(ft[i, k][v[i]] / tau, 0)
                q = torch.softmax(fs[i, k][v[i]] / tau, 0)
                expected += tau**2 * float((p * (p.log() - q.log())).sum()) / (b * c)
    assert float(CWDLevels(tau=tau)(s, t)) == pytest.approx(expected, rel=1e-5)


def test_pkd_is_one_minus_pearson_and_affine_invariant() -> None:
    t = levels()
    # A positive affine map per channel has Pearson correlation 1 with the teacher: PKD 0.
    scale = torch.rand(1, 6, 1, 1) + 0.5
    s = replaced(t, [f * scale + 3.0 for f in t.features])
    assert float(PKDLevels()(s, t)) == pytest.approx(0.0, abs=1e-5)
    # A negated student has correlation -1: (Ŝ - T̂)² / 2 = 2 per position ((n-1)/n from the unbiased std).
    neg = replaced(t, [-f for f in t.features])
    n = [int(v.sum()) for v in t.valid]
    assert float(PKDLevels()(neg, t)) == pytest.approx(sum(2 * (k - 1) / k for k in n), rel=1e-4)


def test_channel_free_losses_need_no_adapter() -> None:
    t, s = levels(channels=6), levels(channels=3, seed=4)
    for loss in (BoundaryLevels(), ContextLevels()):
        loss.bind(3, 6, [8, 16])
        assert len(loss.adapters) == 0
        assert torch.isfinite(loss(s, t))
    fit = FitNetLevels()
    fit.bind(3, 6, [8, 16])
    assert sorted(fit.adapters) == ["16", "8"]
    assert torch.isfinite(fit(s, t))


def test_context_node_cap() -> None:
    assert node_grid(8, 8, None) == (8, 8)
    assert node_grid(8, 8, 64) == (8, 8)
    h, w = node_grid(32, 16, 128)
    assert h * w <= 128 and (h, w) == (16, 8)
