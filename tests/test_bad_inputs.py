"""Every bad input of the reliability issue through the real ``bcd-train`` CLI: exit status 1, exactly one
``error:`` line naming the problem, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import FAST

BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
SMALL_DATA = [o for o in FAST if not o.startswith("data.")]  # for datasets other than the synthetic one


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A teacher state dict, a state dict of another architecture, an empty and a corrupt checkpoint."""
    from bcd_lightning.builders import build_model
    from support import compose_config

    tmp = tmp_path_factory.mktemp("bad_inputs")
    cfg = compose_config(["paths.output_dir=unused"])
    torch.manual_seed(0)
    paths = {"teacher": tmp / "teacher.pt", "other_arch": tmp / "student_state.pt"}
    torch.save(build_model(cfg.teacher.model).state_dict(), paths["teacher"])
    torch.save(build_model(cfg.student).state_dict(), paths["other_arch"])
    paths["empty"], paths["corrupt"] = tmp / "empty.ckpt", tmp / "corrupt.ckpt"
    paths["empty"].write_bytes(b"")
    paths["corrupt"].write_bytes(b"PK\x03\x04" + b"\x00garbage" * 64)  # a zip header, then junk
    paths["missing"] = tmp / "missing.ckpt"
    paths["tmp"] = tmp
    return paths


def _fails_with(tmp_path: Path, args: list[str], *phrases: str, fast: bool = True) -> str:
    done = subprocess.run(
        [str(BIN / "bcd-train"), *(FAST if fast else SMALL_DATA), "debug=fdr", *args],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1, done.stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


# (overrides, key phrases); {name} is replaced by the path of files[name].
CASES = {
    "config_typo": (
        ["trainer.max_epoch=1"],
        ["'trainer.max_epoch'", "Did you mean 'max_epochs'", "max_steps"],
    ),
    "unknown_group_option": (["distill=kdd"], ["Unknown option 'kdd'", "config group 'distill'", "bcd"]),
    "wrong_type": (["trainer.max_epochs=abc"], ["'trainer.max_epochs'", "wrong type", "int"]),
    "class_count_mismatch": (
        ["distill=kd", "teacher.ckpt={teacher}", "teacher.model.num_classes=5"],
        ["teacher.model.num_classes=5", "student.num_classes=4"],
    ),
    "teacher_ckpt_missing": (["distill=kd", "teacher.ckpt={missing}"], ["Teacher checkpoint not found"]),
    "teacher_other_architecture": (
        ["distill=kd", "teacher.ckpt={other_arch}"],
        ["does not match the architecture", "missing keys ['net.", "shape mismatches ["],
    ),
    "unsupported_encoder": (
        ["student.encoder_name=resnet999"],
        ["Unsupported encoder 'resnet999'", "resnet18"],
    ),
    "size_not_divisible": (
        ["data.train_set.image_size=70", "data.val_set.image_size=70"],
        ["70x70 is not divisible by the output stride 32", "96x96"],
    ),
    "ckpt_path_missing": (["ckpt_path={missing}"], ["checkpoint not found", "missing.ckpt"]),
    "ckpt_empty": (["ckpt_path={empty}"], ["empty (0 bytes)"]),
    "ckpt_corrupt": (["ckpt_path={corrupt}"], ["could not be read", "corrupt"]),
    "ckpt_last_absent": (["ckpt_path=last"], ["ckpt_path=last: no checkpoint at", "hydra.run.dir="]),
    "batch_larger_than_dataset": (
        ["data.batch_size=32"],
        ["data.batch_size=32 is larger than the training set"],
    ),
    "stage_the_model_lacks": (
        ["distill=boundary", "teacher.ckpt={teacher}", "distill.losses.boundary.loss.stages=[7]"],
        ["distill.losses.boundary", "stage index 7", "valid indices 0..4"],
    ),
    "nonfinite_loss": (
        ["distill=kd", "teacher.ckpt={teacher}", "distill.losses.kd.weight=nan"],
        ["Non-finite loss at step 0", "kd=", "(weight nan)", "nonfinite=skip"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_clear_line(case: str, files: dict[str, Path], tmp_path: Path) -> None:
    args, phrases = CASES[case]
    _fails_with(tmp_path, [a.format(**files) for a in args], *phrases)


@pytest.mark.parametrize("dataset", ["folder", "cityscapes"])
def test_dataset_root_that_does_not_exist(dataset: str, tmp_path: Path) -> None:
    root = tmp_path / "no_such_dir"
    _fails_with(tmp_path, [f"data={dataset}", f"data.root={root}"], str(root), fast=False)
