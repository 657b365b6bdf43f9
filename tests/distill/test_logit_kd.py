"""Pixel logit KD against a hand-written reference: τ² · mean over valid pixels of KL(T ‖ S)."""

from __future__ import annotations

import math

import pytest
import torch

from bcd_lightning.distill import LogitKD
from bcd_lightning.distill.functional import pixel_kd
from bcd_lightning.models import SegOutput


def reference_kd(s: torch.Tensor, t: torch.Tensor, tau: float, valid: torch.Tensor) -> float:
    """Loop over pixels with plain Python math."""
    total, count = 0.0, 0
    b, k, h, w = s.shape
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                if not valid[bi, y, x]:
                    continue
                zs = [s[bi, c, y, x].item() / tau for c in range(k)]
                zt = [t[bi, c, y, x].item() / tau for c in range(k)]
                ls = math.log(sum(math.exp(v) for v in zs))
                lt = math.log(sum(math.exp(v) for v in zt))
                total += sum(math.exp(zt[c] - lt) * ((zt[c] - lt) - (zs[c] - ls)) for c in range(k))
                count += 1
    return tau**2 * total / count


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_matches_reference(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    valid = torch.rand(2, 4, 5, generator=g) > 0.3
    assert pixel_kd(s, t, tau, valid).item() == pytest.approx(reference_kd(s, t, tau, valid), rel=1e-5)


def test_zero_when_equal_positive_otherwise_and_grad_to_student_only() -> None:
    loss = LogitKD(tau=2.0)
    t_logits = torch.randn(2, 4, 8, 8)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    s_logits = t_logits.clone().requires_grad_(True)
    assert loss(SegOutput(s_logits), SegOutput(t_logits), target).item() == pytest.approx(0.0, abs=1e-7)
    s_logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    value = loss(SegOutput(s_logits), SegOutput(t_logits), target)
    value.backward()
    assert value.item() > 0 and s_logits.grad is not None and t_logits.grad is None


def test_ignored_pixels_contribute_nothing() -> None:
    s, t = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 255
    before = LogitKD()(SegOutput(s), SegOutput(t), target)
    s2 = s.clone()
    s2[0, :, :2] = 100.0  # change the student only where the label is ignored
    assert LogitKD()(SegOutput(s2), SegOutput(t), target).item() == pytest.approx(before.item(), rel=1e-6)


def test_all_ignored_is_zero_not_nan() -> None:
    s = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    value = LogitKD()(SegOutput(s), SegOutput(torch.randn(1, 3, 4, 4)), target)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(s.grad).all()


def test_bad_tau() -> None:
    with pytest.raises(ValueError, match="tau"):
        LogitKD(tau=0)


def test_logit_kd_detaches_a_teacher_that_requires_grad() -> None:
    # Every loss treats the teacher as a constant, even when the caller hands over a tensor with a graph.
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    LogitKD(tau=2.0)(SegOutput(logits=s), SegOutput(logits=t), target).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    pixel_kd(s, t[:, :, :2, :2], 1.0).backward()  # resized teacher: still detached
    assert t.grad is None
