"""``python -m bcd_lightning.detection.train``: one detection run (teacher, baseline or distilled student).

Hydra config ``train_detection.yaml``; e.g. ``python -m bcd_lightning.detection.train
experiment=detection/student detection/distill=bcd threads=1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bcd_lightning import builders
from bcd_lightning.aggregate import write_run_record
from bcd_lightning.detection.data import DetectionDataModule
from bcd_lightning.detection.features import FrozenDetector
from bcd_lightning.detection.lit import DetectionModule, DetectionTerm
from bcd_lightning.detection.models import build_detector
from bcd_lightning.train import fit_test_export, record_failure
from bcd_lightning.utils.errors import exit_if_failed, hydra_task
from bcd_lightning.utils.run_dir import atomic_write_text


def build_datamodule(cfg: DictConfig) -> DetectionDataModule:
    return instantiate(cfg.detection.data.module)


def build_module(cfg: DictConfig, datamodule: DetectionDataModule) -> DetectionModule:
    det = cfg.detection
    student = build_detector(builders.plain(det.student.model))
    losses = {
        name: DetectionTerm(
            loss=instantiate(node.loss),
            weight=float(node.get("weight", 1.0)),
            schedule=builders.plain(node.schedule) if node.get("schedule") else None,
        )
        for name, node in (det.distill.get("losses") or {}).items()
    }
    teacher = None
    if losses:
        teacher = FrozenDetector(build_detector(builders.plain(det.teacher.model)), det.teacher.ckpt)
    return DetectionModule(
        model=student,
        class_names=datamodule.class_names,
        teacher=teacher,
        losses=losses,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        config=builders.plain(cfg),
        nonfinite=str(cfg.get("nonfinite", "stop")),
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one run; returns the final metrics and the best checkpoint path."""
    output_dir = Path(cfg.paths.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = builders.build_trainer(cfg, builders.build_callbacks(cfg), builders.build_loggers(cfg))
    best, metrics = fit_test_export(cfg, trainer, module, datamodule, cfg.get("ckpt_path"))
    if trainer.is_global_zero:  # metrics.json: the same run record as segmentation (aggregate.load_runs)
        record = {
            "method": str(cfg.detection.distill.name),
            "seed": int(cfg.seed),
            "task_name": str(cfg.task_name),
            "task": "instance" if module.masks else "detection",
            "best_model_path": best,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
        }
        write_run_record(output_dir, record)
    metrics["primary_metric"] = f"val/{module.primary_metric}"  # what checkpoints and sweeps select on
    metrics["best_model_path"] = best
    metrics["output_dir"] = str(output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_detection")
@hydra_task(record=record_failure)
def hydra_main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(metrics["primary_metric"])


def main() -> None:
    """As ``bcd-train``: a failed job is recorded and never ends its sweep; the command says so at the end."""
    hydra_main()
    exit_if_failed()


if __name__ == "__main__":
    main()
