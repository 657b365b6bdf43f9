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


def test_mask_rcnn_heads_follow_the_config_and_predict_masks() -> None:
    torch.manual_seed(0)
    cfg = dict(
        arch="mask_rcnn", backbone="resnet18", fpn_channels=16, min_size=64, max_size=64, num_classes=3
    )
    model = build_detector(
        {**cfg, "box_representation_size": 32, "mask_head_layers": [8, 12], "mask_dim_reduced": 6}
    )
    heads = model.roi_heads
    assert heads.box_head.fc6.in_features == 16 * 7 * 7 and heads.box_head.fc6.out_features == 32
    assert (
        heads.box_predictor.cls_score.out_features == 3 and heads.box_predictor.bbox_pred.out_features == 12
    )
    convs = [m for m in heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(16, 8), (8, 12)]
    assert (
        heads.mask_predictor.conv5_mask.out_channels == 6
        and heads.mask_predictor.mask_fcn_logits.out_channels == 3
    )
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 48)])[0]
    n = out["boxes"].shape[0]
    assert out["masks"].shape == (n, 1, 64, 48) and ((out["masks"] >= 0) & (out["masks"] <= 1)).all()
    default = build_detector(cfg).roi_heads  # torchvision's sizes unless configured
    assert default.box_head.fc6.out_features == 1024 and default.mask_predictor.conv5_mask.out_channels == 256
    with pytest.raises(ValueError, match="mask_head_layers"):
        build_detector({**cfg, "mask_head_layers": []})
    with pytest.raises(ValueError, match="box_representation_size"):
        build_detector({**cfg, "box_representation_size": 0})
