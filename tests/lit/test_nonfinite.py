"""``nonfinite=skip``: a step whose loss is NaN changes nothing (weights, optimizer, BatchNorm statistics)
and is counted; ``nonfinite=stop`` is covered through the CLI in tests/test_bad_inputs.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bcd_lightning import builders
from bcd_lightning.lit.nonfinite import NonFiniteGuard


def test_every_step_skipped_leaves_the_student_untouched(make_cfg, teacher_state_file: Path) -> None:
    cfg = make_cfg(
        "distill=kd",
        f"teacher.ckpt={teacher_state_file}",
        "distill.losses.kd.weight=nan",  # every step's total is NaN
        "nonfinite=skip",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "callbacks=none",
        "logger=csv",
    )
    datamodule = builders.build_datamodule(cfg)
    module = builders.build_module(cfg, datamodule)
    before = copy.deepcopy(module.model.state_dict())
    assert any("running_mean" in k for k in before)  # BatchNorm statistics are part of the check
    trainer = builders.build_trainer(cfg, [], builders.build_loggers(cfg))
    trainer.fit(module, datamodule=datamodule)

    after = module.model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert module.nonfinite_guard.skipped == 3
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 3.0


def test_policy_is_validated_and_the_count_survives_a_checkpoint() -> None:
    with pytest.raises(ValueError, match="nonfinite='ignore' is not one of stop, skip"):
        NonFiniteGuard("ignore")
    guard = NonFiniteGuard("skip")
    guard.skipped = 4
    restored = NonFiniteGuard("skip")
    restored.load_state_dict(guard.state_dict())
    assert restored.skipped == 4
