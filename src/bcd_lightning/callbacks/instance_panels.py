"""Visual evidence for instance segmentation: one panel per fixed validation image, every validation epoch.

A panel is a row of titled tiles, ``image | ground truth | teacher | student`` (the teacher tile only under
distillation). Each instance is drawn over the image: its binary mask filled semi-transparently in its own
colour, then its contour (the mask minus its 3x3 erosion, outside the image counting as background) in
that colour at full opacity, so touching instances stay apart. Masks are drawn at display resolution, so
contours are 1 px wide whatever the image size. Predictions: score >= ``score_threshold``, mask
probability > ``mask_threshold``, the best score on top and in the first palette colour. Ground truth:
crowd instances in grey, under the others. PNGs go to ``<dirpath>/epoch_XXX/img_YY.png`` always; with a
``WandbLogger`` attached the panels are logged as ``val/instance_panels`` too.

The panel changes nothing in training: the models run in eval mode under ``torch.no_grad()`` and get their
modes back, and the global RNG states (torch, CUDA, numpy, python) are restored after drawing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from bcd_lightning.callbacks.panels import (
    compose_panel,
    denormalize,
    evaluating,
    is_panel_epoch,
    log_wandb_images,
    palette,
    save_png,
    tile_width,
    val_dataset,
    wandb_loggers,
)
from bcd_lightning.callbacks.rng_state import collect_rng_states, set_rng_states
from bcd_lightning.data.datamodule import dataset_size
from bcd_lightning.data.files import DatasetError
from bcd_lightning.metrics.morphology import boundary_band
from bcd_lightning.utils.config_check import ConfigError

if TYPE_CHECKING:
    from bcd_lightning.detection.lit import DetectionModule

Colour = tuple[int, int, int]
Prediction = dict[str, Tensor]

#: Colour of crowd ground-truth instances (the instance colours never are grey).
CROWD_COLOUR: Colour = (128, 128, 128)


def instance_colours(n: int) -> list[Colour]:
    """``n`` distinct instance colours: the panels palette without its greys (grey marks crowd)."""
    rows = cast(list[list[int]], palette(n + 20).tolist())
    colours = [(r, g, b) for r, g, b in rows if not r == g == b]
    return colours[:n]


def resize_nearest(x: Tensor, height: int, width: int) -> Tensor:
    """``x [..., H, W]`` resized to ``height x width`` by nearest neighbour on pixel centres (as PIL)."""
    lead = x.shape[:-2]
    if x.numel() == 0:
        return torch.zeros(*lead, height, width, dtype=x.dtype)
    flat = x.reshape(-1, 1, *x.shape[-2:]).float()
    out = F.interpolate(flat, size=(height, width), mode="nearest-exact")
    return out.reshape(*lead, height, width).to(x.dtype)


def instance_contours(masks: Tensor) -> Tensor:
    """``[N, H, W]`` contour pixels of binary ``masks [N, H, W]``: each mask minus its 3x3 erosion, with
    the frame outside the image as background (a mask touching the border is closed there)."""
    if masks.numel() == 0:
        return masks.clone()
    return boundary_band(masks.long(), 1, border_is_boundary=True) & masks


def draw_instances(
    image: np.ndarray,
    masks: Tensor,
    colours: Sequence[Colour],
    alpha: float = 0.4,
    boxes: Tensor | None = None,
) -> np.ndarray:
    """``image [H, W, 3]`` uint8 with binary ``masks [N, H, W]`` drawn in order (later ones on top).

    Every mask is blended in at ``alpha`` in its colour, then every contour is painted at full opacity
    (after all fills, so no fill washes out a contour); ``boxes [N, 4]`` (xyxy pixel edges), when given,
    are outlined in the same colours.
    """
    out = torch.from_numpy(image).float()
    rgb = torch.tensor(list(colours), dtype=torch.float32).view(-1, 3)
    masks = masks.bool().cpu()
    for mask, colour in zip(masks, rgb, strict=True):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    for contour, colour in zip(instance_contours(masks), rgb, strict=True):
        out[contour] = colour
    drawn = out.round().clamp(0, 255).to(torch.uint8).numpy()
    if boxes is None or len(boxes) == 0:
        return drawn
    canvas = Image.fromarray(drawn, "RGB")
    draw = ImageDraw.Draw(canvas)
    for (x0, y0, x1, y1), colour in zip(boxes.tolist(), colours, strict=True):
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour)  # PIL: inclusive corners
    return np.asarray(canvas).copy()


def _det_module(pl_module: L.LightningModule) -> DetectionModule:
    """The callback draws a DetectionModule's student, teacher and device."""
    return cast("DetectionModule", pl_module)


