"""Teacher fast path: only the outputs the losses read, optional bf16 autocast, channels_last."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bcd_lightning
from bcd_lightning import builders
from bcd_lightning.distill import BoundaryDistillation, BoundaryWeightedKD, ContextDistillation, LogitKD
from bcd_lightning.distill.base import teacher_fields
from bcd_lightning.distill.functional import boundary_map
from bcd_lightning.models import FrozenTeacher, SegModel
from bcd_lightning.utils.config_check import ConfigError


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize(
    ("distill", "fields", "decoder_runs", "head_runs"),
    [
        ("boundary", {"stages"}, 0, 0),  # stages only: neither decoder nor head
        ("context", {"decoder"}, 1, 0),  # decoder feature only: no head
        ("kd", {"logits"}, 1, 1),  # logits: everything runs, but no stage list is kept
        ("bcd", {"logits", "stages", "decoder"}, 1, 1),
    ],
)
def test_teacher_computes_only_what_the_losses_read(
    make_cfg, teacher_state_file: Path, distill: str, fields: set, decoder_runs: int, head_runs: int
) -> None:
    cfg = make_cfg(f"distill={distill}", f"teacher.ckpt={teacher_state_file}")
    datamodule = builders.build_datamodule(cfg)
    module = builders.build_module(cfg, datamodule)
    assert module.teacher_fields == fields
    net = module.teacher.model.net
    decoder_calls, head_calls = _count_calls(net.decoder), _count_calls(net.segmentation_head)
    batch = next(iter(datamodule.train_dataloader()))
    out = module._teacher_outputs(batch)
    assert (decoder_calls[0], head_calls[0]) == (decoder_runs, head_runs)
    assert (out.logits is not None) == ("logits" in fields)
    assert (out.decoder is not None) == ("decoder" in fields)
    assert (len(out.stages) == 5) == ("stages" in fields) and (out.stages == ()) == ("stages" not in fields)
    module.training_step(batch, 0)  # the losses run on exactly these outputs


def test_every_loss_declares_the_teacher_fields_it_reads() -> None:
    assert teacher_fields(LogitKD()) == {"logits"}
    assert teacher_fields(BoundaryDistillation()) == {"stages"}
    assert teacher_fields(BoundaryWeightedKD()) == {"logits", "stages"}
    assert teacher_fields(ContextDistillation()) == {"decoder"}  # student logits: only for the size
    torch.manual_seed(0)
    student = SegModel("Unet", "tu-mobilenetv3_small_050", 4, decoder_channels=[64, 32, 16, 16, 16])
    teacher = FrozenTeacher(SegModel("Unet", "resnet18", 4))
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    s = student(x)
    for loss in (LogitKD(), BoundaryDistillation(), BoundaryWeightedKD(), ContextDistillation()):
        # Each loss works from a teacher output holding only the fields it declares.
        loss(s, teacher(x, outputs=teacher_fields(loss)), y)


def test_bf16_teacher_stays_within_the_stated_tolerance_of_fp32() -> None:
    torch.manual_seed(0)
    model = SegModel("Unet", "resnet18", 4)
    fp32, bf16 = FrozenTeacher(model), FrozenTeacher(model, precision="bf16")
    x = torch.randn(2, 3, 64, 64)
    a, b = fp32(x), bf16(x)
    assert b.logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in b.stages)
    # Stated tolerance (docs/performance.md): logits within 5% of their largest magnitude, boundary
    # maps (values in [0, 1]) within 0.05, pixel-KD against the same student within 2%.
    scale = a.logits.abs().max()
    assert (b.logits - a.logits).abs().max() <= 0.05 * scale
    assert (b.logits - a.logits).abs().max() > 0  # autocast really ran in bf16
    for i in (1, 2, 3, 4):
        assert (boundary_map(b.stages[i]) - boundary_map(a.stages[i])).abs().max() <= 0.05
    student_logits = torch.randn_like(a.logits)
    y = torch.zeros(2, 64, 64, dtype=torch.long)
    s = type(a)(logits=student_logits)
    kd32, kd16 = LogitKD()(s, a, y), LogitKD()(s, b, y)
    assert kd16 == pytest.approx(float(kd32), rel=0.02)


def test_teacher_precision_comes_from_the_config(make_cfg, teacher_state_file: Path) -> None:
    cfg = make_cfg("distill=kd", f"teacher.ckpt={teacher_state_file}", "teacher.precision=bf16")
    assert builders.build_teacher(cfg).precision == "bf16"
    cfg = make_cfg("distill=kd", f"teacher.ckpt={teacher_state_file}", "teacher.precision=8")
    with pytest.raises(ConfigError, match=r"teacher.precision must be one of"):
        builders.build_teacher(cfg)


def test_channels_last_changes_the_layout_not_the_numbers() -> None:
    torch.manual_seed(0)
    plain = SegModel("Unet", "tu-mobilenetv3_small_050", 4, decoder_channels=[64, 32, 16, 16, 16])
    nhwc = SegModel(
        "Unet", "tu-mobilenetv3_small_050", 4, decoder_channels=[64, 32, 16, 16, 16], channels_last=True
    )
    assert plain.state_dict().keys() == nhwc.state_dict().keys()
    nhwc.load_state_dict(plain.state_dict())
    nhwc.to(memory_format=torch.channels_last)  # load_state_dict copies into the existing NHWC tensors
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    plain.eval(), nhwc.eval()
    a, b = plain(x), nhwc(x)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-5)
    assert b.stages[2].is_contiguous(memory_format=torch.channels_last)


def test_compile_keeps_checkpoint_keys(make_cfg) -> None:
    cfg = make_cfg("compile=true")
    module = builders.build_module(cfg, builders.build_datamodule(cfg))
    assert not any("_orig_mod" in k for k in module.state_dict())


PRESETS = sorted(
    p.stem
    for p in (Path(bcd_lightning.__file__).parent / "conf" / "distill").glob("*.yaml")
    if p.stem != "none"
)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_on_only_the_teacher_fields_it_declares(
    make_cfg, teacher_state_file: Path, preset: str
) -> None:
    # A loss reading a teacher field it does not declare in `uses` / `teacher_uses` fails here.
    cfg = make_cfg(f"distill={preset}", f"teacher.ckpt={teacher_state_file}")
    datamodule = builders.build_datamodule(cfg)
    module = builders.build_module(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    assert torch.isfinite(module.training_step(batch, 0))
