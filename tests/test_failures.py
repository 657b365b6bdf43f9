"""Issue 14 through the real CLIs: a failed job never ends its sweep, errors keep what matters (one
line for a user mistake, the traceback for a bug), no silent wrong results, signals handled as SLURM
sends them. Each test names the numbered case of the issue it covers."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from support import FAST

BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
QUIET = ["print_config=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
TINY = [*FAST, "threads=1"]
#: A folder dataset run in seconds: small crops, no workers, batch 2.
FOLDER = [
    "data=folder",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.train_set.transform.crop_size=[32,32]",
    "logger=csv",
    "threads=1",
    *QUIET,
]


def run(
    cmd: str, args: list[str], cwd: Path, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess:
    exe = [str(BIN / cmd)] if not cmd.endswith(".py") else [sys.executable, cmd]
    return subprocess.run(
        [*exe, *args],
        cwd=cwd,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=kw.pop("timeout", 600),
        **kw,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def one_error(done: subprocess.CompletedProcess, *phrases: str) -> str:
    """Exit status 1, no traceback, exactly one ``error:`` line containing every phrase."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr[-3000:]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def folder_tree(
    root: Path, names: tuple[str, ...] = ("road", "car", "person"), n: tuple[int, int] = (4, 2)
) -> Path:
    """``classes.yaml`` + images/{train,val} + masks/{train,val}: 64x96 random images, masks of every class."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": list(names)}))
    for split, count in zip(("train", "val"), n, strict=True):
        for i in range(count):
            save(root / "images" / split / f"s{i:02d}.png", rng.integers(0, 256, (64, 96, 3)))
            save(root / "masks" / split / f"s{i:02d}.png", rng.integers(0, len(names), (64, 96)))
    return root


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bcd_lightning.builders import build_model
    from support import compose_config

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_model(compose_config(["paths.output_dir=unused"]).teacher.model).state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------------ case 1


def _sweep_dir(logs: Path) -> Path:
    (sweep,) = list((logs / "debug" / "multiruns").iterdir())
    return sweep


LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=slurm_local", "hydra.launcher.timeout_min=10"],
}


@pytest.mark.parametrize(
    "launcher", ["basic", "joblib", pytest.param("submitit_local", marks=pytest.mark.slow)]
)
def test_case1_one_failing_job_never_ends_the_sweep(launcher: str, tmp_path: Path) -> None:
    args = ["-m", "debug=fdr", *TINY, f"paths.log_dir={tmp_path / 'logs'}", *LAUNCHERS[launcher]]
    done = run("bcd-train", [*args, "student.encoder_name=not_an_encoder,resnet18"], tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    sweep = _sweep_dir(tmp_path / "logs")
    failed = json.loads((sweep / "0" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "Unsupported encoder 'not_an_encoder'" in failed["error"]
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "completed"  # job #1 ran
    assert (
        "1 job(s) failed:" in done.stderr and f"{sweep / '0'}: ValueError: Unsupported encoder" in done.stderr
    )


@pytest.mark.slow
def test_case1_a_failed_optuna_trial_is_marked_failed_and_the_study_goes_on(
    tmp_path: Path, teacher_file: Path
) -> None:
    """A non-finite loss (nonfinite=stop) in one trial: the trial fails, the other trial runs, the study
    writes its results, and the command exits 1 naming the failed trial."""
    args = [
        "-m",
        "debug=fdr",
        *TINY,
        f"paths.log_dir={tmp_path / 'logs'}",
        "distill=kd",
        f"teacher.ckpt={teacher_file}",
        "hydra/sweeper=optuna",
        # random, seeded: trials 1.0, inf, 1.0 (the grid sampler of hydra-optuna-sweeper 1.3 crashes
        # when the last grid point fails: Study.stop outside an objective).
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.max_failure_rate=1.0",  # as hparams_search=bcd_optuna sets it (the plugin: 0.0)
        "hydra.sweeper.direction=maximize",
        "distill.losses.kd.weight=choice(inf,1.0)",
    ]
    done = run("bcd-train", args, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    sweep = _sweep_dir(tmp_path / "logs")
    records = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(3)]
    assert [r["status"] for r in records] == ["completed", "failed", "completed"]  # the study went on
    assert "Non-finite loss" in next(r for r in records if r["status"] == "failed")["error"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"distill.losses.kd.weight": 1.0}
    assert "1 job(s) failed:" in done.stderr


# ------------------------------------------------------------------------------------------------ case 2

FAULT = """
import torch
from bcd_lightning.models import seg_model

