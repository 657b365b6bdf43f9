"""``bcd-train``: compose the config, build the run, fit, test. Hydra overrides, ``-m`` and ``--help`` work."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from bcd_lightning import builders
from bcd_lightning.aggregate import method_name, write_run_record
from bcd_lightning.callbacks.logger_history import (
    LoggerHistory,
    prepare_resume,
    read_csv_history,
    restore_csv,
    saved_history,
)
from bcd_lightning.callbacks.step_timer import MEDIAN_KEY, batch_geometry
from bcd_lightning.data.verify import verify_datasets
from bcd_lightning.utils.config_check import ConfigError, check_config
from bcd_lightning.utils.errors import exit_if_failed, failure_record, friendly_errors, hydra_task
from bcd_lightning.utils.logs import get_logger
from bcd_lightning.utils.overrides import precheck_overrides
from bcd_lightning.utils.resume import LIGHTNING_NAMES, check_checkpoint_matches, resolve_ckpt_path
from bcd_lightning.utils.run_dir import atomic_copy, check_run_dir_overrides, save_and_print_config

log = get_logger(__name__)


def output_dir_of(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir).resolve()
    except Exception as err:
        raise ConfigError(
            "paths.output_dir could not be resolved: set it explicitly when composing the config "
            f"outside the bcd-train command ({err})."
        ) from err


def _log_dir(cfg: DictConfig) -> Path | None:
    try:
        return Path(cfg.paths.log_dir)
    except Exception:  # only used for a hint in an error message
        return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) one run; returns the final metrics and the best checkpoint path."""
    check_config(cfg)
    output_dir = output_dir_of(cfg)
    # Before any work: a missing, empty or corrupt checkpoint fails now, in one line.
    ckpt_path = resolve_ckpt_path(
        cfg.get("ckpt_path"), output_dir, cfg.get("auto_resume", False), _log_dir(cfg)
    )
    save_and_print_config(cfg, output_dir, print_tree=cfg.get("print_config", True))
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
        # Lightning's DDP launchers reset torch's thread count from OMP_NUM_THREADS: keep ``threads``.
        os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)

    datamodule = builders.build_datamodule(cfg)
    if getattr(datamodule, "verify", False) and cfg.get("train", True):
        splits = [("train", datamodule.train_set), ("val", datamodule.val_set), ("test", datamodule.test_set)]
        progress = cfg.trainer.get("enable_progress_bar", True) is not False
        verify_datasets(splits, progress=progress, num_workers=datamodule.num_workers)
    module = builders.build_module(cfg, datamodule)
    if ckpt_path and ckpt_path not in LIGHTNING_NAMES:
        check_checkpoint_matches(ckpt_path, module)
        log.info("Resuming from %s", ckpt_path)
    # History-preserving resume: the checkpoint says how far each logger's history had got.
    resumed = saved_history(ckpt_path) if ckpt_path not in LIGHTNING_NAMES else None
    if resumed is not None:
        prepare_resume(cfg, *resumed)
    callbacks = [*builders.build_callbacks(cfg), LoggerHistory()]
    loggers = builders.build_loggers(cfg)
    if resumed is not None and getattr(rank_zero_only, "rank", 0) == 0:
        restore_csv(loggers, read_csv_history(loggers, resumed[0]))
    trainer = builders.build_trainer(cfg, callbacks, loggers)
    try:
        best, metrics = fit_test_export(cfg, trainer, module, datamodule, ckpt_path)
        metrics.update(run_summary(cfg, trainer, best))
        if trainer.is_global_zero:
            write_run_record(output_dir, run_record(cfg, metrics, best))
            _summarize_wandb(trainer, metrics)
    finally:
        _finish_wandb()
    metrics["best_model_path"] = best
    metrics["output_dir"] = str(output_dir)
    return metrics


