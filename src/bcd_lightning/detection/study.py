"""``python -m bcd_lightning.detection.study``: does distillation help detection / instance segmentation on
the embedded data?

Runs :func:`bcd_lightning.detection.pipeline.run_pipeline` for the chosen methods × paired seeds (seed s
fixes a student's initialisation and sample order for every method; one teacher), then writes
``docs/results_<task>.{md,csv,png}``: per method the task's test metrics (mean ± std over seeds) and the
paired difference to the baseline with a 95% t-interval and a paired t-test whose p-values are
Holm-corrected over the methods compared (per metric). ``--from-json`` re-tabulates finished runs'
``results.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bcd_lightning.detection.pipeline import TASKS, Column, Task, task_spec
from bcd_lightning.stats import holm, paired_difference
from bcd_lightning.utils.run_dir import atomic_write_text

#: Family-wise error rate of the Holm-corrected tests.
ALPHA = 0.05
#: What each task's page says about its setup (the pipeline's embedded experiment presets).
SETUPS = {
    "detection": (
        "Faster R-CNN teacher ResNet-18-FPN (trained once, reused) and student MobileNetV3-Large-FPN (64 channels), both\n"
        "from scratch; data `detection/data=synthetic` (192 train / 64 val / 64 test images, 128 px); one\n"
        "schedule for every method (`experiment=detection/student`); best checkpoint by val box mAP, scored on\n"
        "the test split (COCO box AP, %)."
    ),
    "instance": (
        "Mask R-CNN teacher ResNet-18-FPN (trained once, reused) and student MobileNetV3-Large-FPN (64 channels,\n"
        "mask heads of two 64-wide convs), both from scratch; data `detection/data=synthetic_instance` (the blob\n"
        "instances, their masks bridging the vessels that cross them; 192 train / 64 val / 64 test images, 128 px);\n"
        "12 epochs, one schedule for every method\n"
        "(`experiment=instance/student`); best checkpoint by val mask AP, scored on the test split: box, mask and\n"
        "Boundary AP (COCO protocol, faster-coco-eval, boundary dilation 2% of the diagonal; %), and per matched\n"
        "instance the connectivity error |C(pred) − C(gt)| of connected components (`conn. err`, lower is\n"
        "better) and the share of matched predictions with more components than their ground truth\n"
        "(`broken %`, lower is better)."
    ),
}


def summarise(
    rows: Sequence[Mapping[str, Any]], spec: Task = TASKS["detection"], baseline: str = "baseline"
) -> list[dict[str, Any]]:
    """One row per method (teacher first), metrics as mean/std over seeds, and for each method but the
    teacher and the baseline the paired difference to the baseline per metric (``d_<key>``: a
    :class:`~bcd_lightning.stats.PairedResult`) with its Holm-corrected p-value (``p_<key>``)."""
    by: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(str(r["model"]), {})[int(r["seed"])] = r
    base = by.get(baseline, {})
    out = []
    for name, runs in by.items():
        seeds = sorted(runs)
        entry: dict[str, Any] = {"model": name, "seeds": len(seeds), "params": runs[seeds[0]]["params"]}
        entry["ms_per_image"] = statistics.mean(runs[s]["ms_per_image"] for s in seeds)
        for c in spec.columns:
            values = [float(runs[s][c.key]) for s in seeds]
            entry[c.key] = statistics.mean(values)
            entry[f"{c.key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            if name not in (baseline, "teacher") and base:
                entry[f"d_{c.key}"] = paired_difference(
                    {s: float(runs[s][c.key]) for s in seeds}, {s: float(r[c.key]) for s, r in base.items()}
                )
        out.append(entry)
    for c in spec.columns:  # Holm over the methods compared, one family per metric
        compared = [e for e in out if f"d_{c.key}" in e]
        for e, p in zip(compared, holm([e[f"d_{c.key}"].p for e in compared]), strict=True):
            e[f"p_{c.key}"] = p
    return out


def _mean_std(r: Mapping[str, Any], c: Column) -> str:
    return c.cell(r[c.key]) + (f" ± {c.cell(r[f'{c.key}_std'])}" if r["seeds"] > 1 else "")


def _difference(r: Mapping[str, Any], c: Column) -> str:
    d = r.get(f"d_{c.key}")
    if d is None or d.n < 2 or math.isnan(d.low):
        return "–"
    p = r[f"p_{c.key}"]
    verdict = "**significant**" if p <= ALPHA else "not significant"
    mean, low, high = (c.cell(x, signed=True) for x in (d.mean, d.low, d.high))
    return f"{mean} [{low}, {high}], p={p:.2f} {verdict}"


def markdown(summary: Sequence[Mapping[str, Any]], spec: Task = TASKS["detection"]) -> str:
    """The results table (mean ± std per metric) and the paired-difference table (vs the baseline)."""
    head = ["model", "seeds", "params", "ms/img", *(c.header for c in spec.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [r["model"], str(r["seeds"]), f"{r['params'] / 1e6:.2f}M", f"{r['ms_per_image']:.1f}"]
        lines.append("| " + " | ".join(cells + [_mean_std(r, c) for c in spec.columns]) + " |")
    compared = [r for r in summary if any(f"d_{c.key}" in r for c in spec.columns)]
    if compared:
        lines += [
            "",
            "Paired difference to the baseline (method − baseline, same seeds): mean [95% t-interval], paired "
            f"t-test p-value Holm-corrected over the {len(compared)} methods; significant when p ≤ {ALPHA}.",
            "",
            "| model | " + " | ".join(f"Δ {c.header}" for c in spec.columns) + " |",
            "|---|" + "---|" * len(spec.columns),
        ]
        lines += [
            "| " + " | ".join([r["model"], *(_difference(r, c) for c in spec.columns)]) + " |"
            for r in compared
        ]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]], spec: Task = TASKS["detection"]) -> str:
    keys = [c.key for c in spec.columns]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "seed", "params", "ms_per_image", *keys, "checkpoint"])
    for r in rows:
        ckpt = Path(r["checkpoint"])  # relative to the working directory when inside it (portable page)
        ckpt = ckpt.relative_to(Path.cwd()) if ckpt.is_relative_to(Path.cwd()) else ckpt
        writer.writerow(
            [r["model"], r["seed"], r["params"], f"{r['ms_per_image']:.2f}"]
            + [f"{r[k]:.6f}" for k in keys]  # 6 decimals: --from-csv gives the same page
            + [str(ckpt)]
        )
    return buf.getvalue()


def plot(rows: Sequence[Mapping[str, Any]], path: Path, spec: Task = TASKS["detection"]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    first = spec.columns[0]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(models), 3.2))
    for i, m in enumerate(models):
        values = [first.scale * r[first.key] for r in rows if r["model"] == m]
        ax.scatter([i] * len(values), values, s=18, color="C0")
        ax.hlines(statistics.mean(values), i - 0.25, i + 0.25, color="C3")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel(f"test {first.header} (%)")
    ax.set_title(f"Embedded {spec.name}: per-seed test {first.header} (dots), mean (bar)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_page(
    rows: Sequence[Mapping[str, Any]],
    seconds: float | None,
    command: str,
    docs: Path,
    notes: str = "",
    task: str = "detection",
) -> Path:
    """``docs/results_<task>.{md,csv,png}``; returns the page's path."""
    spec = task_spec(task)
    docs.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows, spec)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = {"detection": "Detection", "instance": "Instance-segmentation"}[task]
    page = (
        f"# {title} distillation on the embedded data\n\n"
        f"Generated by `python -m bcd_lightning.detection.study` on {date}; do not edit by hand. Command:\n\n"
        f"```\n{command}\n```\n\n"
        f"{SETUPS[task]} Seeds are paired: seed s fixes each student's initialisation and sample order.\n"
        "No method is tuned: every method runs its preset (the peers' weights for the baselines), the same\n"
        "tuning budget (none) for all.\n\n"
        f"{markdown(summary, spec)}\n"
        + (
            f"Wall time of the whole run: {seconds / 60:.1f} min (one CPU thread per run, shared machine).\n\n"
            if seconds is not None
            else "Re-tabulated from the per-seed CSV: the runs' wall time is not known to this command.\n\n"
        )
        + f"{notes}"
        f"Per-seed numbers: `results_{task}.csv`; plot: `results_{task}.png`.\n"
    )
    path = docs / f"results_{task}.md"
    atomic_write_text(path, page)
    atomic_write_text(docs / f"results_{task}.csv", csv_text(rows, spec))
    plot(rows, docs / f"results_{task}.png", spec)
    return path


