"""Every command the README shows is executed, so the README cannot drift (issue 14).

Commands are extracted from the README's ``bash`` blocks (continuation lines joined, comments dropped)
and its ``$ command`` / output examples. Placeholders (``<run>``, ``...``, ``CKPT``, ``my_data``,
``path/to/teacher.ckpt``) become files of a tiny run made here.

Fast (``make test``): every ``bcd-train`` / ``bcd-eval`` command composes and passes the config checks
with the README's overrides exactly; every ``make`` target exists (``make -n``); the ``$`` examples
print the error line shown; ``--help`` of each CLI and script works.
Slow (``make test-full``): the commands run for real, with small overrides appended (one batch,
tiny data, one thread), except those that need a GPU, a cluster, a download or a real dataset, which
stay at the composition level above.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from support import FAST, compose_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
#: Needs hardware, a cluster, a download or a dataset this machine does not have: composition only.
NOT_HERE = re.compile(
    r"trainer=(gpu|ddp\b)|devices=8|num_nodes|precision=16-mixed|encoder_weights=imagenet|"
    r"experiment=(cityscapes|voc|ade20k|camvid)|hydra/launcher=slurm\b|--gpu|^bcd-train \.\.\. |--device cuda"
)


#: The words of each command (quoting resolved as a shell would), by the command's text.
WORDS: dict[str, list[str]] = {}


def bash_commands(text: str = README) -> list[str]:
    """Commands of the ``bash`` blocks: one per line (``\\`` continuations joined), comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(" ".join(words))
                WORDS[" ".join(words)] = words
    return commands


def dollar_examples(text: str = README) -> list[tuple[str, str]]:
    """``$ command`` lines of plain blocks, each with the output line shown under it."""
    pairs, fence = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:]
        elif fence == "" and line.startswith("$ "):
            pairs.append((line[2:], lines[i + 1]))
    return pairs


COMMANDS = bash_commands()
CLI = [c for c in COMMANDS if c.split()[0] in ("bcd-train", "bcd-eval") and "--help" not in c]


def test_the_readme_has_the_commands_this_test_expects() -> None:
    """The extraction itself: a change of README layout must not make this test vacuous."""
    assert len(COMMANDS) >= 40 and len(CLI) >= 30
    assert (
        "bcd-train experiment=embedded/bcd hydra.run.dir=logs/embedded_bcd/runs/<run> ckpt_path=last"
        in COMMANDS
    )
    assert len(dollar_examples()) == 3
    unknown = {c.split()[0] for c in COMMANDS} - {
        "make",
        "bcd-train",
        "bcd-eval",
        "bcd-export",
        "bcd-predict",
        "python",
        "export",
    }
    assert not unknown, unknown  # a new kind of command needs a way to be run below


def _args(command: str, subs: dict[str, str]) -> list[str]:
    words = WORDS[command][1:]
    out = []
    for word in words:
        if word == "...":
            continue  # "bcd-train ... trainer=ddp": the rest of some command
        for old, new in subs.items():
            word = word.replace(old, new)
        out.append(word)
    return out


#: Placeholders at the composition level (no file needs to exist).
COMPOSE_SUBS = {
    "logs/embedded_bcd/runs/<run>": "/tmp/run",
    "logs/embedded_kd/runs/<run>": "/tmp/run",
    "logs/instance_bcd/runs/<run>": "/tmp/run",
    "ckpt_path=...": "ckpt_path=/tmp/run/best.ckpt",
    "$SLURM_JOB_ID": "1234",
}


@pytest.mark.parametrize("command", CLI)
def test_readme_command_composes_and_passes_the_config_checks(command: str) -> None:
    from bcd_lightning.evaluate import split_overrides
    from bcd_lightning.utils.config_check import check_config

    args = [a for a in _args(command, COMPOSE_SUBS) if a not in ("-m", "--multirun")]
    hydra_args = [a for a in args if not a.startswith("hydra")]
    if command.startswith("bcd-eval"):
        hydra_args, _ = split_overrides(hydra_args)  # data.* keys apply to the checkpoint's run config
        cfg = compose_config([*hydra_args, "paths.output_dir=/tmp/out"], "eval")
    else:
        # A sweep's first job: "a,b,c" -> "a" (values with commas inside brackets/braces are kept).
        first = [
            re.sub(r"^([^=]+=)([^\[{,]+),.*$", r"\1\2", a)
            if "," in a and "[" not in a and "{" not in a
            else a
            for a in hydra_args
        ]
        cfg = compose_config([*first, "paths.output_dir=/tmp/out"])
    check_config(cfg)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("make ")])
