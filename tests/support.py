"""Helpers shared by tests (importable as ``support`` through pytest's ``pythonpath``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from hydra import compose, initialize_config_module
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig
from torch.utils.data import DataLoader

#: Tiny data and CSV logging so a run takes seconds.
FAST = (
    "data.train_set.num_samples=16",
    "data.val_set.num_samples=8",
    "data.test_set.num_samples=8",
    "data.train_set.image_size=64",
    "data.val_set.image_size=64",
    "data.test_set.image_size=64",
    "data.batch_size=4",
    "logger=csv",
    "print_config=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
)


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` (scripts are not a package) as a module."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Tiny detection / instance runs: 8 train, 4 val, 4 test images of 64 px, one epoch of 2 batches.
DETECTION_TINY = (
    "detection.data.module.train.num_samples=8",
    "detection.data.module.val.num_samples=4",
    "detection.data.module.test.num_samples=4",
    "detection.data.module.train.image_size=64",
    "detection.data.module.val.image_size=64",
    "detection.data.module.test.image_size=64",
    "detection.data.module.batch_size=4",
    "detection.teacher.model.min_size=64",
    "detection.teacher.model.max_size=64",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
)


#: Tiny torchvision detector settings (64 px, few anchors and RoIs) for unit tests of detection code.
TINY_DETECTOR = dict(
    min_size=64,
    max_size=64,
    anchor_base=16,
    rpn_batch_size_per_image=32,
    rpn_pre_nms_top_n_train=64,
    rpn_post_nms_top_n_train=32,
    box_batch_size_per_image=32,
)


def fake_trainer(tmp_path: Path, dataset: Any, collate_fn: Any = None, **kw: Any) -> SimpleNamespace:
    """The trainer attributes the panel callbacks read: rank zero, epoch 0, a val loader over ``dataset``."""
    defaults = dict(
        sanity_checking=False,
        is_global_zero=True,
        current_epoch=0,
        global_step=0,
        val_dataloaders=DataLoader(dataset, batch_size=2, collate_fn=collate_fn),
        loggers=[],
        default_root_dir=str(tmp_path),
    )
    return SimpleNamespace(**{**defaults, **kw})


class FailingWandb(WandbLogger):
    """A WandbLogger whose every image upload fails (no wandb run at all)."""

    def __init__(self) -> None:
        pass

    def log_image(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("wandb is down")
