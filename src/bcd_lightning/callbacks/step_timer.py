"""Time per training step and the batch geometry it processes (per device vs. global)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

#: Key under which the median step time reaches ``trainer.callback_metrics`` (and ``metrics.json``).
MEDIAN_KEY = "train/step_time_median_s"


def batch_geometry(trainer: L.Trainer, batch_size_per_device: int) -> dict[str, int]:
    """``global_batch_size = batch_size_per_device × devices × num_nodes × accumulate_grad_batches``."""
    devices, nodes = int(trainer.num_devices), int(trainer.num_nodes)
    accumulate = int(trainer.accumulate_grad_batches)
    return {
        "batch_size_per_device": int(batch_size_per_device),
        "devices": devices,
        "num_nodes": nodes,
        "accumulate_grad_batches": accumulate,
        "global_batch_size": int(batch_size_per_device) * devices * nodes * accumulate,
    }


class StepTimer(L.Callback):
    """Logs ``train/step_time_s`` (forward + backward + optimizer step, data loading excluded) every step.

    At the end of fitting the median over steps (the first ``skip_first`` excluded: allocator and
    autotuning warm-up) is put into ``trainer.callback_metrics`` under ``train/step_time_median_s`` and
    sent to the loggers. At fit start the batch geometry (see :func:`batch_geometry`) is printed and
    logged as hyperparameters, so per-device and global batch sizes are explicit in every run's logs.

    Args:
        skip_first: steps left out of the median.
        cuda_sync: synchronise CUDA before reading the clock (otherwise GPU steps look instantaneous).
    """

    def __init__(self, skip_first: int = 3, cuda_sync: bool = True) -> None:
        self.skip_first = skip_first
        self.cuda_sync = cuda_sync
        self.durations: list[float] = []
        self._start: float | None = None

    def _now(self, pl_module: L.LightningModule) -> float:
        if self.cuda_sync and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.durations = []
        per_device = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if per_device is None:
            return
        geometry = batch_geometry(trainer, per_device)
        rank_zero_info(
            "Batch: {batch_size_per_device} per device × {devices} device(s) × {num_nodes} node(s) × "
            "{accumulate_grad_batches} accumulation = global batch {global_batch_size}".format(**geometry)
        )
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams({f"batch/{k}": v for k, v in geometry.items()})

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = self._now(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            return
        seconds = self._now(pl_module) - self._start
        self._start = None
        self.durations.append(seconds)
        pl_module.log("train/step_time_s", seconds, on_step=True, on_epoch=False, batch_size=1)

    @property
    def median_s(self) -> float | None:
        """Median step time in seconds (None before any step)."""
        kept = self.durations[self.skip_first :] or self.durations
        return statistics.median(kept) if kept else None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        median = self.median_s
        if median is None:
            return
        # callback_metrics travel back to the main process under ddp_spawn; train() reads them there.
        trainer.callback_metrics[MEDIAN_KEY] = torch.tensor(median)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({MEDIAN_KEY: median}, step=trainer.global_step)
