"""The BCD tensor functions against hand-made cases and independent reference formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from bcd_lightning.distill.functional import (
    auto_chunk_size,
    boundary_distillation,
    boundary_map,
    boundary_weighted_kd,
    cosine_relation_mse,
    cosine_relation_mse_naive,
    fused_boundary_map,
    pixel_kd,
    self_relation_kl,
    self_relation_kl_naive,
)

# ------------------------------------------------------------------------------------------- helpers


def interface_feature(h: int = 6, w: int = 8, col: int = 4, channels: int = 4) -> torch.Tensor:
    """Two regions with orthogonal features of different norms; vertical interface left of ``col``."""
    x = torch.zeros(1, channels, h, w)
    x[0, 0, :, :col] = 2.5
    x[0, 1, :, col:] = 0.7
    return x


def loop_boundary_map(x: torch.Tensor, d: int = 1) -> torch.Tensor:
    """Definition of the boundary map, pixel by pixel, with border coordinates clamped (= replicate)."""
    b, _, h, w = x.shape
    f = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
    out = torch.zeros(b, h, w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            total = torch.zeros(b, dtype=x.dtype)
            for dy in (-d, 0, d):
                for dx in (-d, 0, d):
                    if dy == dx == 0:
                        continue
                    ii, jj = min(max(i + dy, 0), h - 1), min(max(j + dx, 0), w - 1)
                    total += (f[:, :, i, j] * f[:, :, ii, jj]).sum(1).clamp_min(0)
            out[:, i, j] = 1 - total / 8
    return out


def block_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Average pooling by k for sizes divisible by k, written with reshapes (independent of F.avg_pool2d)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // k, k, w // k, k).mean((3, 5))


def nodes(x: torch.Tensor) -> list[torch.Tensor]:
    """Per image ``[N, C]`` unit-norm nodes."""
    return [xi.flatten(1).T / xi.flatten(1).T.norm(dim=1, keepdim=True) for xi in x]


def reference_relation_kl(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """τ² · mean over images and rows of KL(R^T_i ‖ R^S_i), one row at a time, from the definition."""
    per_image = []
    for si, ti in zip(nodes(s), nodes(t), strict=True):
        rows = []
        for i in range(si.shape[0]):
            q = torch.exp(si[i] @ si.T / tau)
            q = q / q.sum()
            p = torch.exp(ti[i] @ ti.T / tau)
            p = p / p.sum()
            rows.append((p * torch.log(p / q)).sum())
        per_image.append(torch.stack(rows).mean())
    return tau**2 * torch.stack(per_image).mean()


def reference_cosine_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    per_image = [((a @ a.T) - (b @ b.T)).pow(2).mean() for a, b in zip(nodes(s), nodes(t), strict=True)]
    return torch.stack(per_image).mean()


def randn(*shape: int, dtype: torch.dtype = torch.float32, grad: bool = False, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)


# ------------------------------------------------------------------------------------------- boundary map


@pytest.mark.parametrize("dilation", [1, 2])
def test_boundary_map_straight_interface_is_three_eighths(dilation: int) -> None:
    b = boundary_map(interface_feature(), dilation)
    expected = torch.zeros(1, 6, 8)
    # Pixels within `dilation` columns of the interface see 3 of their 8 neighbours across it.
    expected[..., 4 - dilation : 4 + dilation] = 3 / 8
    assert_close(b, expected, atol=1e-6, rtol=0)


def test_boundary_map_isolated_pixel_is_one() -> None:
    x = torch.zeros(1, 3, 7, 7)
    x[0, 0] = 1.0
    x[0, :, 3, 3] = torch.tensor([0.0, 2.0, 0.0])
    expected = torch.zeros(1, 7, 7)
    expected[0, 2:5, 2:5] = 1 / 8  # each neighbour has one orthogonal neighbour: the isolated pixel
    expected[0, 3, 3] = 1.0
    assert_close(boundary_map(x), expected, atol=1e-6, rtol=0)


def test_boundary_map_independent_of_channel_count_and_scale() -> None:
    x = randn(2, 5, 9, 7)
    padded = torch.cat([x, torch.zeros(2, 11, 9, 7)], dim=1)
    scaled = x * torch.rand(2, 1, 9, 7).add(0.5)  # positive per-pixel scale
    assert_close(boundary_map(padded), boundary_map(x))
    assert_close(boundary_map(scaled), boundary_map(x))


@pytest.mark.parametrize(("shape", "dilation"), [((2, 3, 5, 6), 1), ((1, 4, 7, 5), 2), ((1, 2, 3, 4), 3)])
def test_boundary_map_matches_pixel_loop_definition(shape: tuple[int, ...], dilation: int) -> None:
    x = randn(*shape, dtype=torch.float64)
    assert_close(boundary_map(x, dilation), loop_boundary_map(x, dilation))


def test_boundary_map_range_and_dtype() -> None:
    b = boundary_map(randn(2, 8, 10, 12).to(torch.bfloat16))
    assert b.shape == (2, 10, 12) and b.dtype == torch.float32
    assert b.min() >= 0 and b.max() <= 1


def test_boundary_map_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="dilation"):
        boundary_map(randn(1, 2, 4, 4), dilation=0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        boundary_map(randn(2, 4, 4))


# ------------------------------------------------------------------------------------------- boundary losses


def uniform_feature(h: int = 6, w: int = 8) -> torch.Tensor:
    x = torch.zeros(1, 4, h, w)
    x[0, 2] = 1.0
    return x


def test_boundary_distillation_mse_and_l1_values() -> None:
    s, t = interface_feature(), uniform_feature()  # b^S = 3/8 on 2 of 8 columns, b^T = 0
    assert_close(boundary_distillation([s], [t]), torch.tensor((3 / 8) ** 2 * 2 / 8))
    assert_close(boundary_distillation([s], [t], variant="l1"), torch.tensor(3 / 8 * 2 / 8))


def test_boundary_distillation_kl_value() -> None:
    tau, h, w = 0.1, 6, 8
    s, t = interface_feature(h, w), uniform_feature(h, w)
    # p^T is uniform over M pixels; q^S puts e^{(3/8)/τ} on the k interface pixels, 1 elsewhere.
    m, k, a = h * w, 2 * h, 3 / 8 / tau
    z = k * math.exp(a) + (m - k)
    expected = tau**2 * (math.log(z) - math.log(m) - k * a / m)
    assert_close(
        boundary_distillation([s], [t], variant="kl", tau=tau), torch.tensor(expected, dtype=torch.float32)
    )


def test_boundary_distillation_resizes_student_map_to_teacher() -> None:
    s = interface_feature(h=4, w=16, col=8)  # b^S = 3/8 at columns 7 and 8 of 16
    t = uniform_feature(h=2, w=8)
    # Bilinear halving averages column pairs (6, 7) and (8, 9): 3/16 at columns 3 and 4 of 8.
    assert_close(boundary_distillation([s], [t]), torch.tensor(2 * (3 / 16) ** 2 / 8))


def test_boundary_distillation_stage_weights() -> None:
    s, t = interface_feature(), uniform_feature()
    one = boundary_distillation([s], [t])
    assert_close(boundary_distillation([s, t], [t, t]), one / 2)  # default: mean over stages
    assert_close(boundary_distillation([s, t], [t, t], stage_weights=[3.0, 1.0]), 3 * one)
    with pytest.raises(ValueError, match="stage_weights"):
        boundary_distillation([s, t], [t, t], stage_weights=[1.0])
    with pytest.raises(ValueError, match="variant"):
        boundary_distillation([s], [t], variant="l2")


def test_fused_boundary_map_averages_resized_maps() -> None:
    fused = fused_boundary_map([interface_feature(h=8, w=8), uniform_feature(h=4, w=4)], size=(8, 8))
    expected = torch.zeros(1, 8, 8)
    expected[..., 3:5] = 3 / 16
    assert_close(fused, expected, atol=1e-6, rtol=0)
    assert_close(fused_boundary_map([boundary_map(interface_feature(h=8, w=8))], (8, 8)), 2 * expected)


def test_boundary_weighted_kd_uniform_weight_is_pixel_kd() -> None:
    s, t = randn(2, 5, 6, 7, seed=1), randn(2, 5, 6, 7, seed=2)
    valid = torch.rand(2, 6, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    for weight in (torch.ones(2, 6, 7), torch.full((2, 3, 4), 0.2)):  # a constant weight cancels out
        assert_close(boundary_weighted_kd(s, t, weight, 2.0, valid), pixel_kd(s, t, 2.0, valid))


def test_boundary_weighted_kd_one_hot_weight_is_that_pixels_kl() -> None:
    tau = 2.0
    s, t = randn(1, 3, 4, 4, seed=4), randn(1, 3, 4, 4, seed=5)
    w = torch.zeros(1, 4, 4)
    w[0, 1, 2] = 0.3
    p = torch.softmax(t[0, :, 1, 2] / tau, 0)
    q = torch.softmax(s[0, :, 1, 2] / tau, 0)
    assert_close(boundary_weighted_kd(s, t, w, tau), tau**2 * (p * (p / q).log()).sum())


def test_boundary_weighted_kd_ignored_pixels_contribute_nothing() -> None:
    s, t = randn(2, 4, 8, 8, seed=6), randn(2, 4, 8, 8, seed=7)
    w = torch.rand(2, 8, 8)
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[:, :3] = False
    base = boundary_weighted_kd(s, t, w, 1.0, valid)
    s2 = s.clone()
    s2[:, :, :3] = torch.randn(2, 4, 3, 8) * 50
    s2[0, 0, 0, 0] = float("inf")
    assert_close(boundary_weighted_kd(s2, t, w, 1.0, valid), base)
    none_valid = boundary_weighted_kd(s, t, w, 1.0, torch.zeros_like(valid))
    assert none_valid.item() == 0.0


# ------------------------------------------------------------------------------------------- relations

RELATION_CASES = [
    # (student shape, teacher shape, pool, chunk_size)
    ((2, 5, 6, 7), (2, 7, 6, 7), 1, 5),  # N = 42, chunk does not divide N
    ((2, 5, 8, 8), (2, 3, 8, 8), 1, 64),  # one chunk
    ((1, 4, 9, 9), (1, 6, 9, 9), 1, 7),
    ((2, 5, 12, 8), (2, 7, 12, 8), 2, 5),  # pooled: N = 24
    ((2, 5, 7, 7), (2, 7, 7, 7), 3, 4),  # pooled with partial windows: N = 9
    ((2, 5, 16, 16), (2, 7, 8, 8), 1, None),  # student resized to the teacher grid
]


@pytest.mark.parametrize(("s_shape", "t_shape", "pool", "chunk"), RELATION_CASES)
def test_self_relation_kl_equals_naive(s_shape, t_shape, pool, chunk) -> None:
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        s = randn(*s_shape, dtype=dtype, grad=True, seed=11)
        t = randn(*t_shape, dtype=dtype, seed=12)
        chunked = self_relation_kl(s, t, tau=0.5, pool=pool, chunk_size=chunk)
        (g_chunked,) = torch.autograd.grad(chunked, s)
        naive = self_relation_kl_naive(s, t, tau=0.5, pool=pool)
        (g_naive,) = torch.autograd.grad(naive, s)
        assert_close(chunked, naive, rtol=tol, atol=0)
        # Gradients: elementwise rtol, with an atol tied to their scale for near-zero entries.
        assert_close(g_chunked, g_naive, rtol=tol, atol=tol * g_naive.abs().max().item())


@pytest.mark.parametrize("tau", [0.01, 4.0])
def test_self_relation_kl_equals_naive_at_extreme_temperatures(tau: float) -> None:
    # τ < 1/64 takes the max-shifted path; large τ makes the rows nearly uniform.
    s = randn(2, 6, 5, 7, dtype=torch.float64, grad=True, seed=19)
    t = randn(2, 4, 5, 7, dtype=torch.float64, seed=20)
    chunked = self_relation_kl(s, t, tau=tau, chunk_size=6)
    (g_chunked,) = torch.autograd.grad(chunked, s)
    naive = self_relation_kl_naive(s, t, tau=tau)
    (g_naive,) = torch.autograd.grad(naive, s)
    assert torch.isfinite(chunked) and chunked > 0
    assert_close(chunked, naive, rtol=1e-10, atol=0)
    assert_close(g_chunked, g_naive, rtol=1e-8, atol=1e-10 * g_naive.abs().max().item())
    s32 = s.detach().float().requires_grad_(True)
    assert torch.isfinite(self_relation_kl(s32, t.float(), tau=tau, chunk_size=6))


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_self_relation_kl_matches_definition(tau: float) -> None:
    s = randn(2, 3, 8, 4, dtype=torch.float64, seed=13)
    t = randn(2, 5, 8, 4, dtype=torch.float64, seed=14)
    expected = reference_relation_kl(block_mean(s, 2), block_mean(t, 2), tau)
    assert_close(self_relation_kl(s, t, tau=tau, pool=2, chunk_size=3), expected)
    # Different widths and sizes, no adapter: the student is pooled onto the teacher's 4x2 grid.
    expected = reference_relation_kl(block_mean(s, 2), t[..., ::2, ::2], tau)
    assert_close(self_relation_kl(s, t[..., ::2, ::2], tau=tau), expected)


@pytest.mark.parametrize(("s_shape", "t_shape", "pool", "chunk"), RELATION_CASES)
def test_cosine_relation_mse_equals_naive(s_shape, t_shape, pool, chunk) -> None:
    s = randn(*s_shape, dtype=torch.float64, grad=True, seed=15)
    t = randn(*t_shape, dtype=torch.float64, seed=16)
    gram = cosine_relation_mse(s, t, pool=pool)
    (g_gram,) = torch.autograd.grad(gram, s)
    naive = cosine_relation_mse_naive(s, t, pool=pool)
    (g_naive,) = torch.autograd.grad(naive, s)
    assert_close(gram, naive, rtol=1e-10, atol=0)
    assert_close(g_gram, g_naive, rtol=1e-10, atol=1e-10 * g_naive.abs().max().item())
    s32, t32 = s.detach().float(), t.float()
    assert_close(cosine_relation_mse(s32, t32, pool=pool), naive.float(), rtol=1e-5, atol=1e-7)


def test_cosine_relation_mse_matches_definition() -> None:
    s = randn(2, 3, 4, 6, dtype=torch.float64, seed=17)
    t = randn(2, 9, 4, 6, dtype=torch.float64, seed=18)
    assert_close(cosine_relation_mse(s, t), reference_cosine_mse(s, t))


def test_relation_losses_validate_options() -> None:
    s = randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="tau"):
        self_relation_kl(s, s, tau=0)
    with pytest.raises(ValueError, match="chunk_size"):
        self_relation_kl(s, s, chunk_size=0)
    with pytest.raises(ValueError, match="pool"):
        cosine_relation_mse(s, s, pool=0)
    with pytest.raises(ValueError, match="batch"):
        self_relation_kl(s, randn(2, 2, 4, 4))


def test_chunked_relation_never_allocates_an_n_by_n_tensor() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor):
                    self.largest = max(self.largest, o.numel())
            return out

    n = 20 * 20
    s, t = randn(1, 8, 20, 20, grad=True), randn(1, 8, 20, 20)
    with LargestOutput() as chunked:
        self_relation_kl(s, t, chunk_size=10).backward()
    with LargestOutput() as naive:
        self_relation_kl_naive(s, t).backward()
    assert naive.largest >= n * n  # the probe sees full matrices when they exist
    assert chunked.largest <= 4 * 10 * n < n * n  # four [B, chunk, N] work blocks, allocated together


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize(("batch", "nodes", "channels"), [(2, 64 * 128, 256), (8, 128 * 128, 16), (1, 50, 8)])
def test_auto_chunk_size_bounds_the_work_block(device: str, batch: int, nodes: int, channels: int) -> None:
    rows = auto_chunk_size(batch, nodes, channels, device)
    assert 1 <= rows <= nodes
    assert batch * rows * nodes <= 4 * 2**20  # 16 MiB of fp32 per block, four blocks


# ------------------------------------------------------------------------------------------- all losses


def all_losses() -> dict[str, object]:
    return {
        "boundary_mse": lambda s, t: boundary_distillation(s, t),
        "boundary_l1": lambda s, t: boundary_distillation(s, t, variant="l1"),
        "boundary_kl": lambda s, t: boundary_distillation(s, t, variant="kl"),
        "bkd": lambda s, t: boundary_weighted_kd(s[0], t[0], boundary_map(t[1]), 2.0),
        "relation_kl": lambda s, t: self_relation_kl(s[0], t[0], chunk_size=7),
        "relation_mse": lambda s, t: cosine_relation_mse(s[0], t[0]),
    }


@pytest.mark.parametrize("name", list(all_losses()))
def test_zero_when_equal_positive_otherwise_student_gradient_only(name: str) -> None:
    loss = all_losses()[name]
    feats = [randn(2, 6, 8, 8, seed=21), randn(2, 6, 4, 4, seed=22)]
    s = [f.clone().requires_grad_(True) for f in feats]
    t = [f.clone().requires_grad_(True) for f in feats]  # a teacher that (wrongly) tracks gradients
    assert loss(s, t).abs().item() <= 1e-6
    s2 = [randn(2, 6, 8, 8, grad=True, seed=23), randn(2, 6, 4, 4, grad=True, seed=24)]
    value = loss(s2, t)
    assert value.item() > 1e-4
    value.backward()
    assert all(ti.grad is None for ti in t)
    assert s2[0].grad is not None and s2[0].grad.abs().sum() > 0 and torch.isfinite(s2[0].grad).all()


@pytest.mark.parametrize("name", list(all_losses()))
def test_bf16_autocast_is_finite_and_close_to_fp32(name: str) -> None:
    loss = all_losses()[name]
    s = [randn(2, 6, 8, 8, seed=31), randn(2, 6, 4, 4, seed=32)]
    t = [randn(2, 6, 8, 8, seed=33), randn(2, 6, 4, 4, seed=34)]
    reference = loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Features as a bf16 network would produce them.
        low = loss([x.bfloat16().requires_grad_(True) for x in s], [x.bfloat16() for x in t])
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert_close(low, reference, rtol=5e-2, atol=1e-4)


def test_relation_kl_under_autocast_stays_fp32() -> None:
    s, t = randn(2, 6, 8, 8, seed=41), randn(2, 6, 8, 8, seed=42)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = self_relation_kl(s, t)
        ref = self_relation_kl_naive(s, t)
    assert_close(value, self_relation_kl(s, t))  # fp32 inputs: autocast must not lower the matmuls
    assert_close(ref, self_relation_kl_naive(s, t))
