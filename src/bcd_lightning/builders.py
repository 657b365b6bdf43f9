"""Turn a composed config into the objects of a run (datamodule, models, module, trainer)."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import DictConfig, OmegaConf

from bcd_lightning.aggregate import method_name
from bcd_lightning.data import SegDataModule
from bcd_lightning.distill.schedules import as_schedule
from bcd_lightning.lit import DistillationModule, LossTerm, SegmentationModule
from bcd_lightning.models import FrozenTeacher, SegModel
from bcd_lightning.teacher_cache import TeacherCache, TeacherCacheConfig, check_deterministic
from bcd_lightning.utils.checkpoint_io import AtomicCheckpointIO
from bcd_lightning.utils.config_check import ConfigError

# `${bcd_method:}` in configs (wandb group/name): the run's distillation method, see method_name.
OmegaConf.register_new_resolver("bcd_method", lambda *, _root_: method_name(_root_), replace=True)


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
        unknown = set(entry) - {"loss", "weight", "schedule"}
        if unknown or "loss" not in entry:
            raise ConfigError(
                f"distill.losses.{name} must have keys 'loss' and optional 'weight', 'schedule'; "
                f"got {sorted(entry)}"
            )
        try:
            schedule = as_schedule(plain(entry.get("schedule")))
        except ValueError as err:
            raise ConfigError(f"distill.losses.{name}.{err}") from err
        terms[str(name)] = LossTerm(
            loss=instantiate(entry.loss), weight=float(entry.get("weight", 1.0)), schedule=schedule
        )
    return terms


def build_teacher(cfg: DictConfig) -> FrozenTeacher:
    if cfg.get("teacher") is None:
        raise ConfigError("distill.losses is not empty but there is no teacher: set teacher=<config>.")
    # Before loading the checkpoint, whose head would otherwise fail with a less telling shape mismatch.
    teacher_classes, student_classes = cfg.teacher.model.get("num_classes"), cfg.student.get("num_classes")
    if teacher_classes is not None and student_classes is not None and teacher_classes != student_classes:
        raise ConfigError(
            f"teacher.model.num_classes={teacher_classes} but student.num_classes={student_classes}: "
            "teacher and student must predict the same classes (distillation compares their outputs)."
        )
    precision = cfg.teacher.get("precision", "32")
    try:
        return FrozenTeacher(build_model(cfg.teacher.model), checkpoint=cfg.teacher.ckpt, precision=precision)
    except ValueError as err:
        if "teacher.precision" in str(err):
            raise ConfigError(str(err)) from err
        raise


def build_teacher_cache(cfg: DictConfig, datamodule: SegDataModule) -> TeacherCache | None:
    """The teacher-output cache of ``teacher.cache`` (``None`` when off); refuses random training data."""
    config = TeacherCacheConfig.from_mapping(plain(cfg.teacher.get("cache")))
    if not config.enabled:
        return None
    check_deterministic(datamodule.train_set)  # fail before any work, not at fit start
    return TeacherCache(config, data_config=plain(cfg.data))


def build_module(cfg: DictConfig, datamodule: SegDataModule) -> SegmentationModule:
    """A DistillationModule when ``distill.losses`` is non-empty, else a plain SegmentationModule."""
    common: dict[str, Any] = dict(
        num_classes=datamodule.num_classes,
        ignore_index=datamodule.ignore_index,
        class_names=datamodule.class_names,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        config=plain(cfg),
        nonfinite=str(cfg.get("nonfinite", "stop")),
    )
    student = build_model(cfg.student)
    terms = distill_terms(cfg)
    if cfg.get("compile"):
        student.compile()  # in place: checkpoint keys keep their names (no `_orig_mod.`)
    teacher = build_teacher(cfg) if terms else None
    cache = build_teacher_cache(cfg, datamodule) if terms else None
    try:  # the modules check the config's values: what they reject is a config mistake, one line
        if not terms:
            return SegmentationModule(model=student, **common)
        assert teacher is not None  # built above whenever there are loss terms
        return DistillationModule(
            student=student,
            teacher=teacher,
            losses=terms,
            teacher_min_miou=cfg.get("teacher_min_miou"),
            teacher_cache=cache,
            **common,
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from err


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
    # The learning-rate schedule spans the whole run, so the run must have an end.
    if cfg.trainer.get("max_epochs") == -1 and cfg.trainer.get("max_steps", -1) in (-1, None):
        raise ConfigError(
            "trainer.max_epochs=-1 (iteration-based training) needs trainer.max_steps > 0: the learning-rate "
            "schedule spans max_steps."
        )
    # Checkpoints are written to a temporary file and renamed: a crash never leaves a truncated one.
    plugins = instantiate(cfg.trainer.get("plugins")) or []
    plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
