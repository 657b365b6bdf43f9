"""``make train-detection``: detection teacher → baseline → KD family → BCD → one table (embedded data).

Every stage is a ``python -m bcd_lightning.detection.train`` run composed from ``experiment=detection/
teacher`` or ``experiment=detection/student detection/distill=<method>``; extra arguments are Hydra
overrides for every stage. The teacher is trained once and reused while its checkpoint exists. Each row
scores the run's best checkpoint on the test split: box mAP, AP50, AP75, parameters and the median CPU
time of one test image (batch 1, ``threads`` of the config).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from bcd_lightning.builders import plain
from bcd_lightning.detection.metrics import DetectionMetrics
from bcd_lightning.detection.models import build_detector, count_parameters
from bcd_lightning.detection.train import build_datamodule, train
from bcd_lightning.models.teacher import load_checkpoint_file
from bcd_lightning.utils.run_dir import atomic_write_text

DEFAULT_STUDENTS = ("none", "fitnet", "cwd", "pkd", "bcd")


def compose_stage(stage: str, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """``teacher`` or a ``detection/distill`` option (``none`` = the baseline student)."""
    # test=false: the pipeline scores every best checkpoint itself (once, the same way for all rows).
    head = ["test=false"]
    head += ["experiment=detection/teacher"] if stage == "teacher" else [
        "experiment=detection/student",
        f"detection/distill={stage}",
    ]  # fmt: skip
    with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
        return compose("train_detection", overrides=[*head, f"paths.output_dir={output_dir}", *overrides])


@torch.no_grad()
def score_checkpoint(cfg: DictConfig, ckpt: Path, model_cfg: DictConfig, label: str) -> dict[str, Any]:
    """Test-split box mAP, parameter count and CPU latency of the detector stored in ``ckpt``."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    model = build_detector(plain(model_cfg))
    state = load_checkpoint_file(ckpt)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    model.eval()
    datamodule = build_datamodule(cfg)
    metric = DetectionMetrics(datamodule.class_names)
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
    students: Sequence[str] = DEFAULT_STUDENTS,
    retrain_teacher: bool = False,
    out_dir: Path | None = None,
    seeds: Sequence[int] = (0,),
) -> list[dict[str, Any]]:
    console = Console()
    start = time.perf_counter()
    probe = compose_stage("teacher", overrides, Path("unused"))
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    out_dir = (out_dir or Path(probe.paths.log_dir) / "pipeline_detection" / stamp).resolve()
    teacher_ckpt = Path(probe.detection.teacher.ckpt)
    if teacher_ckpt.is_file() and not retrain_teacher:
        console.print(f"[bold]Reusing the detection teacher {teacher_ckpt}[/bold] (--retrain-teacher: anew)")
    else:
        console.rule("[bold]detection teacher")
        train(compose_stage("teacher", overrides, out_dir / "teacher"))
    rows = [{**score_checkpoint(probe, teacher_ckpt, probe.detection.teacher.model, "teacher"), "seed": 0}]
    for stage in students:
        for seed in seeds:
            console.rule(f"[bold]{stage} student, seed {seed}")
            cfg = compose_stage(stage, [*overrides, f"seed={seed}"], out_dir / f"{stage}_seed{seed}")
            result = train(cfg)
            label = str(cfg.detection.distill.name)
            row = score_checkpoint(cfg, Path(result["best_model_path"]), cfg.detection.student.model, label)
            rows.append({**row, "seed": seed})
    elapsed = time.perf_counter() - start
    report(rows, out_dir, elapsed, console)
    return rows


HEADER = ["model", "arch", "params", "ms/img", "seeds", "mAP", "AP50", "AP75"]


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per model: means over seeds (and the sample std of mAP when there are several)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["model"], []).append(r)
    out = []
    for name, runs in by.items():
        maps = [r["map"] for r in runs]
        out.append(
            {
                "model": name,
                "arch": runs[0]["arch"],
                "params": runs[0]["params"],
                "ms_per_image": statistics.mean(r["ms_per_image"] for r in runs),
                "seeds": len(runs),
                "map": statistics.mean(maps),
                "map_std": statistics.stdev(maps) if len(maps) > 1 else 0.0,
                "map_50": statistics.mean(r["map_50"] for r in runs),
                "map_75": statistics.mean(r["map_75"] for r in runs),
            }
        )
    return out


def _cells(r: dict[str, Any]) -> list[str]:
    m = f"{100 * r['map']:.1f}" + (f" ± {100 * r['map_std']:.1f}" if r["seeds"] > 1 else "")
    return [
        r["model"],
        r["arch"],
        f"{r['params'] / 1e6:.2f}M",
        f"{r['ms_per_image']:.1f}",
        str(r["seeds"]),
        m,
        f"{100 * r['map_50']:.1f}",
        f"{100 * r['map_75']:.1f}",
    ]


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(_cells(r)) + " |" for r in aggregate(rows)]) + "\n"


def report(rows: Sequence[dict[str, Any]], out_dir: Path, elapsed: float, console: Console) -> None:
    table = Table(title="Embedded detection benchmark — test split (box AP %, COCO protocol)")
    for col in HEADER:
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for r in aggregate(rows):
        table.add_row(*_cells(r))
    Console(width=max(console.width, 120)).print(table)
    console.print(f"Pipeline time: {elapsed / 60:.1f} min. Results in {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "results.json", json.dumps({"rows": list(rows), "seconds": elapsed}, indent=2)
    )
    atomic_write_text(out_dir / "results.md", results_markdown(rows))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every stage")
    parser.add_argument("--students", default=",".join(DEFAULT_STUDENTS), help="detection/distill options")
    parser.add_argument("--retrain-teacher", action="store_true", help="train the teacher even if it exists")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the table and runs go")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds for every student")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    run_pipeline(args.overrides, args.students.split(","), args.retrain_teacher, args.out_dir, seeds)


if __name__ == "__main__":
    main()
