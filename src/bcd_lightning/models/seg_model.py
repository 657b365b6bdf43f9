"""Any segmentation-models-pytorch architecture, exposing the features distillation needs."""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bcd_lightning.models.outputs import SegOutput


class SegModel(nn.Module):
    """An smp model whose forward returns :class:`SegOutput` (logits, backbone stages, decoder feature).

    Args:
        arch: smp architecture name (``Unet``, ``FPN``, ``DeepLabV3``, ``DeepLabV3Plus``, ``PSPNet``, ...).
        encoder_name: smp encoder name (``resnet18``, ``mobilenet_v2``, ``tu-<timm name>``, ...).
        num_classes: number of output classes.
        encoder_weights: ``None`` (default, offline) or e.g. ``"imagenet"`` (downloads).
        in_channels: input channels.
        **kwargs: passed to ``smp.create_model`` (``decoder_channels``, ``encoder_depth``, ...).
    """

    def __init__(
        self,
        arch: str,
        encoder_name: str,
        num_classes: int,
        encoder_weights: str | None = None,
        in_channels: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        try:
            self.net = smp.create_model(
                arch,
                encoder_name=encoder_name,
                encoder_weights=encoder_weights,
                in_channels=in_channels,
                classes=num_classes,
                **kwargs,
            )
        except KeyError as err:
            raise ValueError(
                f"Unknown smp architecture or encoder ({arch!r}, {encoder_name!r}): {err}. "
                "See segmentation_models_pytorch docs for valid names."
            ) from err
        self.arch = arch
        self.encoder_name = encoder_name
        self.num_classes = num_classes
        self.output_stride: int = int(self.net.encoder.output_stride)
        # Encoders such as mit_b* report a zero-channel level; it carries no feature to distill.
        self._stage_indices = [i for i, c in enumerate(self.net.encoder.out_channels) if i > 0 and c > 0]
        self.stage_channels: tuple[int, ...] = tuple(
            self.net.encoder.out_channels[i] for i in self._stage_indices
        )

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error when the encoder cannot take an input of this size."""
        h, w = x.shape[-2:]
        s = self.output_stride
        if h % s or w % s:
            raise ValueError(
                f"Input size {h}x{w} is not divisible by the output stride {s} of encoder "
                f"{self.encoder_name!r}; resize or pad to {-(-h // s) * s}x{-(-w // s) * s} "
                "(e.g. data.image_size / data.crop_size)."
            )

    def forward(self, x: Tensor) -> SegOutput:
        self.check_input(x)
        features = self.net.encoder(x)
        decoder = self.net.decoder(features)
        logits = self.net.segmentation_head(decoder)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        stages = tuple(features[i] for i in self._stage_indices)
        return SegOutput(logits=logits, stages=stages, decoder=decoder)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class index map ``[B, H, W]``."""
        return self(x).logits.argmax(1)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
