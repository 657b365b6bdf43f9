"""IFVD: hand-computed values with ignore pixels, label downsampling, zero at equality, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from baseline_support import out, rand, widths

from bcd_lightning.distill import IntraClassVariationDistillation
from bcd_lightning.models.outputs import SegOutput

IGNORE = 255


def proto_cos(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[C, H, W] feature, [H, W] labels: cosine of each valid pixel to its class's mean valid feature."""
    sim = np.zeros(y.shape)
    for k in set(y.ravel().tolist()) - {IGNORE}:
        members = [(i, j) for i in range(y.shape[0]) for j in range(y.shape[1]) if y[i, j] == k]
        mu = np.mean([f[:, i, j] for i, j in members], axis=0)
        for i, j in members:
            v = f[:, i, j]
            sim[i, j] = v @ mu / (np.linalg.norm(v) * np.linalg.norm(mu))
    return sim


def ifvd_reference(s: np.ndarray, t: np.ndarray, y: np.ndarray) -> float:
    sq, n = 0.0, 0
    for b in range(s.shape[0]):
        d = proto_cos(s[b], y[b]) - proto_cos(t[b], y[b])
        valid = y[b] != IGNORE
        sq += float((d[valid] ** 2).sum())
        n += int(valid.sum())
    return sq / n


def labels(seed: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (2, size, size), generator=g)
    y[torch.rand(2, size, size, generator=g) < 0.2] = IGNORE
    return y


def test_ifvd_matches_hand_computation_with_ignore_and_different_widths() -> None:
    s, t, y = rand(2, 3, 4, 4, seed=1), rand(2, 5, 4, 4, seed=2), labels(3, 4)
    loss = IntraClassVariationDistillation(0, num_classes=3)
    loss.bind_widths(widths(3), widths(5))
    value = loss(out(s), out(t), y, IGNORE)
    assert value.item() == pytest.approx(ifvd_reference(s.numpy(), t.numpy(), y.numpy()), rel=1e-10)


def test_labels_are_downsampled_by_nearest_neighbour() -> None:
    # 8x8 labels on a 4x4 feature: nearest neighbour takes rows/cols 0, 2, 4, 6.
    s, t, y = rand(2, 3, 4, 4, seed=4), rand(2, 3, 4, 4, seed=5), labels(6, 8)
    value = IntraClassVariationDistillation(0, num_classes=3)(out(s), out(t), y, IGNORE)
    expected = ifvd_reference(s.numpy(), t.numpy(), y.numpy()[:, ::2, ::2])
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_ignored_pixels_do_not_change_the_loss() -> None:
    s, t, y = rand(2, 3, 4, 4, seed=7), rand(2, 3, 4, 4, seed=8), labels(9, 4)
    loss = IntraClassVariationDistillation(0, num_classes=3)
    base = loss(out(s), out(t), y, IGNORE)
    s2 = s.clone()
    s2[y[:, None].expand_as(s2) == IGNORE] = 1e3  # garbage at ignored pixels only
    assert loss(out(s2), out(t), y, IGNORE).item() == pytest.approx(base.item(), rel=1e-12)
    all_ignored = loss(out(s), out(t), torch.full_like(y, IGNORE), IGNORE)
    assert all_ignored.item() == 0.0


def test_ifvd_is_zero_when_student_equals_teacher_and_infers_k_from_logits() -> None:
    x, y = rand(2, 4, 4, 4, seed=10), labels(11, 4)
    loss = IntraClassVariationDistillation(0)  # K from the student's logits (4 classes in `out`)
    assert "logits" in loss.uses
    assert loss(out(x), out(x.clone()), y, IGNORE).item() == pytest.approx(0.0, abs=1e-14)
    with pytest.raises(ValueError, match="num_classes"):
        loss(SegOutput(logits=None, stages=(x,)), out(x), y, IGNORE)  # type: ignore[arg-type]


def test_ifvd_gradients_reach_student_and_adapter_not_teacher() -> None:
    s = rand(2, 3, 4, 4, seed=12, dtype=torch.float32).requires_grad_(True)
    t = rand(2, 5, 4, 4, seed=13, dtype=torch.float32).requires_grad_(True)
    loss = IntraClassVariationDistillation(0, num_classes=3, student_adapter="conv1x1")
    loss.bind_widths(widths(3), widths(5))
    value = loss(out(s), out(t), labels(14, 4), IGNORE)
    assert value.shape == ()
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0
    assert t.grad is None
