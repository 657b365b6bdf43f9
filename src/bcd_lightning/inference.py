"""Test-time inference: whole image or sliding window, optional horizontal-flip and multi-scale TTA.

Score conventions (what :func:`predict_scores` returns, ``[B, K, H, W]``; its argmax is the prediction):

* one view (no flip, ``scales=[1.0]``): the model's **logits** (window-averaged in ``slide`` mode), so
  the prediction is bit-for-bit the one a plain forward pass gives when the window covers the image;
* test-time augmentation: the mean of the views' **softmax probabilities** (each view's logits are
  un-flipped and resized back to the input size first), the usual choice (e.g. mmsegmentation), which
  keeps views with sharper or flatter logits from dominating.

Inputs of any size work: the model sees inputs padded (bottom/right, zeros = the mean colour after
normalisation) up to a multiple of its ``output_stride`` and the padding is cropped from its logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bcd_lightning.utils.config_check import ConfigError, as_pair, suggest_keys

MODES = ("whole", "slide")

Model = Callable[[Tensor], Any]


@dataclass(frozen=True)
class InferenceConfig:
    """How :func:`predict_scores` runs a model (``inference`` in ``conf/eval.yaml``).

    Attributes:
        mode: ``whole`` (one forward pass per image) or ``slide`` (windows, overlapping logits averaged).
        window: ``(h, w)`` of a sliding window (``slide`` only).
        stride: ``(h, w)`` step between windows, at most ``window`` (``None``: two thirds of the window,
            rounded up, as in mmsegmentation's Cityscapes configs).
        flip: also run the horizontally flipped image.
        scales: image scale factors of multi-scale TTA (``[1.0]``: single scale).
    """

    mode: str = "whole"
    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        key = "inference"
        if self.mode not in MODES:
            raise ConfigError(f"{key}.mode={self.mode!r} must be one of {list(MODES)}.")
        window = _pair(f"{key}.window", self.window)
        stride = _pair(f"{key}.stride", self.stride)
        if self.mode == "slide" and window is None:
            raise ConfigError(f"{key}.mode=slide needs {key}.window=[h,w] (e.g. [512,1024] for Cityscapes).")
        if window is not None and stride is None:
            stride = (-(-2 * window[0] // 3), -(-2 * window[1] // 3))
        if window is not None and stride is not None and (stride[0] > window[0] or stride[1] > window[1]):
            raise ConfigError(
                f"{key}.stride={list(stride)} is larger than {key}.window={list(window)}: pixels between "
                "windows would never be predicted. Use a stride <= the window."
            )
        if not isinstance(self.flip, bool):
            raise ConfigError(f"{key}.flip={self.flip!r} must be true or false.")
        scales = self.scales
        if isinstance(scales, (int, float)) and not isinstance(scales, bool):
            scales = (scales,)
        if (
            isinstance(scales, (str, bytes))
            or not isinstance(scales, Sequence)
            or not scales
            or any(isinstance(s, bool) or not isinstance(s, (int, float)) or float(s) <= 0 for s in scales)
        ):
            raise ConfigError(f"{key}.scales={scales!r} must be a non-empty list of numbers > 0, e.g. [1.0].")
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "stride", stride if self.mode == "slide" else None)
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> InferenceConfig:
        """Build from the ``inference`` config node; an unknown key is an error naming it."""
        if node is None:
            return cls()
        if not isinstance(node, Mapping):
            raise ConfigError(f"inference must be a mapping with keys {list(cls.__dataclass_fields__)}.")
        valid = list(cls.__dataclass_fields__)
        for key in node:
            if key not in valid:
                raise ConfigError(f"Unknown key 'inference.{key}'.{suggest_keys(str(key), valid)}")
        return cls(**dict(node))

    @property
    def num_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples) for ``metrics.json``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _pair(key: str, value: Any) -> tuple[int, int] | None:
    return None if value is None else as_pair(value, key, ConfigError)


def model_logits(model: Model, image: Tensor) -> Tensor:
    """Logits of a model returning a tensor or an object with ``.logits`` (``SegOutput``)."""
    out = model(image)
    return out if isinstance(out, Tensor) else out.logits


def _divisor(model: Model) -> int:
    return int(getattr(model, "output_stride", 1) or 1)


def forward_padded(model: Model, image: Tensor, size_divisor: int | None = None) -> Tensor:
    """Logits of ``image [B, 3, H, W]`` at ``H×W``, zero-padding the input bottom/right to a multiple of
    ``size_divisor`` (default: the model's ``output_stride``) and cropping the padding off the logits."""
    divisor = _divisor(model) if size_divisor is None else size_divisor
    h, w = image.shape[-2:]
    ph, pw = -h % divisor, -w % divisor
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph))
    logits = model_logits(model, image)
    return logits[..., :h, :w] if ph or pw else logits


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``[0, size)``: every ``stride``, the last one flush with the end.

    ``size <= window`` gives ``[0]`` (the image is padded up to the window).
    """
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    return [*starts, size - window]


def slide_inference(
    model: Model,
    image: Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    size_divisor: int | None = None,
) -> Tensor:
    """Logits of ``image [B, 3, H, W]`` from windows of ``window`` every ``stride``, averaged where they
    overlap. An image smaller than the window is zero-padded to it; the last window of a row or column is
    moved back to end flush with the image, so any ``H×W`` is covered without further padding."""
    (wh, ww), (sh, sw) = window, stride
    h, w = image.shape[-2:]
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph))
    hp, wp = image.shape[-2:]
    total: Tensor | None = None
    count = torch.zeros(1, 1, hp, wp, device=image.device)
    for y in window_starts(hp, wh, sh):
        for x in window_starts(wp, ww, sw):
            logits = forward_padded(model, image[..., y : y + wh, x : x + ww], size_divisor)
            if total is None:
                total = logits.new_zeros(logits.size(0), logits.size(1), hp, wp)
            total[..., y : y + wh, x : x + ww] += logits
            count[..., y : y + wh, x : x + ww] += 1
    assert total is not None  # at least one window
    return (total / count)[..., :h, :w]


def _base_logits(model: Model, image: Tensor, cfg: InferenceConfig) -> Tensor:
    if cfg.mode == "slide":
        assert cfg.window is not None and cfg.stride is not None  # checked by InferenceConfig
        return slide_inference(model, image, cfg.window, cfg.stride)
    return forward_padded(model, image)


@torch.no_grad()
def predict_scores(model: Model, image: Tensor, cfg: InferenceConfig | None = None) -> Tensor:
    """Class scores ``[B, K, H, W]`` of ``image [B, 3, H, W]`` (see the module docstring for which)."""
    cfg = cfg or InferenceConfig()
    if cfg.num_views == 1 and cfg.scales[0] == 1.0:
        return _base_logits(model, image, cfg)
    h, w = image.shape[-2:]
    probs: Tensor | None = None
    for scale in cfg.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = image if size == (h, w) else F.interpolate(image, size, mode="bilinear", align_corners=False)
        for flip in (False, True) if cfg.flip else (False,):
            view = scaled.flip(-1) if flip else scaled
            logits = _base_logits(model, view, cfg)
            if flip:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
            p = logits.float().softmax(1)
            probs = p if probs is None else probs + p
    assert probs is not None
    return probs / cfg.num_views
