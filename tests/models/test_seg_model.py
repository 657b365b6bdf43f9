"""SegModel exposes logits at input resolution, backbone stages without the input, and the decoder."""

from __future__ import annotations

import pytest
import torch

from bcd_lightning.models import SegModel


@pytest.mark.parametrize(
    ("arch", "encoder", "kwargs"),
    [
        ("Unet", "resnet18", {}),
        ("Unet", "tu-mobilenetv3_small_050", {"decoder_channels": [64, 32, 16, 16, 16]}),
        ("FPN", "resnet18", {}),
        ("DeepLabV3", "resnet18", {}),
        ("DeepLabV3Plus", "resnet18", {}),
        ("PSPNet", "resnet18", {}),
    ],
)
def test_outputs(arch: str, encoder: str, kwargs: dict) -> None:
    model = SegModel(arch, encoder, num_classes=5, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.logits.shape == (2, 5, 64, 64)
    assert len(out.stages) == len(model.stage_channels) >= 3
    for stage, channels in zip(out.stages, model.stage_channels, strict=True):
        assert stage.shape[:2] == (2, channels) and stage.shape[-1] < 64  # the input map is not a stage
    assert out.decoder is not None and out.decoder.shape[0] == 2
    # The head maps the decoder feature to the logits: same thing as the plain smp forward.
    assert torch.allclose(out.logits, model.net(x), atol=1e-5)


def test_input_size_error_names_sizes() -> None:
    model = SegModel("Unet", "resnet18", num_classes=2)
    with pytest.raises(ValueError, match=r"70x64 is not divisible by the output stride 32.*96x64"):
        model(torch.randn(1, 3, 70, 64))


def test_unknown_encoder_is_clear() -> None:
    with pytest.raises(ValueError, match="resnet1800"):
        SegModel("Unet", "resnet1800", num_classes=2)


def test_encoder_weights_default_none_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    SegModel("Unet", "resnet18", num_classes=2)  # would fail offline if it tried to download