def read_csv(path: Path, spec: Task) -> list[dict[str, Any]]:
    """Rows of a page's per-seed CSV (:func:`csv_text`), numbers as numbers; a missing column is one error."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    need = ["model", "seed", "params", "ms_per_image", *(c.key for c in spec.columns), "checkpoint"]
    missing = [k for k in need if rows and k not in rows[0]]
    if not rows or missing:
        raise ValueError(f"--from-csv {path}: no rows or missing columns {missing} (task {spec.name})")
    floats = ["ms_per_image", *(c.key for c in spec.columns)]
    return [
        {**r, "seed": int(r["seed"]), "params": int(float(r["params"])), **{k: float(r[k]) for k in floats}}
        for r in rows
    ]


def method_name(option: str) -> str:
    """The table label (``detection.distill.name``) of a ``detection/distill`` option, e.g. none → baseline."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
        return str(
            compose("train_detection", overrides=[f"detection/distill={option}"]).detection.distill.name
        )


def merge_results(runs: Sequence[Mapping[str, Any]], students: Sequence[str]) -> tuple[list[dict], float]:
    """Rows of several ``results.json``: one teacher row, the chosen students' rows (a (model, seed) pair
    seen twice is an error: the runs overlap), and the summed wall time."""
    wanted = {method_name(s) for s in students}
    rows: list[dict] = []
    seen: set[tuple[str, int]] = set()
    for run in runs:
        for r in run["rows"]:
            key = (str(r["model"]), int(r["seed"]))
            if r["model"] == "teacher":
                if not any(x["model"] == "teacher" for x in rows):
                    rows.append(r)
                continue
            if r["model"] not in wanted:
                continue
            if key in seen:
                raise ValueError(f"--from-json: {key} appears in two runs")
            seen.add(key)
            rows.append(r)
    return rows, float(sum(run["seconds"] for run in runs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every stage")
    parser.add_argument("--task", default="detection", choices=sorted(TASKS))
    parser.add_argument("--students", default=None, help="detection/distill options (default: the task's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1, help="student runs in parallel (threads=1 each)")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="re-tabulate finished results.json files (pipeline or study runs, e.g. seed 0 + seeds 1,2)",
    )
    parser.add_argument(
        "--from-csv",
        type=Path,
        default=None,
        help="re-tabulate a page's own per-seed CSV (docs/results_<task>.csv): the page again, no training",
    )
    parser.add_argument("--notes", type=Path, default=None, help="a markdown file appended as the findings")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    spec = task_spec(args.task)
    students = args.students.split(",") if args.students else list(spec.students)
    command = "python -m bcd_lightning.detection.study " + " ".join(
        [f"--task {args.task}", f"--students {','.join(students)}", f"--seeds {args.seeds}", *args.overrides]
    )
    if args.from_csv:
        command = f"python -m bcd_lightning.detection.study --task {args.task} --from-csv {args.from_csv}"
        rows, seconds = read_csv(args.from_csv, spec), None
    elif args.from_json:
        command += " --from-json " + " ".join(str(p) for p in args.from_json)
        rows, seconds = merge_results([json.loads(p.read_text()) for p in args.from_json], students)
    else:
        from bcd_lightning.detection.pipeline import run_pipeline

        seeds = [int(s) for s in args.seeds.split(",")]
        start = datetime.now()
        rows = run_pipeline(
            args.overrides, students, out_dir=args.out_dir, seeds=seeds, task=args.task, n_jobs=args.jobs
        )
        seconds = (datetime.now() - start).total_seconds()
    if args.notes:
        command += f" --notes {args.notes}"
    notes = args.notes.read_text() + "\n" if args.notes else ""
    print(f"Wrote {write_page(rows, seconds, command, args.docs, notes, args.task)}")


if __name__ == "__main__":
    main()
