"""``bcd-train``: compose the config, build the run, fit, test. Hydra overrides, ``-m`` and ``--help`` work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from bcd_lightning import builders
from bcd_lightning.utils.config_check import ConfigError, check_config
from bcd_lightning.utils.errors import friendly_errors
from bcd_lightning.utils.run_dir import atomic_copy, save_and_print_config


def output_dir_of(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir).resolve()
    except Exception as err:
        raise ConfigError(
            "paths.output_dir could not be resolved: set it explicitly when composing the config "
            f"outside the bcd-train command ({err})."
        ) from err


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) one run; returns the final metrics and the best checkpoint path."""
    check_config(cfg)
    output_dir = output_dir_of(cfg)
    save_and_print_config(cfg, output_dir, print_tree=cfg.get("print_config", True))
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)

    datamodule = builders.build_datamodule(cfg)
    module = builders.build_module(cfg, datamodule)
    callbacks = builders.build_callbacks(cfg)
    loggers = builders.build_loggers(cfg)
    trainer = builders.build_trainer(cfg, callbacks, loggers)
    try:
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test", True):
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if cfg.get("export_best_to") and trainer.is_global_zero:
            if not best:
                raise ConfigError(
                    "export_best_to is set but no best checkpoint was saved (is validation on?)"
                )
            atomic_copy(Path(best), Path(cfg.export_best_to))
            print(f"Best checkpoint exported to {cfg.export_best_to}")
    finally:
        _finish_wandb()
    metrics["best_model_path"] = best
    metrics["output_dir"] = str(output_dir)
    return metrics


def _finish_wandb() -> None:
    """Close the wandb run so the next job of a multirun gets its own run."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # The value Hydra sweepers (Optuna) optimise.
    return metrics.get("val/mIoU")


if __name__ == "__main__":
    main()
