"""Connectors: widths read from real models, adapter kinds, feature selection errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bcd_lightning.distill import ChannelWiseDistillation, PairwiseSimilarityDistillation
from bcd_lightning.distill.adapters import ModelWidths, bind_adapters, build_adapter, model_widths
from bcd_lightning.models import FrozenTeacher, SegModel
from bcd_lightning.models.outputs import SegOutput


@pytest.fixture(scope="module")
def models() -> tuple[SegModel, FrozenTeacher]:
    student = SegModel(
        arch="Unet",
        encoder_name="tu-mobilenetv3_small_050",
        num_classes=4,
        decoder_channels=[64, 32, 16, 16, 8],
    )
    teacher = FrozenTeacher(SegModel(arch="Unet", encoder_name="resnet18", num_classes=4))
    return student, teacher


def test_widths_of_the_default_models(models) -> None:
    student, teacher = models
    assert model_widths(student) == ModelWidths(logits=4, stages=(16, 8, 16, 24, 288), decoder=8)
    assert model_widths(teacher) == ModelWidths(logits=4, stages=(64, 64, 128, 256, 512), decoder=16)
    with torch.no_grad():  # the widths are those of the actual outputs
        s = student(torch.randn(1, 3, 64, 64))
    assert s.decoder is not None and s.decoder.shape[1] == 8
    assert tuple(f.shape[1] for f in s.stages) == model_widths(student).stages


def test_bind_builds_the_adapter_each_input_needs(models) -> None:
    student, teacher = models
    losses = {
        "decoder": ChannelWiseDistillation("decoder"),  # 8 -> 16: conv
        "stage": ChannelWiseDistillation(4, student_adapter="conv1x1_bn"),  # 288 -> 512
        "logits": ChannelWiseDistillation("logits"),  # same width
        "relations": PairwiseSimilarityDistillation(2),  # channel-free: auto = none
    }
    for loss in losses.values():
        bind_adapters(loss, student, teacher)
    assert isinstance(losses["decoder"].adapter, nn.Conv2d)
    assert (losses["decoder"].adapter.in_channels, losses["decoder"].adapter.out_channels) == (8, 16)
    conv, bn = losses["stage"].adapter
    assert (conv.in_channels, conv.out_channels, conv.bias, bn.num_features) == (288, 512, None, 512)
    assert isinstance(losses["logits"].adapter, nn.Identity)
    assert isinstance(losses["relations"].adapter, nn.Identity)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t = teacher(x)
    s = student(x)
    for loss in losses.values():
        assert torch.isfinite(loss(s, t, torch.zeros(2, 64, 64, dtype=torch.long)))


def test_build_adapter_kinds() -> None:
    assert isinstance(build_adapter("auto", 4, 4), nn.Identity)
    assert isinstance(build_adapter("auto", 4, 6), nn.Conv2d)
    assert isinstance(build_adapter("none", 4, 6), nn.Identity)
    with pytest.raises(ValueError, match="conv1x1"):
        build_adapter("linear", 4, 6)


def test_missing_inputs_are_named() -> None:
    s = SegOutput(logits=torch.zeros(1, 4, 4, 4), stages=(torch.zeros(1, 2, 4, 4),))
    with pytest.raises(ValueError, match=r"returned 1 stages"):
        ChannelWiseDistillation(3)(s, s, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"no `decoder`"):
        ChannelWiseDistillation("decoder")(s, s, torch.zeros(1, 4, 4))
    assert ChannelWiseDistillation(3).uses == frozenset({"stages"})
    assert ChannelWiseDistillation("decoder").teacher_uses == frozenset({"decoder"})
