"""FrozenTeacher: eval lock, no gradients, strict loading with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bcd_lightning.models import FrozenTeacher, SegModel, TeacherLoadError


def _model(encoder: str = "resnet18") -> SegModel:
    return SegModel("Unet", encoder, num_classes=3)


def test_eval_locked_and_gradient_free() -> None:
    teacher = FrozenTeacher(_model())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = teacher(x)
    assert not out.logits.requires_grad and all(not s.requires_grad for s in out.stages)
    # Outputs are normal tensors (no_grad, not inference_mode): usable in a student's autograd graph.
    (out.logits * x.mean()).sum().backward()
    assert x.grad is not None


def test_bn_statistics_do_not_move_in_forward() -> None:
    teacher = FrozenTeacher(_model())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    teacher(torch.randn(2, 3, 64, 64) * 5)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_loads_plain_state_dict_and_lightning_checkpoint(tmp_path: Path) -> None:
    source = _model()
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    lightning_style = tmp_path / "run.ckpt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, lightning_style
    )
    for path in (plain, lightning_style):
        teacher = FrozenTeacher(_model(), checkpoint=path)
        for k, v in source.state_dict().items():
            assert torch.equal(teacher.model.state_dict()[k], v)


def test_other_architecture_lists_mismatched_keys(tmp_path: Path) -> None:
    path = tmp_path / "r34.pt"
    torch.save(_model("resnet34").state_dict(), path)
    with pytest.raises(TeacherLoadError, match=r"does not match.*unexpected keys \['net\.encoder"):
        FrozenTeacher(_model("resnet18"), checkpoint=path)


def test_missing_empty_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(TeacherLoadError, match="not found"):
        FrozenTeacher(_model(), checkpoint=tmp_path / "nope.ckpt")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(TeacherLoadError, match="empty"):
        FrozenTeacher(_model(), checkpoint=empty)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"definitely not a zip file")
    with pytest.raises(TeacherLoadError, match="could not be read"):
        FrozenTeacher(_model(), checkpoint=corrupt)


def test_same_keys_other_widths_is_a_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save(SegModel("Unet", "resnet18", num_classes=7).state_dict(), path)
    with pytest.raises(TeacherLoadError, match=r"1 shape mismatches|2 shape mismatches"):
        FrozenTeacher(_model(), checkpoint=path)