class InstancePanels(L.Callback):
    """Instance panels of the first ``max_images`` validation images, every ``every_n_epochs`` epochs.

    Args:
        max_images: how many images of the validation set (the first ones, always the same).
        every_n_epochs: draw at epochs ``n-1, 2n-1, ...`` (0-based), i.e. every n-th epoch.
        dirpath: PNG root (``conf/callbacks/instance.yaml``: ``${paths.output_dir}/panels``);
            ``None``: ``<trainer.default_root_dir>/panels``.
        enabled: ``false`` switches the callback off (``callbacks.instance_panels.enabled=false``).
        score_threshold: predictions scoring below it are not drawn.
        mask_threshold: a predicted mask is its pixels of probability above it.
        alpha: opacity of the instance fills (contours are opaque).
        draw_boxes: also outline each instance's box.
        tile_height: tiles are drawn this high (nearest-neighbour resizing, aspect ratio kept).
        log_wandb: also log to every attached ``WandbLogger``.

    Runs on global rank zero only; one batched eval forward per model and epoch.
    """

    def __init__(
        self,
        max_images: int = 4,
        every_n_epochs: int = 1,
        dirpath: str | None = None,
        enabled: bool = True,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        alpha: float = 0.4,
        draw_boxes: bool = False,
        tile_height: int = 192,
        log_wandb: bool = True,
    ) -> None:
        checks = [
            ("max_images", max_images, max_images >= 0, ">= 0"),
            ("every_n_epochs", every_n_epochs, every_n_epochs >= 1, ">= 1"),
            ("score_threshold", score_threshold, 0.0 <= score_threshold <= 1.0, "in [0, 1]"),
            ("mask_threshold", mask_threshold, 0.0 <= mask_threshold < 1.0, "in [0, 1)"),
            ("alpha", alpha, 0.0 <= alpha < 1.0, "in [0, 1) (opaque fills would hide the contours)"),
            ("tile_height", tile_height, tile_height >= 8, ">= 8"),
        ]
        for key, value, ok, accepted in checks:
            if not ok:
                raise ConfigError(f"callbacks.instance_panels.{key} must be {accepted}, got {value}")
        self.max_images = max_images
        self.every_n_epochs = every_n_epochs
        self.dirpath = dirpath
        self.enabled = enabled
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.alpha = alpha
        self.draw_boxes = draw_boxes
        self.tile_height = tile_height
        self.log_wandb = log_wandb
        self._samples: list[tuple[Tensor, dict[str, Tensor]]] | None = None
        self._wandb_failed = False

    def _root(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "panels"

    def _fixed_samples(self, trainer: L.Trainer) -> list[tuple[Tensor, dict[str, Tensor]]]:
        if self._samples is None:
            dataset = val_dataset(trainer, "InstancePanels")
            samples = []
            for i in range(min(self.max_images, dataset_size(dataset))):
                image, target = dataset[i]
                if "masks" not in target:
                    raise DatasetError(
                        f"InstancePanels draws instance masks, but validation sample {i} of "
                        f"{type(dataset).__name__} has none (target keys {sorted(target)}): use an instance "
                        "dataset (e.g. SyntheticDetection(masks=True)), or callbacks=detection for boxes only"
                    )
                samples.append((image.cpu(), {k: v.cpu() for k, v in target.items()}))
            self._samples = samples
        return self._samples

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or self.max_images == 0 or not is_panel_epoch(trainer, self.every_n_epochs):
            return
        module = _det_module(pl_module)
        states = collect_rng_states()
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(evaluating(module.model))
                if isinstance(module.teacher, nn.Module):
                    stack.enter_context(evaluating(module.teacher))
                self._draw(trainer, module)
        finally:
            set_rng_states(states)

    def _predict(
        self, model: nn.Module, images: list[Tensor], device: torch.device, who: str
    ) -> list[Prediction]:
        outputs = model([image.to(device) for image in images])
        preds = [{k: v.detach().cpu() for k, v in out.items()} for out in outputs]
        for pred in preds:
            if "masks" not in pred:
                raise ConfigError(
                    f"InstancePanels draws instance masks, but the {who}'s outputs have no 'masks' "
                    f"(keys {sorted(pred)}): use detection arch mask_rcnn, or callbacks=detection"
                )
        return preds

    def _draw(self, trainer: L.Trainer, module: DetectionModule) -> None:
        samples = self._fixed_samples(trainer)
        if not samples:
            return
        images = [image for image, _ in samples]
        preds = {"student": self._predict(module.model, images, module.device, "student")}
        if module.teacher is not None:
            preds = {"teacher": self._predict(module.teacher, images, module.device, "teacher"), **preds}
        epoch_dir = self._root(trainer) / f"epoch_{trainer.current_epoch:03d}"
        panels = []
        for i, (image, target) in enumerate(samples):
            h, w = image.shape[-2:]
            size = (self.tile_height, tile_width(h, w, self.tile_height))
            base = resize_nearest(
                torch.from_numpy(denormalize(image, (0, 0, 0), (1, 1, 1))).permute(2, 0, 1), *size
            )
            base_rgb = base.permute(1, 2, 0).contiguous().numpy()
            tiles = [("image", base_rgb), self._truth_tile(base_rgb, target, (h, w))]
            tiles += [self._prediction_tile(base_rgb, p[i], (h, w), who) for who, p in preds.items()]
            panel = compose_panel(tiles, self.tile_height)
            save_png(panel, epoch_dir / f"img_{i:02d}.png")
            panels.append(panel)
        loggers = wandb_loggers(trainer)
        if self.log_wandb and loggers and not self._wandb_failed:
            captions = [f"val image {i} — epoch {trainer.current_epoch}" for i in range(len(panels))]
            entries = [("val/instance_panels", panels, {"caption": captions})]
            self._wandb_failed = not log_wandb_images(loggers, entries, trainer.global_step, "InstancePanels")

    def _tile(
        self, base: np.ndarray, masks: Tensor, boxes: Tensor, colours: Sequence[Colour], size: tuple[int, int]
    ) -> np.ndarray:
        """Instances given at image ``size`` drawn over the display-size ``base``."""
        th, tw = base.shape[:2]
        shown = resize_nearest(masks.to(torch.uint8), th, tw).bool()
        scale = torch.tensor([tw / size[1], th / size[0]] * 2)
        return draw_instances(base, shown, colours, self.alpha, boxes * scale if self.draw_boxes else None)

    def _truth_tile(
        self, base: np.ndarray, target: dict[str, Tensor], size: tuple[int, int]
    ) -> tuple[str, np.ndarray]:
        masks = target["masks"] > 0
        crowd = target.get("iscrowd", torch.zeros(len(masks), dtype=torch.int64)) != 0
        order = torch.cat([torch.nonzero(crowd)[:, 0], torch.nonzero(~crowd)[:, 0]])  # crowd underneath
        n_crowd = int(crowd.sum())
        colours = [CROWD_COLOUR] * n_crowd + instance_colours(len(order) - n_crowd)
        tile = self._tile(base, masks[order], target["boxes"][order], colours, size)
        title = f"ground truth ({len(order) - n_crowd} inst" + (f", {n_crowd} crowd)" if n_crowd else ")")
        return title, tile

    def _prediction_tile(
        self, base: np.ndarray, pred: Prediction, size: tuple[int, int], who: str
    ) -> tuple[str, np.ndarray]:
        keep = torch.nonzero(pred["scores"] >= self.score_threshold)[:, 0]
        ranked = keep[torch.argsort(pred["scores"][keep], descending=True, stable=True)]
        order = ranked.flip(0)  # drawn worst first: the best-scoring instance ends on top
        masks = pred["masks"][order, 0] > self.mask_threshold
        colours = instance_colours(len(order))[::-1]
        tile = self._tile(base, masks, pred["boxes"][order], colours, size)
        return f"{who} ({len(order)} inst)", tile
