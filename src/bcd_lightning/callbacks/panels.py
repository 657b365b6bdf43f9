"""Visual evidence: one panel per fixed validation image, every validation epoch.

A panel is a row of tiles, ``image | ground truth | teacher prediction | student prediction | teacher
boundary map | student boundary map`` (teacher tiles only under distillation), each titled. Boundary maps
are :func:`bcd_lightning.distill.functional.boundary_map` of the finest stage the boundary loss distils,
drawn in grey on one scale per panel (white = the panel's largest value), so teacher and student compare
directly. PNGs go to ``<dirpath>/epoch_XXX/img_YY.png`` always; with a ``WandbLogger`` attached the panels
and the image with ground truth / prediction mask overlays (class labels) are logged too.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torch.utils.data import Dataset

from bcd_lightning.data.datamodule import dataset_size
from bcd_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bcd_lightning.distill.boundary import BoundaryDistillation, BoundaryWeightedKD
from bcd_lightning.distill.functional import boundary_map
from bcd_lightning.utils.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from bcd_lightning.lit.segmentation import SegmentationModule


def _seg_module(pl_module: L.LightningModule) -> SegmentationModule:
    """The callback draws a SegmentationModule's model, class names and ignore index."""
    return cast("SegmentationModule", pl_module)


#: Height in pixels of the title strip above the tiles.
TITLE_HEIGHT = 16
#: Colour of ignored ground-truth pixels.
IGNORE_COLOUR = (255, 255, 255)
#: Stage used when no boundary loss names one: index 1, stride 4 for a standard 5-level encoder.
DEFAULT_STAGE = 1

# tab20-like, distinct, none of them white (white marks ignored pixels).
_BASE_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (0, 0, 0), (219, 219, 141), (158, 218, 229),
)  # fmt: skip


def palette(num_classes: int) -> Tensor:
    """``[num_classes, 3]`` uint8 class colours: 20 fixed ones, then seeded random ones (never white)."""
    colours = torch.tensor(_BASE_PALETTE[:num_classes], dtype=torch.uint8).view(-1, 3)
    if num_classes > len(_BASE_PALETTE):
        g = torch.Generator().manual_seed(0)
        extra = torch.randint(0, 240, (num_classes - len(_BASE_PALETTE), 3), generator=g, dtype=torch.uint8)
        colours = torch.cat([colours, extra])
    return colours


def colorize(mask: Tensor, colours: Tensor, ignore_index: int | None = None) -> np.ndarray:
    """``[H, W, 3]`` uint8 of a label map: class colours, ``IGNORE_COLOUR`` at ``ignore_index``."""
    mask = mask.long().cpu()
    ignored = mask == ignore_index if ignore_index is not None else torch.zeros_like(mask, dtype=torch.bool)
    rgb = colours[mask.masked_fill(ignored, 0).clamp(0, len(colours) - 1)]
    rgb[ignored] = torch.tensor(IGNORE_COLOUR, dtype=torch.uint8)
    return rgb.numpy()


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``[H, W, 3]`` uint8 of a normalised ``[3, H, W]`` image."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    rgb = (image.detach().float().cpu() * s + m).clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def grey(values: Tensor, vmax: float) -> np.ndarray:
    """``[H, W, 3]`` uint8 grey image of ``values [H, W]``: 0 black, ``vmax`` white."""
    v = (values.detach().float().cpu() / max(vmax, 1e-12)).clamp(0, 1)
    return (v * 255).round().to(torch.uint8).unsqueeze(-1).expand(-1, -1, 3).contiguous().numpy()


def tile_width(height: int, width: int, tile_height: int) -> int:
    """Width of an ``height x width`` image shown ``tile_height`` high (aspect ratio kept)."""
    return max(1, round(width * tile_height / height))


def compose_panel(tiles: Sequence[tuple[str, np.ndarray]], tile_height: int) -> Image.Image:
    """Titled tiles side by side; each ``[H, W, 3]`` uint8 tile is resized (nearest) to ``tile_height``."""
    resized = []
    for title, array in tiles:
        tile = Image.fromarray(array, "RGB")
        width = tile_width(tile.height, tile.width, tile_height)
        resized.append((title, tile.resize((width, tile_height), Image.Resampling.NEAREST)))
    panel = Image.new("RGB", (sum(t.width for _, t in resized), TITLE_HEIGHT + tile_height), "white")
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    x = 0
    for title, tile in resized:
        panel.paste(tile, (x, TITLE_HEIGHT))
        draw.text((x + 3, 2), title, fill="black", font=font)
        x += tile.width
    return panel


