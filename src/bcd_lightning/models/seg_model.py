"""Any segmentation-models-pytorch architecture, exposing the features distillation needs."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bcd_lightning.models.outputs import OUTPUT_FIELDS, SegOutput
from bcd_lightning.utils.config_check import ConfigError


class SegModel(nn.Module):
    """An smp model whose forward returns :class:`SegOutput` (logits, backbone stages, decoder feature).

    Args:
        arch: smp architecture name (``Unet``, ``FPN``, ``DeepLabV3``, ``DeepLabV3Plus``, ``PSPNet``, ...).
        encoder_name: smp encoder name (``resnet18``, ``mobilenet_v2``, ``tu-<timm name>``, ...).
        num_classes: number of output classes.
        encoder_weights: ``None`` (default, offline) or e.g. ``"imagenet"`` (downloads).
        in_channels: input channels.
        channels_last: keep weights and activations in ``torch.channels_last`` memory format (NHWC),
            which convolution kernels on recent CPUs and on tensor-core GPUs prefer. Same numbers,
            same ``state_dict`` keys; only the layout changes.
        **kwargs: passed to ``smp.create_model`` (``decoder_channels``, ``encoder_depth``, ...).
    """

    def __init__(
        self,
        arch: str,
        encoder_name: str,
        num_classes: int,
        encoder_weights: str | None = None,
        in_channels: int = 3,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        # smp models expose encoder / decoder / segmentation_head dynamically: typed loosely on purpose.
        self.net: Any
        try:
            self.net = smp.create_model(
                arch,
                encoder_name=encoder_name,
                encoder_weights=encoder_weights,
                in_channels=in_channels,
                classes=num_classes,
                **kwargs,
            )
        except (KeyError, RuntimeError) as err:  # timm says RuntimeError("Unknown model ...") for tu-*
            if isinstance(err, RuntimeError) and "Unknown model" not in str(err):
                raise
            raise ValueError(_unknown_name_message(arch, encoder_name)) from err
        self.arch = arch
        self.encoder_name = encoder_name
        self.num_classes = num_classes
        self.output_stride: int = int(self.net.encoder.output_stride)
        # Encoders such as mit_b* report a zero-channel level; it carries no feature to distill.
        self._stage_indices = [i for i, c in enumerate(self.net.encoder.out_channels) if i > 0 and c > 0]
        self.stage_channels: tuple[int, ...] = tuple(
            self.net.encoder.out_channels[i] for i in self._stage_indices
        )
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be true or false, got {channels_last!r}")
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error when the encoder cannot take an input of this size."""
        h, w = x.shape[-2:]
        s = self.output_stride
        if h % s or w % s:
            raise ConfigError(
                f"Input size {h}x{w} is not divisible by the output stride {s} of encoder "
                f"{self.encoder_name!r}; resize or pad to {-(-h // s) * s}x{-(-w // s) * s} "
                "(e.g. data.image_size / data.crop_size)."
            )

    def forward(self, x: Tensor, outputs: Collection[str] | None = None) -> SegOutput:
        """All of :class:`SegOutput`, or only the fields in ``outputs`` (a subset of ``OUTPUT_FIELDS``).

        Fields not asked for are ``None`` / ``()`` and cost nothing they can avoid: without ``logits`` the
        head is skipped, without ``logits`` and ``decoder`` the decoder too; without ``stages`` the
        encoder features are released as soon as the decoder has used them.
        """
        self.check_input(x)
        want = OUTPUT_FIELDS if outputs is None else check_output_fields(outputs)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.net.encoder(x)
        stages = tuple(features[i] for i in self._stage_indices) if "stages" in want else ()
        decoder = logits = None
        if "decoder" in want or "logits" in want:
            decoder = self.net.decoder(features)
            del features  # the decoder was the last reader: stage maps not asked for can be freed now
            if "logits" in want:
                logits = self.net.segmentation_head(decoder)
                if logits.shape[-2:] != x.shape[-2:]:
                    logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            if "decoder" not in want:
                decoder = None
        return SegOutput(logits=logits, stages=stages, decoder=decoder)


def check_output_fields(outputs: Collection[str]) -> frozenset[str]:
    """``outputs`` as a frozenset, or a ``ValueError`` naming the unknown field names."""
    want = frozenset(outputs)
    if not want or not want <= OUTPUT_FIELDS:
        raise ValueError(f"outputs must be a non-empty subset of {sorted(OUTPUT_FIELDS)}, got {sorted(want)}")
    return want


def _unknown_name_message(arch: str, encoder_name: str) -> str:
    """Which of the two names is wrong, with close matches instead of smp's full list."""
    import difflib

    archs = [a.__name__ for a in smp.MODEL_ARCHITECTURES_MAPPING.values()]
    if arch.lower() not in {a.lower() for a in archs}:
        close = difflib.get_close_matches(arch, archs, n=3, cutoff=0.4)
        return f"Unknown smp architecture {arch!r} (student/teacher `arch`). Close: {close}; all: {archs}."
    encoders = list(smp.encoders.get_encoder_names())
    close = difflib.get_close_matches(encoder_name, encoders, n=5, cutoff=0.5)
    return (
        f"Unsupported encoder {encoder_name!r} (`encoder_name`). Close matches: {close}. Any smp encoder "
        "works (smp.encoders.get_encoder_names()), or a timm model as 'tu-<timm name>'."
    )


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