def test_readme_make_targets_exist(command: str) -> None:
    done = subprocess.run(["make", "-n", *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("command", "shown"), dollar_examples())
def test_readme_error_examples_print_what_the_readme_shows(command: str, shown: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "bcd-train"), *shlex.split(command)[1:]],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(shown.removesuffix("...").rstrip()), (line, shown)


@pytest.mark.parametrize(
    "argv",
    [
        ["bcd-train", "--help"],
        ["bcd-predict", "--help"],
        *[["python", c.split()[1], "--help"] for c in COMMANDS if c.startswith("python scripts/")][:1],
    ],
)
def test_readme_clis_answer_help(argv: list[str], tmp_path: Path) -> None:
    exe = [sys.executable, str(REPO / argv[1])] if argv[0] == "python" else [str(BIN / argv[0]), *argv[1:2]]
    done = subprocess.run(
        [*exe, "--help"] if argv[0] == "python" else exe,
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


# ----------------------------------------------------------------------------------------- slow: real runs

SMALL = [*FAST, "threads=1", "debug=fdr"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A random embedded teacher at its default path, a tiny embedded BCD run, a folder dataset."""
    from bcd_lightning.builders import build_model
    from bcd_lightning.train import train
    from test_failures import folder_tree

    tmp = tmp_path_factory.mktemp("readme")
    logs = tmp / "logs"
    teacher = logs / "teachers" / "embedded_unet_r18.ckpt"
    teacher.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_model(compose_config(["paths.output_dir=unused"]).teacher.model).state_dict(), teacher)
    cfg = compose_config(
        [
            "experiment=embedded/bcd",
            *FAST,
            "threads=1",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "test=false",
            f"paths.log_dir={logs}",
            f"paths.output_dir={tmp / 'run'}",
        ]
    )
    run = train(cfg)
    from bcd_lightning.detection.train import train as train_detection

    instance = compose_config(  # a tiny Mask R-CNN baseline run for the instance bcd-eval command
        [
            "experiment=instance/student",
            *DETECTION_SMALL,
            "test=false",
            f"paths.log_dir={logs}",
            f"paths.output_dir={tmp / 'instance_run'}",
        ],
        "train_detection",
    )
    train_detection(instance)
    return {
        "tmp": tmp,
        "logs": logs,
        "run": tmp / "run",
        "instance_run": tmp / "instance_run",
        "ckpt": run["best_model_path"],
        "teacher": teacher,
        "folder": folder_tree(tmp / "my_data"),
    }


def _run_subs(files: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    return {
        "logs/embedded_bcd/runs/<run>": str(files["run"]),
        "logs/embedded_kd/runs/<run>": str(files["run"]),
        "logs/instance_bcd/runs/<run>": str(files["instance_run"]),
        "logs/embedded_compare/multiruns/<time>": str(files["tmp"]),
        "ckpt_path=...": f"ckpt_path={files['ckpt']}",
        "path/to/teacher.ckpt": str(files["teacher"]),
        "my_data": str(files["folder"]),
        "/scratch/$SLURM_JOB_ID": str(tmp_path / "scratch"),
        "deploy/": str(tmp_path / "deploy"),
        "CKPT": files["ckpt"],
        "my_images/": str(files["folder"] / "images" / "train"),
        "predictions/": str(tmp_path / "predictions"),
    }


RUNNABLE = [
    c
    for c in COMMANDS
    if c.split()[0] in ("bcd-train", "bcd-eval", "bcd-export", "bcd-predict")
    and not NOT_HERE.search(c)
    and "<run>/export/" not in c  # an exported student: bcd-predict's own tests run that path
    and "--help" not in c
]


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_runs(command: str, files: dict[str, Any], tmp_path: Path) -> None:
    exe, args = command.split()[0], _args(command, _run_subs(files, tmp_path))
    if exe == "bcd-train":
        resume = any(a.startswith("ckpt_path=") or a.startswith("hydra.run.dir=") for a in args)
        small = [a for a in SMALL if not (resume and a == "debug=fdr")]  # fdr cannot resume
        if resume:
            small += ["trainer.max_epochs=2", "trainer.limit_train_batches=1", "test=false", "logger=csv"]
        if "experiment=embedded/teacher" in args:  # exports its best checkpoint: needs a real epoch
            small = [a for a in small if a != "debug=fdr"]
            small += ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "test=false", "logger=csv"]
        if "-m" in args:  # a sweep: every job, one batch each
            small = [*small, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
        if "data=folder" in args:
            small = [
                "threads=1",
                "debug=fdr",
                "data.num_workers=0",
                "data.batch_size=2",
                *[a for a in FAST if not a.startswith("data.")],
            ]
            args = [a.replace("crop_size=[384,384]", "crop_size=[32,32]") for a in args]
            if "data.train_set.mask_suffix=_mask" in args:  # a copy whose masks are named a_mask.png
                suffixed = shutil.copytree(files["folder"], tmp_path / "suffixed")
                for mask in (suffixed / "masks").rglob("*.png"):
                    mask.rename(mask.with_name(f"{mask.stem}_mask.png"))
                args = [a.replace(str(files["folder"]), str(suffixed)) for a in args]
            if not any("crop_size" in a for a in args):
                args.append("data.train_set.transform.crop_size=[32,32]")
        args = [*args, *small, f"paths.log_dir={files['logs']}"]
    elif exe == "bcd-eval":
        small_data = (
            ["detection.data.module.val.num_samples=4", "detection.data.module.test.num_samples=4"]
            if "logs/instance_" in command
            else ["data.val_set.num_samples=4", "data.test_set.num_samples=4"]
        )
        args = [*args, *small_data, f"hydra.run.dir={tmp_path / 'e'}"]
        args = [a.replace("num_samples=200", "num_samples=4") for a in args]
    elif exe == "bcd-export":
        args = [a.replace("512", "64").replace("1024", "64") for a in args]
        if "--out" not in args:
            args += ["--out", str(tmp_path / "export")]
    done = subprocess.run(
        [str(BIN / exe), *args], cwd=files["tmp"], env=ENV, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{command}\n{args}\n{done.stderr[-3000:]}"


# ------------------------------------------------------------- detection / instance: python -m commands

DETECTION = [c for c in COMMANDS if c.startswith("python -m bcd_lightning.detection.")]
#: Tiny data and models for the real runs of the detection commands (one short epoch each).
DETECTION_SMALL = [
    *(
        f"detection.data.module.{split}.num_samples={n}"
        for split, n in (("train", 8), ("val", 4), ("test", 4))
    ),
    *(f"detection.data.module.{split}.image_size=64" for split in ("train", "val", "test")),
    "detection.data.module.batch_size=4",
    *(
        f"detection.teacher.model.{k}=64" for k in ("min_size", "max_size")
    ),  # the teacher stage interpolates the student
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "threads=1",
]


def _detection_parts(command: str) -> tuple[str, list[str]]:
    module = WORDS[command][2].rsplit(".", 1)[1]
    return module, WORDS[command][3:]


def test_readme_shows_the_detection_and_instance_commands() -> None:
    modules = {_detection_parts(c)[0] for c in DETECTION}
    assert modules == {"train", "pipeline", "study"}
    assert any("--task instance" in c for c in DETECTION) and "make train-instance" in COMMANDS


@pytest.mark.parametrize("command", DETECTION)
def test_readme_detection_command_composes(command: str) -> None:
    """``train`` commands compose train_detection with their overrides and their models build; pipeline and
    study commands parse, and every stage they would run composes."""
    from bcd_lightning.builders import plain
    from bcd_lightning.detection import pipeline, study
    from bcd_lightning.detection.models import DetectorConfig

    module, args = _detection_parts(command)
    if module == "train":
        cfg = compose_config([*args, "paths.output_dir=/tmp/out"], "train_detection")
        for role in ("student", "teacher"):
            DetectorConfig(**plain(cfg.detection[role].model))
        return
    parsed = (pipeline if module == "pipeline" else study).build_parser().parse_args(args)
    spec = pipeline.task_spec(parsed.task)
    for stage in ["teacher", *(parsed.students.split(",") if parsed.students else spec.students)]:
        pipeline.compose_stage(stage, parsed.overrides, Path("/tmp/out"), parsed.task)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in DETECTION if "paths.data_dir=/data" not in c])
def test_readme_detection_command_runs(command: str, tmp_path: Path) -> None:
    module, args = _detection_parts(command)
    extra = [*DETECTION_SMALL, f"paths.log_dir={tmp_path / 'logs'}"]
    if module == "train":
        argv = [*args, *extra, f"hydra.run.dir={tmp_path / 'run'}"]
        if "detection/distill=" in command and "=none" not in command:  # needs its task's teacher first
            task = "instance" if "experiment=instance" in command else "detection"
            teacher = [f"experiment={task}/teacher", *extra, f"hydra.run.dir={tmp_path / 'teacher'}"]
            done = subprocess.run(
                [sys.executable, "-m", "bcd_lightning.detection.train", *teacher],
                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
    else:
        argv = [*args, *extra, "--out-dir", str(tmp_path / "out")]
        argv = ["0,1" if a == "0,1,2" else a for a in argv]  # two seeds are enough to run the statistics
        if module == "study":
            argv += ["--docs", str(tmp_path / "docs")]
    done = subprocess.run(
        [sys.executable, "-m", f"bcd_lightning.detection.{module}", *argv],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{argv}\n{done.stderr[-3000:]}"
