"""Learning-rate schedules against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from bcd_lightning.lit.optim import (
    OptimizerConfig,
    SchedulerConfig,
    build_optimizer,
    build_scheduler,
    lr_factor,
)


def test_poly_closed_form() -> None:
    cfg = SchedulerConfig(name="poly", power=0.9)
    assert lr_factor(0, 100, cfg) == 1.0
    assert lr_factor(50, 100, cfg) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100, cfg) == 0.0


def test_warmup_then_cosine() -> None:
    cfg = SchedulerConfig(name="cosine", warmup_steps=10)
    assert lr_factor(0, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_scheduler_drives_optimizer_lr() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(params, OptimizerConfig(name="sgd", lr=0.02))
    sched = build_scheduler(opt, SchedulerConfig(name="poly", power=1.0), total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.02, 0.015, 0.01, 0.005])


def test_adamw_and_onecycle_build() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(params, OptimizerConfig(name="adamw", lr=1e-3, betas=[0.8, 0.9]))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.9)
    assert isinstance(
        build_scheduler(opt, SchedulerConfig(name="onecycle"), 10), torch.optim.lr_scheduler.OneCycleLR
    )


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (OptimizerConfig, {"name": "adam"}, "optimizer.name"),
        (OptimizerConfig, {"lr": 0.0}, "optimizer.lr"),
        (SchedulerConfig, {"name": "step"}, "scheduler.name"),
        (SchedulerConfig, {"warmup_ratio": 1.5}, "scheduler.warmup_ratio"),
    ],
)
def test_bad_values_name_the_key(cls, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
