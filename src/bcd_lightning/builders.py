"""Turn a composed config into the objects of a run (datamodule, models, module, trainer)."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from omegaconf import DictConfig, OmegaConf

from bcd_lightning.data import SegDataModule
from bcd_lightning.lit import DistillationModule, LossTerm, SegmentationModule
from bcd_lightning.models import FrozenTeacher, SegModel
from bcd_lightning.utils.config_check import ConfigError


def plain(node: Any) -> Any:
    """A resolved plain container (dict/list/scalars) from an OmegaConf node."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def build_datamodule(cfg: DictConfig) -> SegDataModule:
    return instantiate(cfg.data)


def build_model(node: DictConfig) -> SegModel:
    model = instantiate(node)
    if not isinstance(model, SegModel):
        raise ConfigError(
            f"model config must instantiate bcd_lightning.models.SegModel, got {type(model).__name__}"
        )
    return model


def distill_terms(cfg: DictConfig) -> dict[str, LossTerm]:
    losses = (cfg.get("distill") or {}).get("losses") or {}
    terms = {}
    for name, entry in losses.items():
        unknown = set(entry) - {"loss", "weight"}
        if unknown or "loss" not in entry:
            raise ConfigError(
                f"distill.losses.{name} must have keys 'loss' and optional 'weight'; got {sorted(entry)}"
            )
        terms[str(name)] = LossTerm(loss=instantiate(entry.loss), weight=float(entry.get("weight", 1.0)))
    return terms


def build_teacher(cfg: DictConfig) -> FrozenTeacher:
    if cfg.get("teacher") is None:
        raise ConfigError("distill.losses is not empty but there is no teacher: set teacher=<config>.")
    return FrozenTeacher(build_model(cfg.teacher.model), checkpoint=cfg.teacher.ckpt)


def build_module(cfg: DictConfig, datamodule: SegDataModule) -> SegmentationModule:
    """A DistillationModule when ``distill.losses`` is non-empty, else a plain SegmentationModule."""
    common = dict(
        num_classes=datamodule.num_classes,
        ignore_index=datamodule.ignore_index,
        class_names=datamodule.class_names,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        config=plain(cfg),
    )
    student = build_model(cfg.student)
    terms = distill_terms(cfg)
    if cfg.get("compile"):
        student.compile()  # in place: checkpoint keys keep their names (no `_orig_mod.`)
    if not terms:
        return SegmentationModule(model=student, **common)
    return DistillationModule(
        student=student,
        teacher=build_teacher(cfg),
        losses=terms,
        teacher_min_miou=cfg.get("teacher_min_miou"),
        **common,
    )


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Any]) -> L.Trainer:
    # trainer.enable_progress_bar=false / enable_model_summary=false win over the callbacks group.
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.trainer.get("enable_model_summary") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
