"""``make train-detection`` / ``make train-instance``: teacher → baseline → KD family → BCD → one table.

Every stage is a ``python -m bcd_lightning.detection.train`` run composed from ``experiment=<task>/teacher``
or ``experiment=<task>/student detection/distill=<method>``, ``<task>`` = ``detection`` (Faster R-CNN, box
AP) or ``instance`` (Mask R-CNN: box, mask and Boundary AP, per-instance connectivity); extra arguments are
Hydra overrides for every stage. The teacher is trained once and reused while its checkpoint exists; the
students run in ``--jobs`` worker processes (a failed one is reported and the others go on). Each row scores
the run's best checkpoint on the test split, once and the same way for all rows, plus parameters and the
median CPU time of one test image (batch 1, ``threads`` of the config).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from bcd_lightning.builders import plain
from bcd_lightning.detection.evaluate import load_detector_strict
from bcd_lightning.detection.features import has_mask_head
from bcd_lightning.detection.metrics import metrics_for
from bcd_lightning.detection.models import build_detector, count_parameters
from bcd_lightning.detection.train import build_datamodule, train
from bcd_lightning.evaluation import load_run_checkpoint
from bcd_lightning.jobs import JobResult, TrainJob, run_jobs
from bcd_lightning.utils.run_dir import atomic_write_text


@dataclass(frozen=True)
class Column:
    """A metric column: run-record key, header, display scale (100: AP as %) and decimals."""

    key: str
    header: str
    scale: float = 100.0
    digits: int = 1

    def cell(self, value: float, signed: bool = False) -> str:
        return f"{self.scale * value:{'+' if signed else ''}.{self.digits}f}"


@dataclass(frozen=True)
class Task:
    """What differs between the detection tasks' pipelines: experiments, default students, columns."""

    name: str
    students: tuple[str, ...]
    columns: tuple[Column, ...]  # the first is the primary metric (its std over seeds is shown)
    title: str


TASKS = {
    "detection": Task(
        "detection",
        ("none", "fitnet", "cwd", "pkd", "bcd"),
        (Column("map", "mAP"), Column("map_50", "AP50"), Column("map_75", "AP75")),
        "Embedded detection benchmark — test split (box AP %, COCO protocol)",
    ),
    "instance": Task(
        "instance",
        ("none", "mask_kd", "pkd", "bcd_instance"),  # + cwd with --students (15 min on 2 cores: four)
        (
            Column("mask_map", "mask AP"),
            Column("map", "box AP"),
            Column("boundary_map", "Boundary AP"),
            Column("conn_error", "conn. err", scale=1.0, digits=3),
            Column("broken_rate", "broken %"),
        ),
        "Embedded instance segmentation — test split (AP %, COCO protocol; connectivity per matched instance)",
    ),
}
DEFAULT_STUDENTS = TASKS["detection"].students


