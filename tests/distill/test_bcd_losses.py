"""The BCD plug-ins: configuration errors, cross-architecture use, ignore pixels, presets, real models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch.testing import assert_close

from bcd_lightning.distill import BoundaryDistillation, BoundaryWeightedKD, ContextDistillation, DistillLoss
from bcd_lightning.distill.context import node_grid
from bcd_lightning.distill.functional import pixel_kl, self_relation_kl
from bcd_lightning.models import SegModel, SegOutput, count_parameters

PLUGINS = {
    "boundary": lambda: BoundaryDistillation(),
    "boundary_l1": lambda: BoundaryDistillation(variant="l1", stage_weights=[1, 2, 3, 4]),
    "boundary_kl": lambda: BoundaryDistillation(variant="kl", dilation=2),
    "bkd": lambda: BoundaryWeightedKD(),
    "context": lambda: ContextDistillation(),
    "context_mse": lambda: ContextDistillation(variant="mse", stride=16),
    "context_capped": lambda: ContextDistillation(stride=None, max_nodes=30, chunk_size=7),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fake_output(
    channels: tuple[int, ...], sizes: tuple[int, ...], decoder: tuple[int, int], seed: int, grad: bool = False
) -> SegOutput:
    """A 64x64, 4-class SegOutput with the given stage widths / sizes and decoder (channels, size)."""
    g = gen(seed)
    stages = tuple(
        torch.randn(2, c, s, s, generator=g).requires_grad_(grad)
        for c, s in zip(channels, sizes, strict=True)
    )
    dec = torch.randn(2, decoder[0], decoder[1], decoder[1], generator=g).requires_grad_(grad)
    return SegOutput(
        logits=torch.randn(2, 4, 64, 64, generator=g).requires_grad_(grad), stages=stages, decoder=dec
    )


def student_output(seed: int = 1) -> SegOutput:
    return fake_output((16, 8, 16, 24, 288), (32, 16, 8, 4, 2), (16, 64), seed, grad=True)


def teacher_output(seed: int = 2) -> SegOutput:
    # Wider, and at other resolutions (a dilated encoder: strides 2, 4, 8, 8, 8; decoder at stride 4).
    return fake_output((64, 64, 128, 256, 512), (32, 16, 8, 8, 8), (32, 16), seed)


def target(seed: int = 3) -> torch.Tensor:
    y = torch.randint(0, 4, (2, 64, 64), generator=gen(seed))
    y[:, :5] = 255
    return y


def detached_copy(out: SegOutput, grad: bool) -> SegOutput:
    return SegOutput(
        logits=out.logits.detach().clone().requires_grad_(grad),
        stages=tuple(f.detach().clone().requires_grad_(grad) for f in out.stages),
        decoder=out.decoder.detach().clone().requires_grad_(grad),
    )


@pytest.mark.parametrize("name", list(PLUGINS))
def test_plugins_have_no_parameters(name: str) -> None:
    loss = PLUGINS[name]()
    assert isinstance(loss, DistillLoss)
    assert count_parameters(loss) == 0 and not list(loss.buffers())


@pytest.mark.parametrize("name", list(PLUGINS))
def test_different_widths_and_sizes_without_adapters(name: str) -> None:
    loss = PLUGINS[name]()
    s, t = student_output(), teacher_output()
    teacher_params = [*t.stages, t.decoder, t.logits]
    for x in teacher_params:
        x.requires_grad_(True)  # a teacher that wrongly tracks gradients must still receive none
    value = loss(s, t, target())
    assert value.ndim == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    assert all(x.grad is None for x in teacher_params)
    grads = [x.grad for x in (*s.stages, s.decoder, s.logits) if x.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", list(PLUGINS))
def test_zero_when_student_equals_teacher(name: str) -> None:
    t = teacher_output()
    assert PLUGINS[name]()(detached_copy(t, grad=True), t, target()).abs().item() <= 1e-6


def test_boundary_check_compatible_names_option_and_counts() -> None:
    loss = BoundaryDistillation(stages=[1, 2, 3, 4])
    loss.check_compatible(5, 5)
    with pytest.raises(ValueError, match=r"`stages`.*index 4.*student has 4 stages.*teacher has 5"):
        loss.check_compatible(4, 5)
    short = SegOutput(logits=torch.zeros(1, 4, 8, 8), stages=tuple(torch.zeros(1, 2, 8, 8) for _ in range(3)))
    with pytest.raises(ValueError, match="stages"):
        loss(short, short, torch.zeros(1, 8, 8, dtype=torch.long))
    bkd = BoundaryWeightedKD(stages=[0, 3])
    bkd.check_compatible(1, 4)  # only the teacher's stages are read
    with pytest.raises(ValueError, match=r"`stages`.*teacher has 3 stages"):
        bkd.check_compatible(5, 3)


@pytest.mark.parametrize(
    ("cls", "kwargs", "option"),
    [
        (BoundaryDistillation, {"stages": []}, "stages"),
        (BoundaryDistillation, {"stages": [1, -1]}, "stages"),
        (BoundaryDistillation, {"stages": [1, 1]}, "stages"),
        (BoundaryDistillation, {"stage_weights": [1.0, 2.0]}, "stage_weights"),
        (BoundaryDistillation, {"stage_weights": [0, 0, 0, 0]}, "stage_weights"),
        (BoundaryDistillation, {"variant": "l2"}, "variant"),
        (BoundaryDistillation, {"dilation": 0}, "dilation"),
        (BoundaryDistillation, {"tau": 0.0}, "tau"),
        (BoundaryWeightedKD, {"tau": -1.0}, "tau"),
        (BoundaryWeightedKD, {"stages": [0.5]}, "stages"),
        (BoundaryWeightedKD, {"dilation": 1.5}, "dilation"),
        (ContextDistillation, {"tau": 0}, "tau"),
        (ContextDistillation, {"stride": 0}, "stride"),
        (ContextDistillation, {"max_nodes": -3}, "max_nodes"),
        (ContextDistillation, {"chunk_size": 0}, "chunk_size"),
        (ContextDistillation, {"variant": "cosine"}, "variant"),
    ],
)
def test_bad_options_raise_one_clear_error(cls: type, kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=f"`{option}`") as info:
        cls(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value) or str(next(iter(kwargs.values()))) in str(
        info.value
    )


def test_boundary_weighted_kd_ignores_ignored_pixels() -> None:
    loss = BoundaryWeightedKD()
    s, t, y = student_output(), teacher_output(), target()
    base = loss(s, t, y)
    changed = detached_copy(s, grad=True)
    changed.logits.data[:, :, :5] = torch.randn(2, 4, 5, 64, generator=gen(9)) * 100  # only ignored rows
    assert_close(loss(changed, t, y), base)
    changed.logits.data[:, 0, 10] += 5.0  # a valid row does change it
    assert not torch.allclose(loss(changed, t, y), base)
    assert loss(s, t, torch.full_like(y, 255)).item() == 0.0


def test_boundary_weighted_kd_weights_teacher_boundaries() -> None:
    # Teacher stages with one vertical interface (orthogonal features) at full resolution: the fused weight
    # is 3/8 on columns 31 and 32 and 0 elsewhere, so the loss is the mean KL over those two columns.
    feat = torch.zeros(2, 3, 64, 64)
    feat[:, 0, :, :32] = 1.0
    feat[:, 1, :, 32:] = 2.0
    s, t = student_output(), teacher_output()
    t = SegOutput(logits=t.logits, stages=(feat, feat), decoder=t.decoder)
    value = BoundaryWeightedKD(stages=[0, 1], tau=2.0)(s, t, torch.zeros(2, 64, 64, dtype=torch.long))
    expected = 4.0 * pixel_kl(s.logits, t.logits, 2.0)[:, :, 31:33].mean()
    assert_close(value, expected, rtol=1e-5, atol=1e-7)


def test_node_grid() -> None:
    assert node_grid((64, 64), [(64, 64), (64, 64)], 8, None) == (8, 8)
    assert node_grid((65, 130), [(65, 130)], 8, None) == (9, 17)  # ceil, partial windows kept
    assert node_grid((64, 64), [(64, 64), (4, 4)], 8, None) == (4, 4)  # a coarser decoder is kept
    assert node_grid((64, 64), [(32, 32)], None, None) == (32, 32)
    assert node_grid((64, 64), [(64, 64)], 4, 20) == (4, 4)  # 16x16 > 20 nodes: pool by 4
    assert node_grid((64, 64), [(64, 64)], 4, 256) == (16, 16)


def test_context_default_pools_decoder_to_stride_8() -> None:
    s, t = student_output(), teacher_output()
    t = SegOutput(logits=t.logits, stages=t.stages, decoder=torch.randn(2, 32, 64, 64, generator=gen(5)))
    expected = self_relation_kl(F.avg_pool2d(s.decoder, 8), F.avg_pool2d(t.decoder, 8), tau=1.0)
    assert_close(ContextDistillation()(s, t, target()), expected)


def test_context_needs_a_decoder_feature() -> None:
    s = student_output()
    no_decoder = SegOutput(logits=s.logits, stages=s.stages)
    with pytest.raises(ValueError, match="decoder"):
        ContextDistillation()(s, no_decoder, target())


@pytest.mark.parametrize("preset", ["bcd", "boundary", "context"])
def test_presets_compose_and_run(preset: str) -> None:
    with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"distill={preset}"])
    losses = cfg.distill.losses
    expected = {"bcd": {"kd", "boundary", "bkd", "context"}, "boundary": {"boundary"}, "context": {"context"}}
    assert set(losses) == expected[preset]
    s, t, y = student_output(), teacher_output(), target()
    for entry in losses.values():
        assert set(entry) <= {"loss", "weight"} and entry.weight > 0
        loss = instantiate(entry.loss)
        loss.check_compatible(5, 5)
        assert torch.isfinite(loss(s, t, y))


def test_real_default_models_end_to_end() -> None:
    torch.manual_seed(0)
    teacher = SegModel(arch="Unet", encoder_name="resnet18", num_classes=4).eval().requires_grad_(False)
    student = SegModel(
        arch="Unet",
        encoder_name="tu-mobilenetv3_small_050",
        num_classes=4,
        decoder_channels=[64, 32, 16, 16, 16],
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        t = teacher(x)
    s = student(x)
    y = torch.randint(0, 4, (1, 64, 64))
    total = sum(PLUGINS[name]()(s, t, y) for name in ("boundary", "bkd", "context"))
    total.backward()
    assert torch.isfinite(total)
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.net.encoder.parameters())
