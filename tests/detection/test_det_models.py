"""Detectors build from scratch (no download), with trainable BatchNorm, and their levels' strides."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.misc import FrozenBatchNorm2d

from bcd_lightning.detection.features import by_stride
from bcd_lightning.detection.models import build_detector, count_parameters


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a detector builder tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def strides_of(model: torch.nn.Module, size: int = 128) -> list[int]:
    model.eval()
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        feats = model.backbone(x)
    return [size // f.shape[-1] for f in feats.values()]


@pytest.mark.parametrize(
    ("arch", "backbone", "strides"),
    [
        ("faster_rcnn", "resnet18", [4, 8, 16, 32, 64]),
        ("retinanet", "resnet18", [8, 16, 32, 64, 128]),
        ("fcos", "resnet18", [8, 16, 32, 64, 128]),
        ("faster_rcnn", "mobilenet_v3_small", [32, 32, 64]),
    ],
)
def test_from_scratch_trainable_bn_and_strides(arch: str, backbone: str, strides: list[int]) -> None:
    model = build_detector(dict(arch=arch, backbone=backbone, fpn_channels=32, min_size=128, max_size=128))
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.body.modules())
    assert all(p.requires_grad for p in model.parameters())  # trainable_layers = all
    assert strides_of(model) == strides
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_mobilenet_two_stride32_levels_pair_as_one() -> None:
    model = build_detector(dict(backbone="mobilenet_v3_small", fpn_channels=8, min_size=128, max_size=128))
    model.eval()
    x = torch.zeros(1, 3, 128, 128)
    feats = model.backbone(x)
    paired = by_stride(feats, ImageList(x, [(128, 128)]))
    assert sorted(paired) == [32, 64]
    assert paired[32] is feats["1"]  # the deeper of the two stride-32 levels


def test_bad_config_names_the_key() -> None:
    with pytest.raises(ValueError, match="arch='yolo'"):
        build_detector(dict(arch="yolo"))
    with pytest.raises(ValueError, match="num_classes=1"):
        build_detector(dict(num_classes=1))
