"""CWD: hand-computed values, zero at equality, adapters, resizing, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from baseline_support import np_kl, np_softmax, out, rand, widths
from torch import nn

from bcd_lightning.distill import ChannelWiseDistillation
from bcd_lightning.models.outputs import SegOutput


def cwd_reference(s: np.ndarray, t: np.ndarray, tau: float, divisor: int | None = None) -> float:
    """Loops: per (b, c) KL between softmaxes over the H*W positions, times tau^2, / (B*divisor);
    divisor = C unless given (the reference divides by the student's own width)."""
    b, c = s.shape[:2]
    total = 0.0
    for i in range(b):
        for k in range(c):
            total += np_kl(np_softmax(t[i, k].ravel() / tau), np_softmax(s[i, k].ravel() / tau))
    return tau**2 * total / (b * (divisor or c))


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_on_logits_matches_hand_computation(tau: float) -> None:
    s, t = rand(2, 3, 2, 3, seed=1), rand(2, 3, 2, 3, seed=2)
    loss = ChannelWiseDistillation("logits", tau=tau)
    value = loss(SegOutput(logits=s), SegOutput(logits=t), torch.zeros(2, 2, 3, dtype=torch.long))
    assert value.item() == pytest.approx(cwd_reference(s.numpy(), t.numpy(), tau), rel=1e-10)


def test_cwd_is_zero_when_student_equals_teacher() -> None:
    x = rand(2, 5, 4, 4, seed=3)
    loss = ChannelWiseDistillation(0, tau=4.0)
    loss.bind_widths(widths(5), widths(5))
    assert isinstance(loss.adapter, nn.Identity)  # same widths: auto = identity
    assert loss(out(x), out(x.clone()), torch.zeros(2, 4, 4, dtype=torch.long)).item() == pytest.approx(
        0.0, abs=1e-12
    )


def test_cwd_adapter_and_resize_follow_the_stated_order() -> None:
    # Student 2 channels at 4x4, teacher 3 channels at 2x2: 1x1 conv (2 -> 3) on the student, then a
    # bilinear half-size resize, which for an exact factor 2 (align_corners=False) is the 2x2 block mean.
    # The sum over the 3 adapted channels is divided by the student's own 2 channels (the reference).
    s, t = rand(1, 2, 4, 4, seed=4), rand(1, 3, 2, 2, seed=5)
    loss = ChannelWiseDistillation(0, tau=2.0).double()
    loss.bind_widths(widths(2), widths(3))
    assert isinstance(loss.adapter, nn.Conv2d) and loss.adapter.weight.shape == (3, 2, 1, 1)
    loss = loss.double()
    w = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
    bias = np.array([0.1, 0.0, -0.2])
    with torch.no_grad():
        loss.adapter.weight.copy_(torch.from_numpy(w)[:, :, None, None])
        loss.adapter.bias.copy_(torch.from_numpy(bias))
    sn = s.numpy()[0]
    mapped = np.einsum("oc,chw->ohw", w, sn) + bias[:, None, None]
    pooled = mapped.reshape(3, 2, 2, 2, 2).mean(axis=(2, 4))
    expected = cwd_reference(pooled[None], t.numpy(), 2.0, divisor=2)
    value = loss(out(s), out(t), torch.zeros(1, 4, 4, dtype=torch.long))
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_cwd_gradients_reach_student_and_adapter_not_teacher() -> None:
    s = rand(2, 4, 4, 4, seed=6, dtype=torch.float32).requires_grad_(True)
    t = rand(2, 6, 4, 4, seed=7, dtype=torch.float32).requires_grad_(True)  # must stay untouched
    loss = ChannelWiseDistillation(0, tau=4.0)
    loss.bind_widths(widths(4), widths(6))
    loss(out(s), out(t), torch.zeros(2, 4, 4, dtype=torch.long)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0
    assert t.grad is None


def test_cwd_errors_are_actionable() -> None:
    with pytest.raises(ValueError, match="student_adapter"):
        ChannelWiseDistillation(0, student_adapter="conv3x3")
    with pytest.raises(ValueError, match="feature"):
        ChannelWiseDistillation("stage3")
    with pytest.raises(ValueError, match="tau"):
        ChannelWiseDistillation(tau=0)
    none = ChannelWiseDistillation(0, student_adapter="none")
    with pytest.raises(ValueError, match="student_adapter: conv1x1"):
        none.bind_widths(widths(4), widths(6))
    unbound = ChannelWiseDistillation(0, student_adapter="conv1x1")
    with pytest.raises(RuntimeError, match="bind_widths"):
        unbound(out(rand(1, 4, 2, 2)), out(rand(1, 4, 2, 2)), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="stage index"):
        ChannelWiseDistillation(5).check_compatible(5, 5)
