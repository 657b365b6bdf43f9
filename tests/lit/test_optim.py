"""Learning-rate schedules against their closed forms."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from bcd_lightning.lit.optim import (
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
    opt = build_optimizer(params, functools.partial(torch.optim.SGD, lr=0.02))
    sched = build_scheduler(opt, SchedulerConfig(name="poly", power=1.0), total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.02, 0.015, 0.01, 0.005])


def test_adamw_and_onecycle_build() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(params, functools.partial(torch.optim.AdamW, lr=1e-3, betas=(0.8, 0.9)))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.9)
    assert isinstance(
        build_scheduler(opt, SchedulerConfig(name="onecycle"), 10), torch.optim.lr_scheduler.OneCycleLR
    )


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SchedulerConfig, {"name": "step"}, "scheduler.name"),
        (SchedulerConfig, {"warmup_ratio": 1.5}, "scheduler.warmup_ratio"),
    ],
)
def test_bad_values_name_the_key(cls, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_any_torch_optimizer_and_scheduler_from_the_config() -> None:
    from hydra.utils import instantiate

    from bcd_lightning.lit.optim import check_optimizer
    from support import compose_config

    overrides = ["paths.output_dir=unused", "optimizer._target_=torch.optim.Adam", "~optimizer.momentum"]
    cfg = compose_config([*overrides, "~optimizer.nesterov", "optimizer.lr=0.125"])
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(params, instantiate(cfg.optimizer))
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 0.125
    step = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    sched = build_scheduler(opt, step, total_steps=10)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.0625
    with pytest.raises(ValueError, match="optimizer: Invalid learning rate"):
        check_optimizer(functools.partial(torch.optim.SGD, lr=-1.0))
    with pytest.raises(ValueError, match=r"must build a torch\.optim\.Optimizer"):
        check_optimizer(lambda params: params)
