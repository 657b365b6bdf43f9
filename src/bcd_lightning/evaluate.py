"""``bcd-eval``: score a student or teacher checkpoint on a data split; print and save the results.

The checkpoint carries the config of the run that wrote it; its ``data`` and ``student`` groups are
reused unless given on the command line (``data=...``, ``student=...`` or any ``data.*`` key).
``inference`` selects whole-image or sliding-window inference and flip / multi-scale test-time
augmentation (:mod:`bcd_lightning.inference`).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from bcd_lightning import builders
from bcd_lightning.callbacks.confusion import save_confusion_matrix
from bcd_lightning.evaluation import evaluate_model, load_run_checkpoint
from bcd_lightning.inference import InferenceConfig
from bcd_lightning.models.teacher import load_weights_strict
from bcd_lightning.utils.config_check import check_config
from bcd_lightning.utils.errors import friendly_errors
from bcd_lightning.utils.logs import get_logger
from bcd_lightning.utils.overrides import precheck_overrides
from bcd_lightning.utils.run_dir import atomic_write_text, save_and_print_config

REUSED_GROUPS = ("data", "student")

log = get_logger(__name__)


def _overridden_groups() -> set[str]:
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # composed outside the CLI
        return set()
    return {o.lstrip("+~").split("=")[0].split(".")[0].split("@")[0] for o in overrides}


def merge_run_config(cfg: DictConfig, run_config: dict[str, Any], overridden: set[str]) -> DictConfig:
    """Use the training run's ``data``/``student`` unless the user overrode that group."""
    with open_dict(cfg):
        for group in REUSED_GROUPS:
            if group in run_config and group not in overridden:
                cfg[group] = OmegaConf.create(run_config[group])
    return cfg


def evaluate(cfg: DictConfig, overridden: set[str] | None = None) -> dict[str, Any]:
    state, run_config = load_run_checkpoint(cfg.ckpt_path)
    cfg = merge_run_config(cfg, run_config, _overridden_groups() if overridden is None else overridden)
    check_config(cfg)
    inference = InferenceConfig.from_config(builders.plain(cfg.get("inference")))
    output_dir = Path(cfg.paths.output_dir)
    save_and_print_config(cfg, output_dir, print_tree=cfg.get("print_config", False))

    model = builders.build_model(cfg.student)
    load_weights_strict(
        model, state, f"Checkpoint {cfg.ckpt_path}", "Override student=... to match the checkpoint."
    )
    datamodule = builders.build_datamodule(cfg)
    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}.get(cfg.split)
    if loader is None:
        raise ValueError(f"split={cfg.split!r} is not one of 'val', 'test'")
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu" else "cpu"
    metrics = evaluate_model(
        model,
        loader(),
        datamodule.num_classes,
        datamodule.class_names,
        datamodule.ignore_index,
        device,
        inference,
    )
    metrics.update(ckpt_path=str(cfg.ckpt_path), split=cfg.split, inference=inference.as_dict())
    _report(metrics, output_dir)
    save_confusion_matrix(
        torch.tensor(metrics["confusion_matrix"]),
        datamodule.class_names,
        output_dir / "confusion_matrix.png",
        title=f"{cfg.split} split (mIoU {100 * metrics['mIoU']:.2f})",
    )
    return metrics


def _report(metrics: dict[str, Any], output_dir: Path) -> None:
    per_class = metrics["per_class_metrics"]
    names = list(per_class)
    views = metrics["inference"]
    how = views["mode"] + (f" {views['window']} stride {views['stride']}" if views["mode"] == "slide" else "")
    how += (" + flip" if views["flip"] else "") + (
        f" scales {views['scales']}" if views["scales"] != [1.0] else ""
    )
    table = Table(title=f"{metrics['split']} split — {metrics['ckpt_path']}", caption=f"inference: {how}")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    for cls in metrics["per_class"]:
        table.add_row(cls, *(_fmt(name, per_class[name][cls]) for name in names))
    table.add_row("[bold]mean[/bold]", *(f"[bold]{_fmt(name, metrics[name])}[/bold]" for name in names))
    Console().print(table)
    atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2))
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["class", *names])
    writer.writerows([cls, *(per_class[name][cls] for name in names)] for cls in metrics["per_class"])
    atomic_write_text(output_dir / "per_class.csv", rows.getvalue())
    log.info("Saved %s, per_class.csv and confusion_matrix.png", output_dir / "metrics.json")


def _fmt(name: str, value: float) -> str:
    """Percent for scores, plain for the connectivity error (a count); n/a for undefined."""
    if value != value:
        return "n/a"
    return f"{value:.2f}" if name == "connectivity_err" else f"{100 * value:.2f}"


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@friendly_errors
def hydra_main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """``bcd-eval``: a typo in a key or group option fails in one line (with the valid ones) first."""
    friendly_errors(precheck_overrides)("eval", sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
