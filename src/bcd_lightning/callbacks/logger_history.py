"""Metric history that survives a resume in place (``hydra.run.dir=<run> ckpt_path=last``).

Lightning's loggers start over in a run directory they find in use: ``CSVLogger`` deletes
``csv/metrics.csv``, ``TensorBoardLogger`` adds a second event file whose steps overlap the first,
``WandbLogger`` opens a new run. Every checkpoint therefore records, with the weights, how far each
history had got: the CSV logger is flushed and its row count saved, and the wandb run id. Resuming
from that checkpoint (:func:`prepare_resume` before the loggers are built, :func:`restore_csv` after)
keeps exactly the rows written up to the checkpoint (rows a killed run wrote later are logged again),
sets TensorBoard's ``purge_step`` to the checkpoint's step (TensorBoard drops the later events of the
old file) and continues the same wandb run id (``resume="allow"``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, open_dict

from bcd_lightning.utils.atomic import atomic_write_text

KEY = "logger_history"


class LoggerHistory(L.Callback):
    """Saves ``{"csv_rows": n, "wandb_id": id}`` into every checkpoint (see the module docstring)."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        history: dict[str, Any] = {}
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger) and trainer.is_global_zero:
                logger.save()  # flush: the file now holds every row logged so far
                history["csv_rows"] = _count_rows(Path(logger.experiment.metrics_file_path))
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                history["wandb_id"] = str(logger.experiment.id)
        checkpoint[KEY] = history


def _count_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, newline="") as fh:
        return max(sum(1 for _ in csv.reader(fh)) - 1, 0)


def saved_history(ckpt_path: str | None) -> tuple[dict[str, Any], int] | None:
    """The checkpoint's logger history and global step; ``None`` when not resuming from a file."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return dict(checkpoint.get(KEY) or {}), int(checkpoint.get("global_step", 0))


def prepare_resume(cfg: DictConfig, history: dict[str, Any], step: int) -> None:
    """Before the loggers are built: TensorBoard purges later steps, wandb continues the same run."""
    loggers = cfg.get("logger") or {}
    with open_dict(cfg):
        for node in loggers.values():
            if node is None:
                continue
            target = str(node.get("_target_", ""))
            if target.endswith("TensorBoardLogger") and node.get("purge_step") is None:
                node.purge_step = step
            if target.endswith("WandbLogger") and history.get("wandb_id") and not node.get("id"):
                node.id = history["wandb_id"]
                node.resume = "allow"


def read_csv_history(loggers: list[Any], history: dict[str, Any]) -> dict[Path, str]:
    """The rows each CSV logger's file held up to the checkpoint (read before the logger deletes it)."""
    kept: dict[Path, str] = {}
    rows = history.get("csv_rows")
    for logger in loggers:
        path = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if path is None or rows is None or not path.is_file():
            continue
        with open(path, newline="") as fh:
            lines = fh.read().splitlines(keepends=True)
        kept[path] = "".join(lines[: 1 + int(rows)])
    return kept


def restore_csv(loggers: list[Any], kept: dict[Path, str]) -> None:
    """After the CSV loggers are built: put the kept rows back and continue appending to them."""
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if path not in kept:
            continue
        writer = logger.experiment  # creating the writer is what deletes the old file
        atomic_write_text(path, kept[path])
        header = next(csv.reader(io.StringIO(kept[path])), [])
        writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))
