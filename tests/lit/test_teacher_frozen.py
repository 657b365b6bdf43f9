"""The teacher cannot drift: bitwise-unchanged weights and buffers, eval mode, not optimised, not saved."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from bcd_lightning import builders
from bcd_lightning.distill import DistillLoss
from bcd_lightning.lit import DistillationModule


class RecordTeacherMode(L.Callback):
    def __init__(self) -> None:
        self.modes: list[bool] = []
        self.grad_flags: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.modes.append(any(m.training for m in pl_module.teacher.modules()))
        self.grad_flags.append(any(p.grad is not None for p in pl_module.teacher.parameters()))


def test_teacher_is_bitwise_unchanged_after_fit_with_validation(make_cfg, teacher_state_file: Path) -> None:
    cfg = make_cfg(
        "experiment=embedded/kd",
        f"teacher.ckpt={teacher_state_file}",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "test=false",
    )
    datamodule = builders.build_datamodule(cfg)
    module = builders.build_module(cfg, datamodule)
    assert isinstance(module, DistillationModule)
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    assert any("num_batches_tracked" in k for k in before) and any("running_mean" in k for k in before)

    recorder = RecordTeacherMode()
    trainer = builders.build_trainer(
        cfg, [*builders.build_callbacks(cfg), recorder], builders.build_loggers(cfg)
    )
    trainer.fit(module, datamodule=datamodule)

    after = module.teacher.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"teacher tensor {key} changed"
    assert len(recorder.modes) == 6 and not any(recorder.modes)
    assert not any(recorder.grad_flags)

    teacher_ids = {id(p) for p in module.teacher.parameters()}
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised and not (teacher_ids & optimised)
    student_ids = {id(p) for p in module.model.parameters()}
    assert student_ids <= optimised

    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert not any(k.startswith("teacher") for k in keys)
    assert {k for k in keys if k.startswith("model.")} == {f"model.{k}" for k in module.model.state_dict()}
    # Parameter count in the checkpoint equals the student's: nothing of the teacher came along.
    n_saved = sum(
        v.numel() for k, v in ckpt["state_dict"].items() if k.startswith("model.") and v.is_floating_point()
    )
    n_student = sum(v.numel() for v in module.model.state_dict().values() if v.is_floating_point())
    assert n_saved == n_student


def test_teacher_moves_with_the_module_but_is_not_a_submodule(make_cfg, teacher_state_file: Path) -> None:
    cfg = make_cfg("experiment=embedded/kd", f"teacher.ckpt={teacher_state_file}")
    module = builders.build_module(cfg, builders.build_datamodule(cfg))
    assert "teacher" not in dict(module.named_children())
    module.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in module.teacher.parameters())
    module.train()
    assert not module.teacher.training and not any(m.training for m in module.teacher.modules())


class NaNLoss(DistillLoss):
    def forward(self, student, teacher, target, ignore_index=255):
        return student.logits.sum() * float("nan")


def test_non_finite_term_stops_the_step_naming_it(make_cfg, teacher_state_file: Path) -> None:
    cfg = make_cfg("experiment=embedded/kd", f"teacher.ckpt={teacher_state_file}")
    datamodule = builders.build_datamodule(cfg)
    module = builders.build_module(cfg, datamodule)
    module.distill_losses["broken"] = NaNLoss()
    module.loss_weights["broken"] = 1.0
    batch = next(iter(datamodule.train_dataloader()))
    with pytest.raises(FloatingPointError, match=r"broken=nan") as info:
        module.training_step(batch, 0)
    assert "kd=" not in str(info.value)
