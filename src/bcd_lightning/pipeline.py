"""``bcd-pipeline`` (``make train``): teacher → baseline student → distilled students → comparison table.

Every stage is an ordinary ``bcd-train`` run composed from ``experiment=embedded/<stage>``; extra
arguments are Hydra overrides applied to every stage (e.g. ``trainer.max_epochs=2``). The teacher is
trained once and reused while its checkpoint exists.
"""

from __future__ import annotations

import argparse
import json
import logging
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
from bcd_lightning.aggregate import summarize
from bcd_lightning.evaluation import evaluate_model, inference_ms_per_image, load_run_checkpoint
from bcd_lightning.models import count_parameters
from bcd_lightning.models.teacher import load_weights_strict
from bcd_lightning.train import train
from bcd_lightning.utils.errors import friendly_errors
from bcd_lightning.utils.run_dir import atomic_write_text

DEFAULT_STUDENTS = ("baseline", "kd", "bcd")


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
    load_weights_strict(model, state, f"Checkpoint {ckpt}")
    datamodule = builders.build_datamodule(cfg)
    metrics = evaluate_model(
        model,
        datamodule.test_dataloader(),
        datamodule.num_classes,
        datamodule.class_names,
        datamodule.ignore_index,
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
    seeds: Sequence[int] = (0,),
    results_doc: Path | None = None,
) -> list[dict[str, Any]]:
    """Run the stages; every student stage once per seed. Returns one row per (model, seed)."""
    console = Console()
    start = time.perf_counter()
    probe = compose_stage("teacher", overrides, Path("unused"))
    out_dir = out_dir or Path(probe.paths.log_dir) / "pipeline" / datetime.now().strftime(
        "%Y-%m-%d_%H-%M-%S_%f"
    )
    out_dir = out_dir.resolve()
    teacher_ckpt = Path(probe.teacher.ckpt)
    rows = []

    if teacher_ckpt.is_file() and not retrain_teacher:
        console.print(
            f"[bold]Reusing the teacher checkpoint {teacher_ckpt}[/bold] (--retrain-teacher to train anew)"
        )
    else:
        console.rule("[bold]teacher")
        train(compose_stage("teacher", overrides, out_dir / "teacher"))
    rows.append({**score_checkpoint(probe, teacher_ckpt, "teacher", "teacher"), "seed": probe.seed})

    for stage in students:
        for seed in seeds:
            console.rule(f"[bold]{stage} student, seed {seed}")
            cfg = compose_stage(stage, [*overrides, f"seed={seed}"], out_dir / f"{stage}_seed{seed}")
            result = train(cfg)
            row = score_checkpoint(cfg, Path(result["best_model_path"]), "student", stage)
            rows.append({**row, "seed": seed})

    elapsed = time.perf_counter() - start
    report(rows, out_dir, elapsed, console, overrides, seeds, results_doc)
    return rows


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per model: mean and sample std over seeds (:func:`aggregate.summarize`), per-class means."""
    classes = list(rows[0]["per_class"])
    flat = [{**r, **{f"class/{c}": r["per_class"][c] for c in classes}} for r in rows]
    keys = ["mIoU", "boundary_iou", "boundary_f", "connectivity_err", "ms_per_image"]
    out = []
    for row in summarize(flat, [*keys, *(f"class/{c}" for c in classes)], by="model"):
        first = next(r for r in rows if r["model"] == row["model"])
        per_class = {c: row.pop(f"class/{c}") for c in classes}
        for c in classes:
            row.pop(f"class/{c}_std")
        out.append(
            {
                **row,
                "arch": first["arch"],
                "params": first["params"],
                "seeds": row["n"],
                "per_class": per_class,
            }
        )
    return out


def _cells(r: dict[str, Any]) -> list[str]:
    miou = f"{100 * r['mIoU']:.2f}" + (f" ± {100 * r['mIoU_std']:.2f}" if r["seeds"] > 1 else "")
    return [
        r["model"],
        r["arch"],
        f"{r['params'] / 1e6:.2f}M",
        f"{r['ms_per_image']:.1f}",
        str(r["seeds"]),
        miou,
        f"{100 * r['boundary_iou']:.2f}",
        f"{100 * r['boundary_f']:.2f}",
        f"{r['connectivity_err']:.2f}",
        *(f"{100 * v:.2f}" for v in r["per_class"].values()),
    ]


HEADER = ["model", "arch", "params", "ms/img", "seeds", "mIoU", "bIoU", "BF", "conn.err"]


def results_table(rows: Sequence[dict[str, Any]]) -> Table:
    summary = aggregate(rows)
    table = Table(title="Embedded benchmark — test split (IoU %, mean ± std over seeds)")
    for col in [*HEADER, *summary[0]["per_class"]]:
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for r in summary:
        table.add_row(*_cells(r))
    return table


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    summary = aggregate(rows)
    header = [*HEADER, *summary[0]["per_class"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in summary]
    return "\n".join(lines) + "\n"


def report(
    rows: Sequence[dict[str, Any]],
    out_dir: Path,
    elapsed: float,
    console: Console,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] = (0,),
    results_doc: Path | None = None,
) -> None:
    Console(width=max(console.width, 140)).print(results_table(rows))
    console.print(f"Pipeline time: {elapsed / 60:.1f} min. Results in {out_dir}")
    atomic_write_text(
        out_dir / "results.json", json.dumps({"rows": list(rows), "seconds": elapsed}, indent=2)
    )
    atomic_write_text(out_dir / "results.md", results_markdown(rows))
    if results_doc is not None:
        command = " ".join(["bcd-pipeline", f"--seeds {','.join(map(str, seeds))}", *overrides])
        atomic_write_text(results_doc, results_document(rows, command, elapsed))
        console.print(f"Wrote {results_doc}")


def results_document(rows: Sequence[dict[str, Any]], command: str, elapsed: float) -> str:
    return (
        "# Results\n\n"
        "Generated by `bcd-pipeline --results-doc` — do not edit by hand. Command:\n\n"
        f"```\n{command}\n```\n\n"
        "## Embedded benchmark (procedural data, CPU)\n\n"
        "Test split of the embedded dataset (96 images, 96×96, fixed data seed), best checkpoint by val mIoU.\n"
        "IoU in %; mIoU is mean ± sample std over training seeds; bIoU = Boundary IoU (d = 2% of the diagonal),\n"
        "BF = boundary F-score (2 px), conn.err = mean |#components(pred) - #components(GT)| per image and\n"
        "class (lower is better); the other columns are means over seeds. ms/img is the median CPU forward time at\n"
        "batch 1 on the machine that ran the command. The teacher is trained once (one seed).\n\n"
        f"{results_markdown(rows)}\n"
        f"Wall time of the whole run: {elapsed / 60:.1f} min.\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every stage")
    parser.add_argument(
        "--students", default=",".join(DEFAULT_STUDENTS), help="comma-separated student stages"
    )
    parser.add_argument("--retrain-teacher", action="store_true", help="train the teacher even if it exists")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the table and runs go")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds for every student")
    parser.add_argument("--results-doc", type=Path, default=None, help="also write this markdown document")
    args = parser.parse_args(argv)
    # The stages' messages (utils.logs) to the console; the stages' run directories hold the rest.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    # A user mistake in any stage is one line (exit 1); a bug keeps its traceback (utils.errors).
    friendly_errors(run_pipeline)(
        args.overrides, args.students.split(","), args.retrain_teacher, args.out_dir, seeds, args.results_doc
    )


if __name__ == "__main__":
    main()
