"""SKD pairwise similarity: hand-computed values, pooling, exact (Gram) mode == naive, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from baseline_support import np_unit, out, rand, widths
from torch.testing import assert_close

import bcd_lightning.distill.baseline_functional as bf
from bcd_lightning.distill import PairwiseSimilarityDistillation
from bcd_lightning.distill.baseline_functional import max_pool_nodes, pairwise_similarity_mse


def np_max_pool(x: np.ndarray, k: int) -> np.ndarray:
    """[C, H, W] max over k x k windows, partial windows at the border kept (ceil)."""
    c, h, w = x.shape
    hh, ww = -(-h // k), -(-w // k)
    y = np.empty((c, hh, ww))
    for i in range(hh):
        for j in range(ww):
            y[:, i, j] = x[:, i * k : (i + 1) * k, j * k : (j + 1) * k].max(axis=(1, 2))
    return y


def skd_reference(s: np.ndarray, t: np.ndarray, k: int) -> float:
    """Loops over images and node pairs: mean over (b, i, j) of (cos_S(i, j) - cos_T(i, j))^2."""
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        ns = np_max_pool(s[b], k).reshape(s.shape[1], -1).T if k > 1 else s[b].reshape(s.shape[1], -1).T
        nt = np_max_pool(t[b], k).reshape(t.shape[1], -1).T if k > 1 else t[b].reshape(t.shape[1], -1).T
        for i in range(len(ns)):
            for j in range(len(ns)):
                a_s = np_unit(ns[i]) @ np_unit(ns[j])
                a_t = np_unit(nt[i]) @ np_unit(nt[j])
                total += (a_s - a_t) ** 2
                count += 1
    return total / count


@pytest.mark.parametrize(("size", "pool"), [(4, 2), (5, 2), (3, 1)])
def test_skd_matches_hand_computation_with_different_widths(size: int, pool: int) -> None:
    s, t = rand(2, 3, size, size, seed=1), rand(2, 5, size, size, seed=2)
    loss = PairwiseSimilarityDistillation(0, pool=pool if pool > 1 else None)
    loss.bind_widths(widths(3), widths(5))  # channel-free: no adapter needed
    value = loss(out(s), out(t), torch.zeros(2, size, size, dtype=torch.long))
    assert value.item() == pytest.approx(skd_reference(s.numpy(), t.numpy(), pool), rel=1e-10)


def test_grid_pooling_is_adaptive_max() -> None:
    x = rand(1, 2, 4, 6, seed=3)
    # A 2x3 grid on 4x6 is 2x2 windows: the same as pool=2.
    assert_close(max_pool_nodes(x, grid=(2, 3)), torch.from_numpy(np_max_pool(x.numpy()[0], 2))[None])
    with pytest.raises(ValueError, match="not both"):
        PairwiseSimilarityDistillation(0, pool=2, grid=[2, 2])
    with pytest.raises(ValueError, match="grid"):
        PairwiseSimilarityDistillation(0, pool=None, grid=[2])


def test_skd_is_zero_when_student_equals_teacher() -> None:
    x = rand(2, 4, 6, 6, seed=4)
    for pool in (2, None):
        loss = PairwiseSimilarityDistillation(0, pool=pool)
        assert loss(out(x), out(x.clone()), torch.zeros(2, 6, 6, dtype=torch.long)).item() == pytest.approx(
            0.0, abs=1e-12
        )


def test_exact_gram_mode_equals_naive_value_and_gradient() -> None:
    s0, t = rand(2, 6, 16, 16, seed=5), rand(2, 9, 16, 16, seed=6)  # N = 256 nodes
    grads = {}
    values = {}
    for method in ("naive", "gram"):
        s = s0.clone().requires_grad_(True)
        values[method] = pairwise_similarity_mse(s, t, method)
        values[method].backward()
        grads[method] = s.grad
    assert_close(values["gram"], values["naive"], rtol=1e-10, atol=1e-14)
    assert_close(grads["gram"], grads["naive"], rtol=1e-8, atol=1e-14)
    # fp32 too (Gram sums are added in float64 against cancellation).
    s32, t32 = s0.float(), t.float()
    assert_close(
        pairwise_similarity_mse(s32, t32, "gram"),
        pairwise_similarity_mse(s32, t32, "naive"),
        rtol=1e-5,
        atol=1e-7,
    )


def test_exact_mode_never_builds_the_pairwise_matrix_for_large_n(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise AssertionError("the N x N path was taken")

    monkeypatch.setattr(bf, "_similarity_mse_naive", boom)
    s, t = rand(1, 8, 64, 64, seed=7, dtype=torch.float32), rand(1, 16, 64, 64, seed=8, dtype=torch.float32)
    loss = PairwiseSimilarityDistillation(0, pool=None)  # N = 4096: auto picks the Gram form
    value = loss(out(s), out(t), torch.zeros(1, 64, 64, dtype=torch.long))
    assert torch.isfinite(value) and value > 0


def test_skd_gradients_reach_student_and_adapter_not_teacher() -> None:
    s = rand(2, 3, 4, 4, seed=9, dtype=torch.float32).requires_grad_(True)
    t = rand(2, 5, 4, 4, seed=10, dtype=torch.float32).requires_grad_(True)
    loss = PairwiseSimilarityDistillation(0, pool=2, student_adapter="conv1x1")
    loss.bind_widths(widths(3), widths(5))
    value = loss(out(s), out(t), torch.zeros(2, 4, 4, dtype=torch.long))
    assert value.shape == ()
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0
    assert t.grad is None


def test_preset_path_decoder_average_pooled_then_2x2_max_grid() -> None:
    """The skd preset: decoder feature average-pooled 8x8 (stride 8), then adaptive max to 2x2 nodes."""
    from bcd_lightning.models.outputs import SegOutput

    s, t = rand(1, 3, 16, 16, seed=30), rand(1, 5, 16, 16, seed=31)
    loss = PairwiseSimilarityDistillation("decoder", pool=None, grid=[2, 2], avg_pool=8)
    value = loss(SegOutput(logits=s[:, :1], decoder=s), SegOutput(logits=t[:, :1], decoder=t), s[:, 0])
    # numpy: 8x8 block means give a 2x2 map; the 2x2 max grid over a 2x2 map is the identity.
    nodes = [
        x.numpy()[0].reshape(x.shape[1], 2, 8, 2, 8).mean(axis=(2, 4)).reshape(x.shape[1], -1).T
        for x in (s, t)
    ]
    unit = [n / np.linalg.norm(n, axis=1, keepdims=True) for n in nodes]
    a_s, a_t = unit[0] @ unit[0].T, unit[1] @ unit[1].T
    assert value.item() == pytest.approx(((a_s - a_t) ** 2).mean(), rel=1e-10)
