"""Confusion-matrix plot: rows (ground truth) normalised to 1, class names on both axes.

Drawn with matplotlib's Agg canvas directly (no global ``matplotlib.use``), saved as a PNG in the run dir
at test time by :class:`ConfusionMatrixPlot` and by ``bcd-eval``; logged to wandb when a ``WandbLogger``
is attached.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import Tensor

from bcd_lightning.callbacks.panels import save_png
from bcd_lightning.metrics import SegmentationIoU

#: Cells are annotated with their value up to this many classes (beyond, the text would not fit).
ANNOTATE_MAX_CLASSES = 20


def normalize_rows(confmat: Tensor) -> Tensor:
    """Each row divided by its sum: row c is where the pixels of class c went (its diagonal entry is
    the recall of c). Rows of classes absent from the ground truth are NaN."""
    cm = confmat.double()
    total = cm.sum(1, keepdim=True)
    return torch.where(total > 0, cm / total.clamp_min(1), torch.full_like(cm, float("nan")))


def confusion_image(confmat: Tensor, class_names: Sequence[str], title: str | None = None) -> Image.Image:
    """The row-normalised confusion matrix as a PIL image (colour = fraction, 0..1)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(class_names)
    if tuple(confmat.shape) != (k, k):
        raise ValueError(f"confusion matrix of shape {tuple(confmat.shape)} for {k} class names")
    norm = normalize_rows(confmat).numpy()
    side = max(4.0, 0.45 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of the ground-truth row")
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if title:
        ax.set_title(title)
    if k <= ANNOTATE_MAX_CLASSES:
        for i in range(k):
            for j in range(k):
                if norm[i, j] == norm[i, j]:  # not NaN
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def save_confusion_matrix(
    confmat: Tensor, class_names: Sequence[str], path: Path, title: str | None = None
) -> Image.Image:
    """Write the plot to ``path`` (PNG, atomically) and return it."""
    image = confusion_image(confmat.cpu(), class_names, title)
    save_png(image, Path(path))
    return image


def _find_confmat_metric(pl_module: L.LightningModule) -> SegmentationIoU | None:
    metrics = getattr(pl_module, "test_metrics", None)
    if metrics is None:
        return None
    return next((m for m in metrics.modules() if isinstance(m, SegmentationIoU)), None)


class ConfusionMatrixPlot(L.Callback):
    """At the end of testing, plot the test split's confusion matrix (summed over all ranks).

    Reads the confusion matrix of the module's ``test_metrics`` before the module resets them (callback
    hooks run before the module's). Writes ``<dirpath>/<filename>``; logs ``test/confusion_matrix`` to
    every attached ``WandbLogger``.

    Args:
        dirpath: where the PNG goes (``conf/callbacks/default.yaml``: the run dir); ``None``:
            ``trainer.default_root_dir``.
        filename: PNG file name.
        enabled: ``false`` switches the callback off.
    """

    def __init__(
        self, dirpath: str | None = None, filename: str = "confusion_matrix_test.png", enabled: bool = True
    ) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.enabled = enabled
        self.path: Path | None = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        metric = _find_confmat_metric(pl_module)
        if metric is None:
            return
        with metric.sync_context():  # a collective under DDP: every rank enters, rank zero draws
            confmat = metric.confmat.detach().cpu().clone()
        if not trainer.is_global_zero or confmat.sum() == 0:
            return
        names = list(getattr(pl_module, "class_names", [str(i) for i in range(confmat.size(0))]))
        root = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir)
        iou = metric.iou_per_class()
        miou = float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else float("nan")
        self.path = root / self.filename
        image = save_confusion_matrix(confmat, names, self.path, title=f"test split (mIoU {100 * miou:.2f})")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                try:
                    logger.log_image("test/confusion_matrix", [image], step=trainer.global_step)
                except Exception as err:  # a plot must never fail the test run
                    warnings.warn(f"ConfusionMatrixPlot: wandb logging failed: {err}", stacklevel=1)