def fit_test_export(
    cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, datamodule: Any, ckpt_path: str | None
) -> tuple[str, dict[str, Any]]:
    """``train`` / ``test`` / ``export_best_to`` of a run, for every task: the best checkpoint's path and
    the final metrics (the test split scored with the best checkpoint's weights)."""
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) else ""
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", True):
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.get("export_best_to") and trainer.is_global_zero:
        if not best:
            raise ConfigError("export_best_to is set but no best checkpoint was saved (is validation on?)")
        atomic_copy(Path(best), Path(cfg.export_best_to))
        log.info("Best checkpoint exported to %s", cfg.export_best_to)
    return best, metrics


def run_summary(cfg: DictConfig, trainer: L.Trainer, best: str) -> dict[str, float]:
    """Best monitored score (``<monitor>_best``, e.g. ``val/mIoU_best``) and the batch geometry."""
    summary: dict[str, float] = {}
    ckpt = trainer.checkpoint_callback
    monitor = ckpt.monitor if isinstance(ckpt, ModelCheckpoint) else None
    if isinstance(ckpt, ModelCheckpoint) and monitor:
        score = ckpt.best_model_score
        if score is None and best:  # ddp_spawn: the score stays in the worker, the checkpoint has it
            score = _best_score_in_checkpoint(Path(best))
        if score is not None:
            summary[f"{monitor}_best"] = float(score)
    per_device = (cfg.get("data") or {}).get("batch_size")
    if per_device is not None:
        summary.update({f"batch/{k}": v for k, v in batch_geometry(trainer, per_device).items()})
    return summary


def _best_score_in_checkpoint(path: Path) -> float | None:
    state = torch.load(path, map_location="cpu", weights_only=True).get("callbacks", {})
    scores = [v.get("best_model_score") for k, v in state.items() if k.startswith("ModelCheckpoint")]
    return next((float(s) for s in scores if s is not None), None)


def run_record(cfg: DictConfig, metrics: dict[str, Any], best: str) -> dict[str, Any]:
    """The content of ``metrics.json``: who the run is (method, seed, task) and its final numbers."""
    return {
        "method": method_name(cfg),
        "seed": int(cfg.seed),
        "task_name": str(cfg.task_name),
        "overrides": _hydra_overrides(),
        "status": "completed",
        "best_model_path": best,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
    }


def record_failure(cfg: DictConfig, err: BaseException) -> None:
    """A failed job's ``metrics.json``: who it was (as far as the config says) and the error."""
    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    identity: dict[str, Any] = {"overrides": _hydra_overrides(), "metrics": {}}
    for key, value in (("method", lambda: method_name(cfg)), ("seed", lambda: int(cfg.seed))):
        try:
            identity[key] = value()
        except Exception:  # a broken config is what failed: record what can be read
            identity[key] = None
    identity["task_name"] = str(cfg.get("task_name"))
    write_run_record(output_dir_of(cfg), {**identity, **failure_record(err)})


def _hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _summarize_wandb(trainer: L.Trainer, metrics: dict[str, Any]) -> None:
    """Best / final numbers into the wandb run summary (only where the run lives in this process)."""
    for logger in trainer.loggers:
        # `_experiment` is None where the run lives in a worker (ddp_spawn): don't start a second run here.
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            keys = ("_best", "test/", "batch/", MEDIAN_KEY)
            logger.experiment.summary.update({k: v for k, v in metrics.items() if any(s in k for s in keys)})


def _finish_wandb() -> None:
    """Close the wandb run so the next job of a multirun gets its own run."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@hydra_task(record=record_failure)
def hydra_main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # The value Hydra sweepers (Optuna) optimise: `optimized_metric` (e.g. val/mIoU_best) when set.
    name = cfg.get("optimized_metric")
    if name is None:
        return metrics.get("val/mIoU")
    if name not in metrics:
        available = sorted(k for k, v in metrics.items() if isinstance(v, float))
        raise ConfigError(f"optimized_metric={name!r} was not logged by this run. Available: {available}")
    return metrics[name]


def main() -> None:
    """``bcd-train``: a typo in a key or group option fails in one line (with the valid ones) first."""
    friendly_errors(precheck_overrides)("train", sys.argv[1:])
    friendly_errors(check_run_dir_overrides)(sys.argv[1:])
    hydra_main()
    exit_if_failed()  # a failed job never ends a sweep, but the command says so at the end


if __name__ == "__main__":
    main()