def task_spec(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task {name!r} is not one of {sorted(TASKS)}")
    return TASKS[name]


def compose_stage(
    stage: str, overrides: Sequence[str], output_dir: Path, task: str = "detection"
) -> DictConfig:
    """``teacher`` or a ``detection/distill`` option (``none`` = the baseline student) of ``task``."""
    task_spec(task)
    # test=false: the pipeline scores every best checkpoint itself (once, the same way for all rows).
    head = ["test=false"]
    head += [f"experiment={task}/teacher"] if stage == "teacher" else [
        f"experiment={task}/student",
        f"detection/distill={stage}",
    ]  # fmt: skip
    with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
        return compose("train_detection", overrides=[*head, f"paths.output_dir={output_dir}", *overrides])


@torch.no_grad()
def score_checkpoint(cfg: DictConfig, ckpt: Path, model_cfg: DictConfig, label: str) -> dict[str, Any]:
    """Test-split AP (box; mask, Boundary AP and connectivity for Mask R-CNN), parameter count and CPU
    latency of the detector stored in ``ckpt``."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    model = build_detector(plain(model_cfg))
    state, _ = load_run_checkpoint(ckpt)
    load_detector_strict(model, state, str(ckpt), plain(model_cfg))
    model.eval()
    datamodule = build_datamodule(cfg)
    metric = metrics_for(datamodule.class_names, masks=has_mask_head(model))
    times = []
    for images, targets in datamodule.test_dataloader():
        metric.update(model(images), targets)
        for image in images[:2]:  # latency at batch 1 on a few real images
            start = time.perf_counter()
            model([image])
            times.append((time.perf_counter() - start) * 1000)
    summary, per_class = metric.compute()
    return {
        "model": label,
        "arch": f"{model_cfg.arch}/{model_cfg.backbone}",
        "params": count_parameters(model),
        "ms_per_image": statistics.median(times[2:] or times),
        "checkpoint": str(ckpt),
        **summary,
        "per_class": per_class,
    }


def run_pipeline(
    overrides: Sequence[str] = (),
    students: Sequence[str] | None = None,
    retrain_teacher: bool = False,
    out_dir: Path | None = None,
    seeds: Sequence[int] = (0,),
    task: str = "detection",
    n_jobs: int = 1,
) -> list[dict[str, Any]]:
    """Teacher (unless reused), then every student × seed in ``n_jobs`` workers, then one scored table.
    Exits with status 1 after the table when a student run failed (its log has the traceback)."""
    spec = task_spec(task)
    students = list(students or spec.students)
    console = Console()
    start = time.perf_counter()
    probe = compose_stage("teacher", overrides, Path("unused"), task)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    out_dir = (out_dir or Path(probe.paths.log_dir) / f"pipeline_{task}" / stamp).resolve()
    teacher_ckpt = Path(probe.detection.teacher.ckpt)
    if teacher_ckpt.is_file() and not retrain_teacher:
        console.print(f"[bold]Reusing the {task} teacher {teacher_ckpt}[/bold] (--retrain-teacher: anew)")
    else:
        console.rule(f"[bold]{task} teacher")
        train(compose_stage("teacher", overrides, out_dir / "teacher", task))
    rows = [{**score_checkpoint(probe, teacher_ckpt, probe.detection.teacher.model, "teacher"), "seed": 0}]
    jobs = [
        TrainJob(
            f"{stage} seed {seed}",
            (*overrides, f"seed={seed}"),
            str(out_dir / f"{stage}_seed{seed}"),
            stage,
            task,
        )
        for stage in students
        for seed in seeds
    ]
    console.rule(f"[bold]{len(jobs)} student runs on {max(1, min(n_jobs, len(jobs)))} worker(s)")

    def progress(result: JobResult) -> None:
        state = "done" if result.ok else f"[red]FAILED[/red] (log: {result.job.log})"
        console.print(f"{result.job.name}: {state} in {result.seconds:.0f} s")

    results = run_jobs(jobs, n_jobs, progress)
    failed = [r for r in results if not r.ok]
    by_name = {r.job.name: r for r in results}
    for job in jobs:  # scored in a fixed order, one after another (latency on an otherwise idle process)
        if not by_name[job.name].ok:
            continue
        cfg = compose_stage(job.stage, list(job.overrides), Path(job.run_dir), task)
        record = json.loads((Path(job.run_dir) / "metrics.json").read_text())
        label = str(cfg.detection.distill.name)
        row = score_checkpoint(cfg, Path(record["best_model_path"]), cfg.detection.student.model, label)
        rows.append({**row, "seed": int(cfg.seed)})
    elapsed = time.perf_counter() - start
    report(rows, out_dir, elapsed, console, spec)
    if failed:
        console.print(f"[red]{len(failed)} student run(s) failed:[/red]")
        for r in failed:
            console.print(f"  {r.job.name}: see {r.job.log}")
        sys.exit(1)
    return rows


def header(spec: Task) -> list[str]:
    return ["model", "arch", "params", "ms/img", "seeds", *(c.header for c in spec.columns)]


def aggregate(rows: Sequence[dict[str, Any]], spec: Task = TASKS["detection"]) -> list[dict[str, Any]]:
    """One entry per model: means over seeds (and the sample std of the primary metric when there are several)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["model"], []).append(r)
    primary = spec.columns[0].key
    out = []
    for name, runs in by.items():
        firsts = [r[primary] for r in runs]
        entry = {
            "model": name,
            "arch": runs[0]["arch"],
            "params": runs[0]["params"],
            "ms_per_image": statistics.mean(r["ms_per_image"] for r in runs),
            "seeds": len(runs),
            f"{primary}_std": statistics.stdev(firsts) if len(firsts) > 1 else 0.0,
        }
        entry.update({c.key: statistics.mean(r[c.key] for r in runs) for c in spec.columns})
        out.append(entry)
    return out


def _cells(r: dict[str, Any], spec: Task) -> list[str]:
    first, *rest = spec.columns
    primary = first.cell(r[first.key]) + (f" ± {first.cell(r[f'{first.key}_std'])}" if r["seeds"] > 1 else "")
    return [
        r["model"],
        r["arch"],
        f"{r['params'] / 1e6:.2f}M",
        f"{r['ms_per_image']:.1f}",
        str(r["seeds"]),
        primary,
        *(c.cell(r[c.key]) for c in rest),
    ]


def results_markdown(rows: Sequence[dict[str, Any]], spec: Task = TASKS["detection"]) -> str:
    head = header(spec)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return (
        "\n".join(lines + ["| " + " | ".join(_cells(r, spec)) + " |" for r in aggregate(rows, spec)]) + "\n"
    )


def report(
    rows: Sequence[dict[str, Any]],
    out_dir: Path,
    elapsed: float,
    console: Console,
    spec: Task = TASKS["detection"],
) -> None:
    table = Table(title=spec.title)
    for col in header(spec):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for r in aggregate(rows, spec):
        table.add_row(*_cells(r, spec))
    Console(width=max(console.width, 140)).print(table)
    console.print(f"Pipeline time: {elapsed / 60:.1f} min. Results in {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "results.json",
        json.dumps({"task": spec.name, "rows": list(rows), "seconds": elapsed}, indent=2),
    )
    atomic_write_text(out_dir / "results.md", results_markdown(rows, spec))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every stage")
    parser.add_argument("--task", default="detection", choices=sorted(TASKS), help="detection or instance")
    parser.add_argument(
        "--students", default=None, help="detection/distill options (default: the task's, see TASKS)"
    )
    parser.add_argument("--retrain-teacher", action="store_true", help="train the teacher even if it exists")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the table and runs go")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds for every student")
    parser.add_argument("--jobs", type=int, default=1, help="student runs in parallel (threads=1 each)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    students = args.students.split(",") if args.students else None
    run_pipeline(args.overrides, students, args.retrain_teacher, args.out_dir, seeds, args.task, args.jobs)


if __name__ == "__main__":
    main()
