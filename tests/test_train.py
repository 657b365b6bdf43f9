"""End-to-end runs: fast_dev_run in process and through the CLI, resume, export, bcd-eval on a student."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bcd_lightning
from bcd_lightning.evaluate import evaluate
from bcd_lightning.train import train
from support import FAST, compose_config

CLI_ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def test_fast_dev_run_teacher_training(make_cfg) -> None:
    metrics = train(make_cfg("experiment=embedded/teacher", "debug=fdr", "export_best_to=null"))
    assert "train/loss/total_step" in metrics or "train/loss/total" in metrics


def test_fast_dev_run_distillation(make_cfg, teacher_state_file: Path) -> None:
    metrics = train(make_cfg("experiment=embedded/kd", "debug=fdr", f"teacher.ckpt={teacher_state_file}"))
    assert metrics["train/loss/kd"] > 0
    assert metrics["val/teacher_mIoU"] >= 0


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / "bcd-train"), *args],
        cwd=tmp_path,
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_fast_dev_run_teacher_and_distill(tmp_path: Path, teacher_state_file: Path) -> None:
    fast = list(FAST)
    done = _cli(tmp_path, "experiment=embedded/teacher", "debug=fdr", "export_best_to=null", *fast)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "logs" / "debug" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "config.yaml").is_file() and (runs[0] / ".hydra").is_dir()

    done = _cli(tmp_path, "experiment=embedded/kd", "debug=fdr", f"teacher.ckpt={teacher_state_file}", *fast)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Teacher val mIoU before fitting" in done.stdout
    assert len(list((tmp_path / "logs" / "debug" / "runs").iterdir())) == 2  # never the same dir


def test_cli_help_and_clear_error(tmp_path: Path) -> None:
    done = _cli(tmp_path, "--help")
    # Every preset file of conf/distill is listed (a new one needs no edit here).
    presets = sorted(
        p.stem for p in (Path(bcd_lightning.__file__).parent / "conf" / "distill").glob("*.yaml")
    )
    assert done.returncode == 0 and f"distill: {', '.join(presets)}" in done.stdout
    assert "experiment/embedded: baseline, bcd" in done.stdout and "bcd-train -m" in done.stdout
    done = _cli(tmp_path, "+trainer.max_epoch=1", "debug=fdr")
    assert done.returncode == 1
    assert "max_epochs" in done.stderr and "Traceback" not in done.stderr


def test_resume_continues_epoch_count_and_export(make_cfg, tmp_path: Path) -> None:
    limits = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false")
    first = train(
        make_cfg("trainer.max_epochs=1", *limits, f"export_best_to={tmp_path / 'exported.ckpt'}", name="a")
    )
    last = Path(first["output_dir"]) / "checkpoints" / "last.ckpt"
    assert last.is_file() and (tmp_path / "exported.ckpt").is_file()
    assert torch.load(last, weights_only=True)["epoch"] == 0

    second = train(make_cfg("trainer.max_epochs=3", *limits, f"ckpt_path={last}", name="b"))
    resumed = torch.load(Path(second["output_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2  # epochs 1 and 2 were run after the resumed epoch 0
    assert resumed["global_step"] == 3 * 2
    with open(Path(second["output_dir"]) / "csv" / "metrics.csv") as fh:
        epochs = {row["epoch"] for row in csv.DictReader(fh) if row.get("val/mIoU")}
    assert epochs == {"1", "2"}


def test_student_checkpoint_reloads_into_bcd_eval(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("trainer.max_epochs=1", "trainer.limit_train_batches=2"))
    best = result["best_model_path"]
    eval_cfg = compose_config(
        [f"ckpt_path={best}", f"paths.output_dir={tmp_path / 'eval'}", "print_config=false"], "eval"
    )
    # The eval config's own defaults differ (96 px, 96 images); the checkpoint's run config must win.
    metrics = evaluate(eval_cfg, overridden=set())
    assert metrics["mIoU"] == pytest.approx(result["test/mIoU"], abs=1e-6)
    assert (tmp_path / "eval" / "metrics.json").is_file()
    header = (tmp_path / "eval" / "per_class.csv").read_text().splitlines()[0]
    assert header == "class,mIoU,boundary_iou,boundary_f,connectivity_err"
    assert metrics["boundary_iou"] == pytest.approx(result["test/boundary_iou"], abs=1e-6)


def test_cli_multirun_gives_each_job_its_own_dir(tmp_path: Path) -> None:
    done = _cli(tmp_path, "-m", "debug=fdr", "seed=0,1", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "debug" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    seeds = {(sweeps[0] / j / "config.yaml").read_text().split("seed: ")[1].split()[0] for j in jobs}
    assert seeds == {"0", "1"}


def test_threads_option_sets_torch_threads(make_cfg) -> None:
    before = torch.get_num_threads()
    try:
        train(make_cfg("debug=fdr", "threads=1"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bcd_eval_rejects_checkpoint_of_another_architecture(
    teacher_state_file: Path, tmp_path: Path
) -> None:
    from bcd_lightning.models import TeacherLoadError
    from bcd_lightning.utils.errors import CheckpointError

    # A U-Net ResNet-18 state dict evaluated as the default (MobileNetV3) student.
    cfg = compose_config(
        [f"ckpt_path={teacher_state_file}", f"paths.output_dir={tmp_path}", "print_config=false"], "eval"
    )
    with pytest.raises(CheckpointError, match=r"does not match the architecture.*student=\.\.\.") as info:
        evaluate(cfg, overridden=set())
    assert not isinstance(info.value, TeacherLoadError)  # issue 14: a student checkpoint, not the teacher's
