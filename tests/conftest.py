"""Shared fixtures: offline environment and small, fast configs composed from the real conf/."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from support import FAST, compose_config

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``train.yaml`` with fast settings, logs and outputs under ``tmp_path``."""

    def _make(*overrides: str, fast: bool = True, name: str = "run") -> DictConfig:
        base = [f"paths.log_dir={tmp_path / 'logs'}", f"paths.output_dir={tmp_path / name}"]
        return compose_config([*base, *(FAST if fast else ()), *overrides])

    return _make


@pytest.fixture
def teacher_state_file(tmp_path: Path) -> Path:
    """A plain state dict of a randomly initialised default teacher (loads strictly)."""
    import torch

    from bcd_lightning.builders import build_model

    cfg = compose_config(["paths.output_dir=unused"])
    path = tmp_path / "teacher_state.pt"
    torch.manual_seed(0)
    torch.save(build_model(cfg.teacher.model).state_dict(), path)
    return path
