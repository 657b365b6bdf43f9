"""Optimizer and learning-rate schedule from plain, validated config values."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine", "onecycle", "constant")


@dataclass
class OptimizerConfig:
    """``name`` in {sgd, adamw}; ``momentum``/``nesterov`` apply to SGD, ``betas`` to AdamW."""

    name: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name={self.name!r} is not one of {OPTIMIZERS}")
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        self.betas = tuple(self.betas)


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


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)


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
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total_steps, 2),
            pct_start=cfg.warmup_ratio or 0.3,
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
