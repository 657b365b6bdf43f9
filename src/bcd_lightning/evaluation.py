"""Scoring a model outside the training loop: split metrics, inference latency, checkpoint loading."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader

from bcd_lightning.inference import InferenceConfig, predict_scores
from bcd_lightning.metrics import SegmentationIoU, SegMetrics
from bcd_lightning.models import SegModel
from bcd_lightning.models.teacher import extract_model_state, load_checkpoint_file


@torch.no_grad()
def evaluate_model(
    model: SegModel,
    loader: DataLoader,
    num_classes: int,
    class_names: Sequence[str],
    ignore_index: int = 255,
    device: str | torch.device = "cpu",
    inference: InferenceConfig | None = None,
) -> dict[str, Any]:
    """Every :class:`SegMetrics` value of ``model`` over ``loader`` (eval mode, no grad).

    ``inference`` picks whole-image or sliding-window inference and test-time augmentation (default:
    one whole-image forward pass, exactly what validation and test do in training).

    Returns the scalar metrics, ``per_class`` (IoU per class), ``per_class_metrics`` (all metrics) and
    ``confusion_matrix`` (rows: ground truth, columns: prediction; pixel counts, ignored pixels left out).
    """
    was_training = model.training
    model.eval().to(device)
    metrics = SegMetrics(num_classes, ignore_index).to(device)
    for batch in loader:
        scores = predict_scores(model, batch["image"].to(device), inference)
        metrics.update(scores.argmax(1), batch["mask"].to(device))
    model.train(was_training)
    per_class = metrics.per_class(class_names)
    return {
        **metrics.compute(),
        "per_class": per_class["mIoU"],
        "per_class_metrics": per_class,
        "confusion_matrix": cast(SegmentationIoU, metrics.metrics["mIoU"]).confmat.tolist(),
    }


@torch.no_grad()
def inference_ms_per_image(
    model: nn.Module, image_size: tuple[int, int], repeats: int = 20, warmup: int = 3
) -> float:
    """Median wall time of one forward pass at batch 1 on the CPU, in milliseconds."""
    model.eval()
    x = torch.randn(1, 3, *image_size)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000)
    return float(sorted(times)[len(times) // 2])


def load_run_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model state dict and the run config stored in a bcd-train checkpoint."""
    state, config, _ = load_run_checkpoint_hparams(path)
    return state, config


def load_run_checkpoint_hparams(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """:func:`load_run_checkpoint` plus the module's hyperparameters (``class_names``, ...)."""
    checkpoint = load_checkpoint_file(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    return extract_model_state(checkpoint, str(path)), hparams.get("config") or {}, hparams
