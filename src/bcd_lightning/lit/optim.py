"""Optimizer and learning-rate schedule from config.

The optimizer is any ``torch.optim`` class (or any callable ``params -> Optimizer``) as a Hydra
``_partial_`` target, so ``optimizer._target_=torch.optim.Adam`` needs no code::

    _target_: torch.optim.SGD
    _partial_: true
    lr: 0.02
    momentum: 0.9

The schedule is a :class:`SchedulerConfig` (poly / cosine / onecycle / constant per step, built on
``torch.optim.lr_scheduler``) or, likewise, a ``_partial_`` ``torch.optim.lr_scheduler`` class taking
the optimizer. Both are rebuilt from the config at resume and their ``state_dict`` is in the checkpoint,
so resuming is exact.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import nn

SCHEDULES = ("poly", "cosine", "onecycle", "constant")

#: ``params -> Optimizer``: what ``instantiate`` makes of a ``_partial_`` optimizer config.
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
#: ``optimizer -> LRScheduler``: a ``_partial_`` ``torch.optim.lr_scheduler`` config.
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

#: The optimizer when none is configured (as ``conf/optimizer/sgd.yaml`` but lr 0.01).
DEFAULT_OPTIMIZER: OptimizerFactory = functools.partial(
    torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=False
)


@dataclass
class SchedulerConfig:
    """Per-step schedule over the whole run.

    ``poly``: ``lr·(1 - t/T)^power``; ``cosine``: half cosine to ``min_lr_ratio·lr``; ``onecycle``: torch's
    OneCycleLR (its own warm-up, ``warmup_ratio`` = pct_start); ``constant``. ``warmup_steps`` (or
    ``warmup_ratio`` of the total) ramps linearly from 0 for poly/cosine/constant.
    """

    name: str = "poly"
    power: float = 0.9
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"scheduler.name={self.name!r} is not one of {SCHEDULES}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"scheduler.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


def build_optimizer(
    params: Iterable[nn.Parameter], factory: OptimizerFactory | None = None
) -> torch.optim.Optimizer:
    """``factory`` (a ``_partial_`` torch optimizer) applied to the parameters that require grad."""
    optimizer = (factory or DEFAULT_OPTIMIZER)([p for p in params if p.requires_grad])
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must build a torch.optim.Optimizer (a `_partial_: true` target such as "
            f"torch.optim.SGD), got {type(optimizer).__name__}"
        )
    return optimizer


def check_optimizer(factory: OptimizerFactory | None) -> None:
    """Build the optimizer once on a dummy parameter: a bad value (``lr: -1``) fails before any work."""
    try:
        build_optimizer([nn.Parameter(torch.zeros(1))], factory)
    except (TypeError, ValueError) as err:
        raise ValueError(f"optimizer: {err}") from err


def lr_factor(step: int, total_steps: int, cfg: SchedulerConfig) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) for poly / cosine / constant."""
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if cfg.name == "poly":
        return (1.0 - progress) ** cfg.power
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig | SchedulerFactory, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step schedule: a :class:`SchedulerConfig`, or a ``_partial_`` torch scheduler."""
    if not isinstance(cfg, SchedulerConfig):
        return cfg(optimizer)
    if cfg.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total_steps, 2),
            pct_start=cfg.warmup_ratio or 0.3,
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))


def as_scheduler(
    value: SchedulerConfig | SchedulerFactory | dict[str, Any] | None,
) -> SchedulerConfig | SchedulerFactory:
    """A schedule from a :class:`SchedulerConfig`, its keys, a scheduler factory, or ``None`` (poly)."""
    if value is None:
        return SchedulerConfig()
    if isinstance(value, dict):
        return SchedulerConfig(**value)
    return value


def step_schedule(module: Any, optimizer_cfg: Any, scheduler_cfg: Any) -> OptimizerLRScheduler:
    """``configure_optimizers`` of every task: the optimizer over ``module``'s parameters and its
    schedule, stepped every optimizer step over the trainer's estimated total."""
    optimizer = build_optimizer(module.parameters(), optimizer_cfg)
    scheduler = build_scheduler(optimizer, scheduler_cfg, int(module.trainer.estimated_stepping_batches))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
