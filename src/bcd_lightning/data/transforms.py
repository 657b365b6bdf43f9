"""Joint image/mask transforms for training and evaluation, built on ``torchvision.transforms.v2``.

Why torchvision v2 (and not albumentations or hand-written code): torchvision is already installed with
torch/smp, so this adds no dependency; its v2 transforms act on an image and a mask *together* when the
mask is wrapped as ``tv_tensors.Mask`` — one random draw per sample for both — and they dispatch on that
type, so a mask is always resized with nearest-neighbour interpolation (never blending labels), padded with
its own fill value (the ignore index), and left alone by photometric and normalisation transforms. The
tests check exactly these properties (alignment, no new label values, ignore padding).

Training: random rescale by a factor drawn from ``scale_range`` (relative to the image's own size, as in
the segmentation-KD protocol), random crop to ``crop_size`` (images smaller than the crop are padded: the
image with the ImageNet mean colour, i.e. 0 after normalisation, the mask with ``ignore_index``),
horizontal flip, optional colour jitter, ImageNet normalisation.
Evaluation: full resolution, normalisation only, plus optional bottom/right padding to a multiple of the
network's output stride (padded pixels are ``ignore_index`` and so never scored).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from bcd_lightning.utils.config_check import as_pair

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: The ImageNet mean as uint8 RGB: image padding with this colour is 0 after normalisation.
MEAN_RGB: tuple[int, int, int] = tuple(round(m * 255) for m in IMAGENET_MEAN)  # type: ignore[assignment]


def normalize(image: Tensor) -> Tensor:
    """uint8 ``[3, H, W]`` -> float32 ImageNet-normalised."""
    return TF.normalize(image.float() / 255.0, list(IMAGENET_MEAN), list(IMAGENET_STD))


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range``, relative to the input's own size.

    (``v2.RandomResize`` draws an absolute size and ``v2.ScaleJitter`` a size relative to a fixed target;
    the protocol scales each image relative to itself, whatever its size.) Masks get nearest-neighbour
    sampled at pixel centres, so label edges stay where the bilinear-resized image has them.
    """

    def __init__(self, scale_range: Sequence[float]) -> None:
        super().__init__()
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
        self.scale_range = (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = random.uniform(*self.scale_range)
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # Masks: NEAREST_EXACT samples at pixel centres, the grid bilinear uses for the image; torchvision's
        # default NEAREST for masks floors (x / scale) and shifts label edges by up to half a source pixel.
        mode = (
            InterpolationMode.NEAREST_EXACT
            if isinstance(inpt, tv_tensors.Mask)
            else InterpolationMode.BILINEAR
        )
        return self._call_kernel(TF.resize, inpt, params["size"], interpolation=mode, antialias=True)


class _ToNormalizedFloat(v2.Transform):
    """Images: uint8 -> float32 ImageNet-normalised; masks pass through untouched."""

    _transformed_types = (tv_tensors.Image,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.Image(normalize(inpt.as_subclass(Tensor)))  # inpt is an Image (_transformed_types)


class _JointTransform:
    """Wraps a v2 pipeline so it takes and returns plain ``(image uint8 [3,H,W], mask int64 [H,W])``."""

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out_image, out_mask = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return out_image.as_subclass(Tensor), out_mask.as_subclass(Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


class TrainTransform(_JointTransform):
    """Random rescale, crop (with ignore padding), flip, optional colour jitter, normalisation.

    Args:
        crop_size: ``size`` or ``[height, width]`` of the training crops; ``null`` keeps the full image
            (only usable with batch size 1 or same-sized images).
        scale_range: rescale factor range, relative to each image's size; ``null`` disables rescaling.
        hflip: probability of a horizontal flip.
        color_jitter: strength ``s`` of brightness/contrast/saturation jitter (each by a factor in
            ``[1 - s, 1 + s]``); 0 disables it.
        hue: hue jitter (``[-hue, hue]``, at most 0.5).
        ignore_index: mask fill value for padded pixels.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] | None = 512,
        scale_range: Sequence[float] | None = (0.5, 2.0),
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        hue: float = 0.0,
        ignore_index: int = 255,
    ) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
        if color_jitter < 0 or not 0 <= hue <= 0.5:
            raise ValueError(f"color_jitter must be >= 0 and hue in [0, 0.5], got {color_jitter}, {hue}")
        steps: list[v2.Transform] = []
        if scale_range is not None:
            steps.append(RandomScale(scale_range))
        if crop_size is not None:
            fill = {tv_tensors.Image: MEAN_RGB, tv_tensors.Mask: ignore_index}
            steps.append(v2.RandomCrop(as_pair(crop_size, "crop_size"), pad_if_needed=True, fill=fill))
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if color_jitter > 0 or hue > 0:
            s = color_jitter
            steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=hue))
        steps.append(_ToNormalizedFloat())
        super().__init__(v2.Compose(steps))
        self.crop_size = None if crop_size is None else as_pair(crop_size, "crop_size")
        self.ignore_index = ignore_index


class EvalTransform:
    """Full resolution: normalisation, and padding (bottom/right) to a multiple of ``pad_to_multiple``.

    Args:
        pad_to_multiple: pad height and width up to a multiple of this (the network's output stride, e.g.
            32) with the mean colour / ``ignore_index``; 1 disables padding.
        ignore_index: mask fill value for padded pixels (never scored).
    """

    def __init__(self, pad_to_multiple: int = 32, ignore_index: int = 255) -> None:
        if pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
        self.pad_to_multiple = pad_to_multiple
        self.ignore_index = ignore_index

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        m = self.pad_to_multiple
        height, width = image.shape[-2:]
        pad_h, pad_w = -height % m, -width % m
        if pad_h or pad_w:  # padding is [left, top, right, bottom]
            image = TF.pad(image, [0, 0, pad_w, pad_h], fill=list(MEAN_RGB))
            mask = TF.pad(mask[None], [0, 0, pad_w, pad_h], fill=self.ignore_index)[0]
        return normalize(image), mask

    def __repr__(self) -> str:
        return f"EvalTransform(pad_to_multiple={self.pad_to_multiple}, ignore_index={self.ignore_index})"


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "RandomScale",
    "TrainTransform",
    "normalize",
]
