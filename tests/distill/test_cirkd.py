"""CIRKD: hand-computed values, zero at equality, gradients, and DDP (gloo, 2 processes) == global batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from baseline_support import np_kl, np_softmax, np_unit, out, rand, widths
from torch import nn

from bcd_lightning.distill import CrossImageRelationDistillation


def cirkd_reference(s: np.ndarray, t: np.ndarray, tau: float) -> float:
    """Loops over image pairs (i, j) and anchor nodes n: KL of row softmaxes, mean over n, sum / B^2."""
    b, c = s.shape[:2]
    nodes_s = [np.stack([np_unit(v) for v in s[i].reshape(c, -1).T]) for i in range(b)]
    nodes_t = [np.stack([np_unit(v) for v in t[i].reshape(t.shape[1], -1).T]) for i in range(b)]
    total = 0.0
    for i in range(b):
        for j in range(b):
            n = len(nodes_s[i])
            pair = 0.0
            for k in range(n):
                q = np_softmax(nodes_s[j] @ nodes_s[i][k] / tau)
                p = np_softmax(nodes_t[j] @ nodes_t[i][k] / tau)
                pair += np_kl(p, q)
            total += pair / n
    return total / b**2


def test_cirkd_matches_hand_computation() -> None:
    s, t = rand(3, 4, 2, 3, seed=1), rand(3, 6, 2, 3, seed=2)
    loss = CrossImageRelationDistillation(0, tau=0.5)
    loss.bind_widths(widths(4), widths(6))
    value = loss(out(s), out(t), torch.zeros(3, 2, 3, dtype=torch.long))
    assert value.item() == pytest.approx(cirkd_reference(s.numpy(), t.numpy(), 0.5), rel=1e-10)


def test_cirkd_average_pools_nodes_never_max_pools() -> None:
    # The CIRKD reference only ever average-pools; `avg_pool: 2` is a mean over 2x2 blocks.
    s, t = rand(2, 3, 4, 4, seed=3), rand(2, 3, 4, 4, seed=4)
    pooled = [x.numpy().reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5)) for x in (s, t)]
    value = CrossImageRelationDistillation(0, tau=0.1, avg_pool=2)(out(s), out(t), torch.zeros(2, 4, 4))
    assert value.item() == pytest.approx(cirkd_reference(*pooled, 0.1), rel=1e-9)


def test_cirkd_is_zero_when_student_equals_teacher() -> None:
    x = rand(3, 5, 4, 4, seed=5)
    value = CrossImageRelationDistillation(0)(out(x), out(x.clone()), torch.zeros(3, 4, 4))
    assert value.item() == pytest.approx(0.0, abs=1e-12)


def test_cirkd_gradients_reach_student_and_adapter_not_teacher() -> None:
    s = rand(2, 3, 4, 4, seed=6, dtype=torch.float32).requires_grad_(True)
    t = rand(2, 5, 4, 4, seed=7, dtype=torch.float32).requires_grad_(True)
    loss = CrossImageRelationDistillation(0, student_adapter="conv1x1")
    loss.bind_widths(widths(3), widths(5))
    value = loss(out(s), out(t), torch.zeros(2, 4, 4))
    assert value.shape == ()
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0
    assert t.grad is None


# --- DDP equivalence ------------------------------------------------------------------------------------


def _setup(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny 'student' (conv) and a global batch of 4 inputs with fixed teacher features."""
    torch.manual_seed(seed)
    student = nn.Conv2d(2, 3, 3, padding=1).double()
    x = rand(4, 2, 4, 4, seed=20)
    teacher_feat = rand(4, 5, 4, 4, seed=21)
    return student, x, teacher_feat


def _loss_and_grads(student: nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    student.zero_grad()
    loss = CrossImageRelationDistillation(0, tau=0.2, avg_pool=2)(
        out(student(x)), out(t), torch.zeros(len(x))
    )
    loss.backward()
    return loss.item(), [p.grad.clone() for p in student.parameters()]


def _worker(rank: int, store: str, result_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        student, x, t = _setup()
        results = {}
        for name, split in (("equal", [2, 2]), ("unequal", [3, 1])):
            lo = sum(split[:rank])
            sl = slice(lo, lo + split[rank])
            value, grads = _loss_and_grads(student, x[sl], t[sl])
            # What DDP does: average the gradients (and here the logged values) over the ranks.
            for g in grads:
                dist.all_reduce(g)
                g /= 2
            v = torch.tensor([value], dtype=torch.float64)
            dist.all_reduce(v)
            results[name] = (v.item() / 2, grads)
        if rank == 0:
            torch.save(results, Path(result_dir) / "ddp.pt")
    finally:
        dist.destroy_process_group()


def test_cirkd_under_ddp_equals_one_process_on_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = torch.load(tmp_path / "ddp.pt", weights_only=True)
    student, x, t = _setup()
    value, grads = _loss_and_grads(student, x, t)  # one process, global batch of 4, no process group
    assert value > 0
    for name in ("equal", "unequal"):
        ddp_value, ddp_grads = results[name]
        assert ddp_value == pytest.approx(value, rel=1e-10), name
        for g_ddp, g in zip(ddp_grads, grads, strict=True):
            torch.testing.assert_close(g_ddp, g, rtol=1e-9, atol=1e-12)


def test_cirkd_local_batch_only_when_global_batch_is_off() -> None:
    assert not dist.is_initialized()  # identity on one process: the value is the local-batch loss
    s, t = rand(2, 3, 2, 2, seed=30), rand(2, 3, 2, 2, seed=31)
    value = CrossImageRelationDistillation(0, tau=0.5, global_batch=False)(
        out(s), out(t), torch.zeros(2, 2, 2)
    )
    assert value.item() == pytest.approx(cirkd_reference(s.numpy(), t.numpy(), 0.5), rel=1e-10)