def legend(class_names: Sequence[str], colours: Tensor) -> Image.Image:
    """One row per class: colour swatch and name (plus ignored pixels)."""
    rows = [*zip(class_names, (tuple(c) for c in colours.tolist()), strict=True), ("ignore", IGNORE_COLOUR)]
    img = Image.new("RGB", (220, 18 * len(rows) + 4), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i, (name, colour) in enumerate(rows):
        draw.rectangle((4, 4 + 18 * i, 18, 18 + 18 * i), fill=colour, outline="black")
        draw.text((26, 5 + 18 * i), name, fill="black", font=font)
    return img


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically: the file is either absent, the old one, or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def is_panel_epoch(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether panels are due now: global rank zero, not the sanity check, every ``every_n_epochs``-th
    epoch (0-based epochs ``n-1, 2n-1, ...``)."""
    return (
        not trainer.sanity_checking
        and trainer.is_global_zero
        and (trainer.current_epoch + 1) % every_n_epochs == 0
    )


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode under ``torch.no_grad()``; every submodule gets its own mode back after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def val_dataset(trainer: L.Trainer, owner: str) -> Dataset:
    """The dataset of the trainer's (first) validation dataloader; ``owner`` names the caller in the error."""
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    if loader is None:
        raise RuntimeError(f"{owner} needs a validation dataloader")
    return loader.dataset


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """Every ``WandbLogger`` attached to ``trainer``."""
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def log_wandb_images(
    loggers: Sequence[WandbLogger],
    entries: Sequence[tuple[str, list[Any], dict[str, Any]]],
    step: int,
    owner: str,
) -> bool:
    """Log every ``(key, images, log_image kwargs)`` entry to every logger.

    Returns ``False`` after one warning naming ``owner`` when wandb fails: visual evidence must never end
    a training run, so callers drop to PNGs only.
    """
    try:
        for logger in loggers:
            for key, images, kwargs in entries:
                logger.log_image(key, images, step=step, **kwargs)
    except Exception as err:
        warnings.warn(f"{owner}: wandb logging failed, PNGs only from now on: {err}", stacklevel=2)
        return False
    return True


def boundary_stage(pl_module: L.LightningModule) -> tuple[int, int]:
    """``(stage index, dilation)`` of the finest stage a boundary loss of ``pl_module`` distils.

    Boundary distillation first, then boundary-weighted KD; without either, stage ``DEFAULT_STAGE``.
    """
    losses = getattr(pl_module, "distill_losses", None) or {}
    for kind in (BoundaryDistillation, BoundaryWeightedKD):
        for loss in losses.values():
            if isinstance(loss, kind):
                return min(loss.stages), loss.dilation
    return DEFAULT_STAGE, 1


def _forward(model: Any, image: Tensor, stage: int, dilation: int) -> tuple[Tensor, Tensor | None]:
    """Prediction ``[H, W]`` and boundary map ``[H, W]`` (None without stages) of one ``[1, 3, H, W]``
    image; the input is zero-padded to the model's output stride and the outputs cropped back."""
    h, w = image.shape[-2:]
    divisor = int(getattr(model, "output_stride", 1) or 1)
    padded = F.pad(image, (0, -w % divisor, 0, -h % divisor))
    out = model(padded)
    pred = out.logits[0, :, :h, :w].argmax(0)
    if not out.stages:
        return pred, None
    feature = out.stages[min(stage, len(out.stages) - 1)]
    bmap = boundary_map(feature.float(), dilation)[:, None]
    bmap = F.interpolate(bmap, size=padded.shape[-2:], mode="nearest")[0, 0, :h, :w]
    return pred, bmap


class ValidationPanels(L.Callback):
    """Panels of the first ``num_images`` validation images, every ``every_n_epochs`` validation epochs.

    Args:
        num_images: how many images of the validation set (the first ones, always the same).
        every_n_epochs: draw at epochs ``n-1, 2n-1, ...`` (0-based), i.e. every n-th epoch.
        dirpath: PNG root (``conf/callbacks/default.yaml``: ``${paths.output_dir}/panels``);
            ``None``: ``<trainer.default_root_dir>/panels``.
        enabled: ``false`` switches the callback off (``callbacks.panels.enabled=false``).
        tile_height: tiles are resized (nearest) to this height in the PNG.
        mean, std: the normalisation of the images, undone for display (ImageNet by default).
        log_wandb: also log to every attached ``WandbLogger``.

    Runs on global rank zero only, under ``torch.no_grad()``, with the student put back in the mode it
    was in; a few forward passes of single images per epoch.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        dirpath: str | None = None,
        enabled: bool = True,
        tile_height: int = 192,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        log_wandb: bool = True,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"callbacks.panels.num_images must be >= 0, got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(f"callbacks.panels.every_n_epochs must be >= 1, got {every_n_epochs}")
        if tile_height < 8:
            raise ValueError(f"callbacks.panels.tile_height must be >= 8, got {tile_height}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.dirpath = dirpath
        self.enabled = enabled
        self.tile_height = tile_height
        self.mean, self.std = tuple(mean), tuple(std)
        self.log_wandb = log_wandb
        self._samples: list[dict[str, Tensor]] | None = None
        self._wandb_failed = False

    def _root(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "panels"

    def _fixed_samples(self, trainer: L.Trainer) -> list[dict[str, Tensor]]:
        if self._samples is None:
            dataset = val_dataset(trainer, "the panels callback")
            n = min(self.num_images, dataset_size(dataset))
            self._samples = [{k: dataset[i][k] for k in ("image", "mask")} for i in range(n)]
        return self._samples

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or self.num_images == 0 or not is_panel_epoch(trainer, self.every_n_epochs):
            return
        with evaluating(_seg_module(pl_module).model):
            self._draw(trainer, pl_module)

    def _draw(self, trainer: L.Trainer, lightning_module: L.LightningModule) -> None:
        pl_module = _seg_module(lightning_module)
        teacher = getattr(pl_module, "teacher", None)
        stage, dilation = boundary_stage(pl_module)
        class_names = list(pl_module.class_names)
        colours = palette(len(class_names))
        ignore_index = pl_module.ignore_index
        epoch_dir = self._root(trainer) / f"epoch_{trainer.current_epoch:03d}"
        if not (self._root(trainer) / "legend.png").is_file():
            save_png(legend(class_names, colours), self._root(trainer) / "legend.png")
        panels, overlays = [], []
        for i, sample in enumerate(self._fixed_samples(trainer)):
            image = sample["image"].unsqueeze(0).to(pl_module.device)
            mask = sample["mask"]
            student_pred, student_map = _forward(pl_module.model, image, stage, dilation)
            tiles = [("image", denormalize(sample["image"], self.mean, self.std))]
            tiles.append(("ground truth", colorize(mask, colours, ignore_index)))
            maps = []
            preds = {"student": student_pred.cpu()}
            if teacher is not None:
                teacher_pred, teacher_map = _forward(teacher, image, stage, dilation)
                preds["teacher"] = teacher_pred.cpu()
                tiles.append(("teacher", colorize(teacher_pred, colours)))
                if teacher_map is not None:
                    maps.append(("teacher boundary", teacher_map))
            tiles.append(("student", colorize(student_pred, colours)))
            if student_map is not None:
                maps.append(("student boundary", student_map))
            vmax = max((float(m.max()) for _, m in maps), default=1.0)
            tiles += [(title, grey(m, vmax)) for title, m in maps]
            panel = compose_panel(tiles, self.tile_height)
            save_png(panel, epoch_dir / f"img_{i:02d}.png")
            panels.append(panel)
            overlays.append((tiles[0][1], mask, preds))
        if self.log_wandb:
            self._log_wandb(trainer, panels, overlays, class_names, ignore_index, f"stage {stage}")

    def _log_wandb(
        self,
        trainer: L.Trainer,
        panels: list[Image.Image],
        overlays: list[tuple[np.ndarray, Tensor, dict[str, Tensor]]],
        class_names: list[str],
        ignore_index: int,
        stage_note: str,
    ) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers or self._wandb_failed:
            return
        labels = {i: name for i, name in enumerate(class_names)}
        ignore_label = len(class_names)
        masks = []
        for _, gt, preds in overlays:
            gt_data = gt.long().masked_fill(gt == ignore_index, ignore_label).numpy().astype(np.int32)
            entry = {
                "ground_truth": {"mask_data": gt_data, "class_labels": {**labels, ignore_label: "ignore"}}
            }
            for who, pred in preds.items():
                entry[who] = {"mask_data": pred.numpy().astype(np.int32), "class_labels": labels}
            masks.append(entry)
        captions = [f"val image {i} — epoch {trainer.current_epoch}" for i in range(len(panels))]
        entries = [
            ("val/panels", panels, {"caption": [f"{c} (boundary maps: {stage_note})" for c in captions]}),
            ("val/overlays", [o[0] for o in overlays], {"masks": masks, "caption": captions}),
        ]
        self._wandb_failed = not log_wandb_images(loggers, entries, trainer.global_step, "ValidationPanels")
