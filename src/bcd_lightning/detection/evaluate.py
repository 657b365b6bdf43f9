"""``bcd-eval`` on a detection or instance-segmentation checkpoint (a ``bcd_lightning.detection.train`` run).

:func:`bcd_lightning.evaluate.evaluate` hands over here when the checkpoint's run config has a
``detection`` key. That run's ``detection`` group is the base; ``detection.*`` overrides apply on top of it
(``+detection.…`` adds a key the run lacks) and ``paths.data_dir=`` moves every resolved copy of the run's data
dir. The student detector is built from ``detection.student.model`` and loaded strictly; the data must have
the checkpoint's classes. Box mAP for box detectors; box / mask / Boundary AP and connectivity for Mask R-CNN
(:func:`bcd_lightning.detection.metrics.metrics_for`). Results go to ``metrics.json`` and ``per_class.csv``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader

from bcd_lightning import builders
from bcd_lightning.detection.features import has_mask_head
from bcd_lightning.detection.instance_metrics import InstanceMetrics
from bcd_lightning.detection.metrics import DetectionMetrics, metrics_for
from bcd_lightning.detection.models import build_detector
from bcd_lightning.detection.train import build_datamodule
from bcd_lightning.evaluate import _group_of, _replace_strings, apply_overrides, check_label_space
from bcd_lightning.utils.checkpoint_read import key_mismatch
from bcd_lightning.utils.config_check import ConfigError
from bcd_lightning.utils.errors import CheckpointError
from bcd_lightning.utils.logs import get_logger
from bcd_lightning.utils.run_dir import atomic_write_text, save_and_print_config

log = get_logger(__name__)

#: Eval-config groups of segmentation runs; a detection run has none of them.
_SEGMENTATION_GROUPS = ("data", "student", "inference")


def detection_config(
    run_config: dict[str, Any], overrides: Sequence[str], data_dir: str | None
) -> DictConfig:
    """The run's ``detection`` group with the ``detection.*`` overrides applied; with ``data_dir`` (the user
    moved ``paths.data_dir``) every string under the run's old data dir is moved there first."""
    node = OmegaConf.create(run_config["detection"])
    if not isinstance(node, DictConfig):
        raise ConfigError(f"the checkpoint's config.detection is not a mapping: {run_config['detection']!r}")
    old_dir = (run_config.get("paths") or {}).get("data_dir")
    if data_dir is not None and isinstance(old_dir, str) and old_dir != data_dir:
        _replace_strings(node, old_dir, data_dir)  # the saved config is resolved
    for override in overrides:
        group, choice = _group_of(override)
        if group in ("data", "student") and not choice:
            raise ConfigError(
                f"{override!r}: the checkpoint is a detection run; its data and model are "
                f"detection.data.* and detection.student.* (e.g. detection.{override.lstrip('+~')})"
            )
    apply_overrides(node, "detection", [o for o in overrides if _group_of(o) == ("detection", False)])
    return node


def load_detector_strict(
    model: nn.Module, state: dict[str, Tensor], ckpt: str, model_cfg: dict[str, Any]
) -> None:
    """Load the checkpoint's ``model.*`` weights; any missing, unexpected or mis-shaped key is one error."""
    problem = key_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(
            f"Checkpoint {ckpt} does not match detection.student.model "
            f"({model_cfg.get('arch')}/{model_cfg.get('backbone')}, num_classes {model_cfg.get('num_classes')}): "
            f"{problem}. Override detection.student.model.*=... to match the checkpoint's run."
        )
    model.load_state_dict(state, strict=True)


@torch.no_grad()
def score_detector(
    model: nn.Module, loader: DataLoader, metric: DetectionMetrics | InstanceMetrics, device: str
) -> tuple[dict[str, float], dict[str, float]]:
    """(summary, per-class AP) of ``model`` over ``loader``, in eval mode as validation runs it."""
    was_training = model.training
    model.eval().to(device)
    metric.to(device)
    for images, targets in loader:
        preds = model([image.to(device) for image in images])
        metric.update(preds, [{k: v.to(device) for k, v in t.items()} for t in targets])
    model.train(was_training)
    return metric.compute()


def evaluate_detection(
    cfg: DictConfig,
    state: dict[str, Tensor],
    run_config: dict[str, Any],
    hparams: dict[str, Any],
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Score the checkpoint ``cfg.ckpt_path`` (weights ``state``, run config ``run_config``) on ``cfg.split``;
    print the results and write them into ``cfg.paths.output_dir``."""
    moved = any(o.lstrip("+").split("=")[0] == "paths.data_dir" for o in overrides)
    detection = detection_config(run_config, overrides, str(cfg.paths.data_dir) if moved else None)
    with open_dict(cfg):
        for group in _SEGMENTATION_GROUPS:
            cfg.pop(group, None)
        cfg.detection = detection
    output_dir = Path(cfg.paths.output_dir)
    save_and_print_config(cfg, output_dir, print_tree=cfg.get("print_config", False))

    model_cfg = builders.plain(detection.student.model)
    model = build_detector(model_cfg)
    load_detector_strict(model, state, str(cfg.ckpt_path), model_cfg)
    datamodule = build_datamodule(cfg)
    trained = hparams.get("class_names")
    check_label_space(
        datamodule, SimpleNamespace(num_classes=int(model_cfg["num_classes"])), trained, cfg.ckpt_path
    )
    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}.get(str(cfg.split))
    if loader is None:
        raise ConfigError(f"split={cfg.split!r} is not one of 'val', 'test'")
    masks = has_mask_head(model)
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu" else "cpu"
    summary, per_class = score_detector(model, loader(), metrics_for(datamodule.class_names, masks), device)
    metrics: dict[str, Any] = {
        **summary,
        "per_class": per_class,
        "per_class_metric": "mask_AP" if masks else "AP",
        "task": "instance" if masks else "detection",
        "arch": model_cfg.get("arch"),
        "ckpt_path": str(cfg.ckpt_path),
        "split": str(cfg.split),
    }
    report(metrics, output_dir)
    return metrics


def report(metrics: dict[str, Any], output_dir: Path) -> None:
    """Print the summary and per-class tables; write ``metrics.json`` and ``per_class.csv`` atomically."""
    per_class: dict[str, float] = metrics["per_class"]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
    table = Table(title=f"{metrics['split']} split — {metrics['ckpt_path']}", caption=metrics["task"])
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in scalars.items():
        table.add_row(name, _fmt(name, value))
    for cls, value in per_class.items():
        table.add_row(f"{metrics['per_class_metric']}/{cls}", _fmt("AP", value))
    Console().print(table)
    atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2))
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["class", metrics["per_class_metric"]])
    writer.writerows(per_class.items())
    atomic_write_text(output_dir / "per_class.csv", rows.getvalue())
    log.info("Saved %s and per_class.csv", output_dir / "metrics.json")


def _fmt(name: str, value: float) -> str:
    """Percent for AP and rates, plain for the connectivity error (components); n/a for COCO's -1."""
    if value == -1.0 and name != "conn_error":
        return "n/a"
    return f"{value:.3f}" if name == "conn_error" else f"{100 * value:.2f}"