def forward(self, x, outputs=None):
    raise {error}

seg_model.SegModel.forward = forward
"""


def _with_fault(tmp_path: Path, error: str) -> dict[str, str]:
    """A ``sitecustomize`` that makes the student's forward raise ``error``: a bug, not a user mistake."""
    site = tmp_path / "fault"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAULT.format(error=error))
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_case2_a_bug_keeps_its_traceback_on_the_console_and_in_train_log(tmp_path: Path) -> None:
    env = _with_fault(
        tmp_path, 'RuntimeError("The size of tensor a (4) must match the size of tensor b (5)")'
    )
    run_dir = tmp_path / "run"
    done = run("bcd-train", ["debug=fdr", *TINY, f"hydra.run.dir={run_dir}"], tmp_path, env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback (most recent call last)" in done.stderr and "sitecustomize.py" in done.stderr
    assert "RuntimeError: The size of tensor a (4) must match" in done.stderr
    assert not error_lines(done.stderr)  # not reported as a user mistake
    log = (run_dir / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "The size of tensor a (4)" in log
    assert json.loads((run_dir / "metrics.json").read_text())["error_type"] == "RuntimeError"


def test_case2_out_of_memory_keeps_the_traceback_and_adds_a_hint(tmp_path: Path) -> None:
    env = _with_fault(tmp_path, 'torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")')
    done = run("bcd-train", ["debug=fdr", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, env=env)
    assert done.returncode == 1 and "Traceback" in done.stderr
    (hint,) = error_lines(done.stderr)
    assert "out of memory" in hint and "data.batch_size" in hint and "teacher.precision=bf16" in hint


# ------------------------------------------------------------------------------------------------ case 3


def test_case3_messages_are_not_read_as_markup(tmp_path: Path) -> None:
    root = tmp_path / "ds" / "a[/b]"
    done = run("bcd-train", [*FOLDER, f"data.root='{root}'"], tmp_path)  # quoted for Hydra's grammar
    one_error(done, f"{root}")
    assert "MarkupError" not in done.stderr


def test_case3_file_names_and_palette_text_with_brackets_survive(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "ds")
    save(root / "images" / "train" / "s03[final].png", np.zeros((64, 96, 3)))
    one_error(
        run("bcd-train", [*FOLDER, f"data.root={root}"], tmp_path), "images without a mask: s03[final].png"
    )
    (root / "images" / "train" / "s03[final].png").unlink()
    (root / "classes.yaml").write_text(
        "names: [road, car, person]\npalette: [[0, 0, 0], [1, 2], [3, 4, 5]]\n"
    )
    one_error(run("bcd-train", [*FOLDER, f"data.root={root}"], tmp_path), "a colour must be [r, g, b]")


def test_case3_disk_full_keeps_torchs_bracketed_text(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bcd_lightning.utils.atomic import atomic_write
    from bcd_lightning.utils.errors import StorageError, print_error

    torch_text = "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: file write failed"

    def full(_: Any) -> None:
        raise RuntimeError(torch_text)

    with pytest.raises(StorageError) as info:
        atomic_write(tmp_path / "last.ckpt", full)
    print_error(str(info.value))
    err = capsys.readouterr().err
    assert "[enforce fail at inline_container.cc:603]" in err and "disk is full" in err
    assert str(tmp_path / "last.ckpt") in err
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


# ------------------------------------------------------------------------------------------------ case 4


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One epoch on a road/car/person folder dataset; its best checkpoint."""
    from bcd_lightning.train import train
    from support import compose_config

    tmp = tmp_path_factory.mktemp("folder_run")
    root = folder_tree(tmp / "ds")
    cfg = compose_config(
        [
            *FOLDER,
            f"data.root={root}",
            f"paths.log_dir={tmp / 'logs'}",
            f"paths.output_dir={tmp / 'run'}",
            "trainer.max_epochs=1",
            "test=false",
        ]
    )
    result = train(cfg)
    return {"root": root, "ckpt": result["best_model_path"], "tmp": tmp}


def _eval_classes(out: Path) -> list[str]:
    return list(json.loads((out / "metrics.json").read_text())["per_class"])


def test_case4_eval_overrides_apply_on_the_checkpoints_own_data(
    folder_run: dict[str, Any], tmp_path: Path
) -> None:
    ckpt = folder_run["ckpt"]
    out = tmp_path / "e1"
    done = run(
        "bcd-eval", [f"ckpt_path={ckpt}", "data.num_workers=0", f"hydra.run.dir={out}", "split=val"], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _eval_classes(out) == ["road", "car", "person"] and "blob_a" not in done.stdout
    moved = shutil.copytree(folder_run["root"], tmp_path / "moved")
    shutil.rmtree(folder_run["root"] / "images" / "val")  # the old place cannot be what is read
    try:
        out = tmp_path / "e2"
        done = run(
            "bcd-eval",
            [f"ckpt_path={ckpt}", f"data.root={moved}", f"hydra.run.dir={out}", "split=val"],
            tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert _eval_classes(out) == ["road", "car", "person"]
        assert str(moved) in (out / "config.yaml").read_text()
    finally:
        shutil.copytree(moved / "images" / "val", folder_run["root"] / "images" / "val")


def test_case4_eval_refuses_another_label_space(folder_run: dict[str, Any], tmp_path: Path) -> None:
    other = folder_tree(tmp_path / "other", names=("sky", "tree", "house"))
    args = [f"ckpt_path={folder_run['ckpt']}", f"data.root={other}", f"hydra.run.dir={tmp_path / 'e'}"]
    one_error(
        run("bcd-eval", args, tmp_path), "classes ['sky', 'tree', 'house']", "['road', 'car', 'person']"
    )
    done = run(
        "bcd-eval",
        [f"ckpt_path={folder_run['ckpt']}", "data=synthetic", f"hydra.run.dir={tmp_path / 's'}"],
        tmp_path,
    )
    one_error(done, "blob_a", "['road', 'car', 'person']")


# -------------------------------------------------------------------------------------------- cases 5, 6

LONG = [
    *TINY,
    "test=false",
    "trainer.log_every_n_steps=1",
    "trainer.max_epochs=8",
    "logger=many",
    "logger.wandb.offline=true",
]


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "bcd-train"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.monotonic()
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.1)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _tb_steps(run_dir: Path, tag: str = "train/loss/total_step") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _wandb_ids(run_dir: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*"))


@pytest.mark.slow  # two or three short training runs with signals (~1 min)
def test_cases5_6_sigterm_saves_last_ckpt_exits_nonzero_and_resume_keeps_every_history(
    tmp_path: Path,
) -> None:
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    full, part = tmp_path / "full", tmp_path / "part"
    done = run("bcd-train", [*LONG, f"hydra.run.dir={full}"], tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    proc = _start([*LONG, f"hydra.run.dir={part}"], tmp_path, env)
    _wait_for(part / "checkpoints" / "last.ckpt", proc)
    time.sleep(1.0)  # into the second epoch
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]  # case 6: not 0
    (line,) = error_lines(stderr)
    assert "received SIGTERM" in line and f"hydra.run.dir={part} ckpt_path=last" in line
    assert json.loads((part / "metrics.json").read_text())["signal"] == "SIGTERM"
    killed_rows = len(_rows(part))
    done = run("bcd-train", [*LONG, f"hydra.run.dir={part}", "ckpt_path=last"], tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # case 5: the resumed history is the uninterrupted one, row for row (same steps, same losses).
    resumed, uninterrupted = _rows(part), _rows(full)
    assert len(resumed) == len(uninterrupted) > killed_rows
    key = "train/loss/total_step"
    assert [(r["step"], r[key]) for r in resumed] == [(r["step"], r[key]) for r in uninterrupted]
    assert _tb_steps(part) == _tb_steps(full)
    ids = _wandb_ids(part)
    assert len(ids) == 2 and ids[0] == ids[1]  # two sessions, one wandb run id


@pytest.mark.slow  # two or three short training runs with signals (~1 min)
def test_slurm_requeue_signal_saves_and_requeues_then_the_job_resumes(tmp_path: Path) -> None:
    """Lightning's SLURM support: SIGUSR1 (SLURM's requeue signal, ``--signal=USR1@...``) saves
    ``hpc_ckpt_1.ckpt`` and calls ``scontrol requeue <job id>``; the requeued job (same command,
    ``auto_resume=true``) continues from the newest of it and last.ckpt. ``scontrol`` is a stand-in
    recording its arguments; the SLURM variables are those srun sets for one task."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "bcd",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    env = {**ENV, **slurm, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}"}
    run_dir = tmp_path / "job"
    args = [*TINY, "test=false", "trainer.max_epochs=8", f"hydra.run.dir={run_dir}", "auto_resume=true"]
    proc = _start(args, tmp_path, env)
    _wait_for(run_dir / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGUSR1)
    _wait_for(run_dir / "hpc_ckpt_1.ckpt", proc)
    start = time.monotonic()
    while not calls.is_file() and time.monotonic() - start < 60:
        time.sleep(0.1)
    assert calls.read_text().split() == ["requeue", "4242"]
    # SLURM then stops the job; a SIGTERM would also write a newer last.ckpt (tested above), so kill it
    # without grace (a lost node): the requeued job must find the requeue checkpoint by itself.
    proc.kill()
    proc.communicate(timeout=300)
    step = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True, map_location="cpu")["global_step"]
    done = run("bcd-train", args, tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming from {run_dir / 'hpc_ckpt_1.ckpt'}" in done.stdout and step > 0


# ------------------------------------------------------------------------------------------------ case 7


def test_case7_a_bad_sample_in_a_worker_is_one_short_line_naming_the_file(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "ds")
    bad = root / "images" / "train" / "s01.png"
    bad.write_bytes(b"not a png at all" * 8)
    args = [*FOLDER, f"data.root={root}", "data.num_workers=2", "data.verify=false", "debug=fdr"]
    line = one_error(run("bcd-train", args, tmp_path), f"Cannot read image {bad}", "DataLoader worker")
    assert len(line) < 400, line


# ------------------------------------------------------------------------------------------------ case 8


def test_case8_export_to_an_existing_file_is_one_line(folder_run: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "deploy"
    target.write_text("x")
    one_error(
        run("bcd-export", [folder_run["ckpt"], "--out", str(target), "--no-onnx"], tmp_path),
        "is a file, not a folder",
    )


def test_case8_run_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    one_error(
        run("bcd-train", ["debug=fdr", f"hydra.run.dir={target}"], tmp_path),
        f"hydra.run.dir={target}",
        "is a file",
    )


def test_case8_unreadable_class_file_and_image_folder_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bcd_lightning.data import FolderSegmentation
    from bcd_lightning.data.files import DatasetError

    root = folder_tree(tmp_path / "ds")
    real_read = Path.read_text

    def read_text(self: Path, *a: Any, **k: Any) -> str:
        if self.name == "classes.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self, *a, **k)

    with monkeypatch.context() as m:  # as root, chmod cannot make a file unreadable: simulate the OS answer
        m.setattr(Path, "read_text", read_text)
        with pytest.raises(DatasetError, match=r"classes\.yaml cannot be read: Permission denied"):
            FolderSegmentation(str(root))
    images = root / "images" / "train"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != images and real_access(p, mode))
    with pytest.raises(DatasetError, match=f"Cannot read the folder {images}: permission denied"):
        FolderSegmentation(str(root))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: chmod cannot make it unreadable")
def test_case8_unreadable_files_through_the_cli(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "ds")
    (root / "images" / "train").chmod(0)
    try:
        one_error(run("bcd-train", [*FOLDER, f"data.root={root}"], tmp_path), "Cannot read the folder")
    finally:
        (root / "images" / "train").chmod(stat.S_IRWXU)


# ------------------------------------------------------------------------------------------------ case 9


def test_case9_the_readme_step_checkpoint_command_runs(tmp_path: Path) -> None:
    args = [
        "debug=fdr",
        *TINY,
        f"hydra.run.dir={tmp_path / 'r'}",
        "callbacks.last_checkpoint.every_n_epochs=null",
        "callbacks.last_checkpoint.every_n_train_steps=1000",
    ]
    done = run("bcd-train", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


# ----------------------------------------------------------------------------------------------- case 10


def test_case10_written_files_follow_the_umask(tmp_path: Path, folder_run: dict[str, Any]) -> None:
    run_dir = tmp_path / "r"
    args = [
        *TINY,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "test=false",
        f"hydra.run.dir={run_dir}",
    ]
    done = run("bcd-train", args, tmp_path, preexec_fn=lambda: os.umask(0o027))
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "config.yaml", "metrics.json"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o640, name
    out = tmp_path / "export"
    done = run(
        "bcd-export",
        [folder_run["ckpt"], "--out", str(out), "--no-onnx"],
        tmp_path,
        preexec_fn=lambda: os.umask(0o002),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("student.pt", "export.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o664, name


# ----------------------------------------------------------------------------------------------- case 11


def test_case11_verify_reports_every_bad_file_before_training(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "ds", n=(6, 3))
    corrupt = root / "images" / "train" / "s01.png"
    corrupt.write_bytes(b"garbage" * 16)
    small = root / "masks" / "train" / "s04.png"
    save(small, np.zeros((32, 32)))
    bad_value = root / "masks" / "val" / "s02.png"
    save(bad_value, np.full((64, 96), 7))
    line = one_error(
        run("bcd-train", [*FOLDER, f"data.root={root}"], tmp_path), "data.verify: 3 of 9 samples are bad"
    )
    for path in (corrupt, small, bad_value):
        assert str(path) in line, path
    assert "epoch" not in line


def test_case11_verify_is_on_for_files_and_off_for_the_embedded_data() -> None:
    from support import compose_config

    for data in ("folder", "cityscapes", "voc", "ade20k", "camvid"):
        assert compose_config([f"data={data}", "paths.output_dir=x"]).data.verify is True, data
    assert not compose_config(["paths.output_dir=x"]).data.get("verify", False)


# ----------------------------------------------------------------------------------------------- case 13


def test_case13_different_image_sizes_in_one_batch_get_a_hint(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "ds")
    save(root / "images" / "val" / "s01.png", np.zeros((96, 64, 3)))
    save(root / "masks" / "val" / "s01.png", np.zeros((96, 64)))
    args = [*FOLDER, f"data.root={root}", "data.val_batch_size=2", "debug=fdr"]
    one_error(run("bcd-train", args, tmp_path), "different sizes", "data.val_batch_size=1")


def test_case13_export_size_and_failed_export_and_checkpoint_errors(
    folder_run: dict[str, Any], tmp_path: Path
) -> None:
    one_error(
        run(
            "bcd-export", [folder_run["ckpt"], "--size", "-32", "64", "--out", str(tmp_path / "a")], tmp_path
        ),
        "--size -32 64",
        "positive",
    )
    out = tmp_path / "b"
    one_error(
        run("bcd-export", [folder_run["ckpt"], "--size", "70", "70", "--out", str(out)], tmp_path),
        "not divisible",
    )
    assert not out.exists()  # no empty output folder left behind
    corrupt = tmp_path / "student.ckpt"
    corrupt.write_bytes(b"PK\x03\x04" + b"\x00junk" * 32)
    line = one_error(
        run("bcd-export", [str(corrupt), "--out", str(tmp_path / "c")], tmp_path), "CheckpointError"
    )
    assert "Teacher" not in line
