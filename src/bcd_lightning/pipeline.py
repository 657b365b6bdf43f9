"""``bcd-pipeline`` (``make train``): teacher → baseline student → distilled students → comparison table.

Every stage is an ordinary ``bcd-train`` run composed from ``experiment=embedded/<stage>``; extra
arguments are Hydra overrides applied to every stage (e.g. ``trainer.max_epochs=2``). The teacher is
trained once and reused while its checkpoint exists.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from bcd_lightning import builders
from bcd_lightning.evaluation import evaluate_model, inference_ms_per_image, load_run_checkpoint
from bcd_lightning.models import count_parameters
from bcd_lightning.train import train
from bcd_lightning.utils.run_dir import atomic_write_text

DEFAULT_STUDENTS = ("baseline", "kd")


def compose_stage(stage: str, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
        return compose(
            "train",
            overrides=[f"experiment=embedded/{stage}", f"paths.output_dir={output_dir}", *overrides],
        )


def score_checkpoint(cfg: DictConfig, ckpt: Path, role: str, label: str) -> dict[str, Any]:
    """Test-split metrics, parameter count and CPU latency of the model stored in ``ckpt``."""
    state, _ = load_run_checkpoint(ckpt)
    model = builders.build_model(cfg.student)
    model.load_state_dict(state, strict=True)
    datamodule = builders.build_datamodule(cfg)
    metrics = evaluate_model(
        model, datamodule.test_dataloader(), datamodule.num_classes, datamodule.class_names, datamodule.ignore_index
    )
    size = datamodule.test_set[0]["image"].shape[-2:]
    return {
        "model": label,
        "role": role,
        "arch": f"{cfg.student.arch}/{cfg.student.encoder_name}",
        "params": count_parameters(model),
        "ms_per_image": inference_ms_per_image(model, tuple(size)),
        "checkpoint": str(ckpt),
        **metrics,
    }


def run_pipeline(
    overrides: Sequence[str] = (),
    students: Sequence[str] = DEFAULT_STUDENTS,
    retrain_teacher: bool = False,
    out_dir: Path | None = None,
) -> list[dict[str, Any]]:
    console = Console()
    start = time.perf_counter()
    probe = compose_stage("teacher", overrides, Path("unused"))
    out_dir = out_dir or Path(probe.paths.log_dir) / "pipeline" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    out_dir = out_dir.resolve()
    teacher_ckpt = Path(probe.teacher.ckpt)
    rows = []

    if teacher_ckpt.is_file() and not retrain_teacher:
        console.print(f"[bold]Reusing the teacher checkpoint {teacher_ckpt}[/bold] (--retrain-teacher to train anew)")
    else:
        console.rule("[bold]teacher")
        train(compose_stage("teacher", overrides, out_dir / "teacher"))
    rows.append(score_checkpoint(probe, teacher_ckpt, "teacher", "teacher"))

    for stage in students:
        console.rule(f"[bold]{stage} student")
        cfg = compose_stage(stage, overrides, out_dir / stage)
        result = train(cfg)
        rows.append(score_checkpoint(cfg, Path(result["best_model_path"]), "student", stage))

    elapsed = time.perf_counter() - start
    report(rows, out_dir, elapsed, console)
    return rows


def results_table(rows: Sequence[dict[str, Any]]) -> Table:
    class_names = list(rows[0]["per_class"])
    table = Table(title="Embedded benchmark — test split (IoU %)")
    for col in ["model", "arch", "params", "ms/img", "mIoU", *class_names]:
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for r in rows:
        table.add_row(
            r["model"],
            r["arch"],
            f"{r['params'] / 1e6:.2f}M",
            f"{r['ms_per_image']:.1f}",
            f"{100 * r['mIoU']:.2f}",
            *(f"{100 * v:.2f}" for v in r["per_class"].values()),
        )
    return table


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    class_names = list(rows[0]["per_class"])
    header = ["model", "arch", "params", "ms/img (CPU, batch 1)", "mIoU", *class_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["model"], r["arch"], f"{r['params'] / 1e6:.2f}M", f"{r['ms_per_image']:.1f}", f"{100 * r['mIoU']:.2f}"]
        cells += [f"{100 * v:.2f}" for v in r["per_class"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(rows: Sequence[dict[str, Any]], out_dir: Path, elapsed: float, console: Console) -> None:
    console.print(results_table(rows))
    console.print(f"Pipeline time: {elapsed / 60:.1f} min. Results in {out_dir}")
    atomic_write_text(out_dir / "results.json", json.dumps({"rows": list(rows), "seconds": elapsed}, indent=2))
    atomic_write_text(out_dir / "results.md", results_markdown(rows))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every stage")
    parser.add_argument("--students", default=",".join(DEFAULT_STUDENTS), help="comma-separated student stages")
    parser.add_argument("--retrain-teacher", action="store_true", help="train the teacher even if it exists")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the table and runs go")
    args = parser.parse_args(argv)
    run_pipeline(args.overrides, args.students.split(","), args.retrain_teacher, args.out_dir)


if __name__ == "__main__":
    main()
