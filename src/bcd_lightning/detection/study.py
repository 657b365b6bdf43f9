"""``python -m bcd_lightning.detection.study``: does distillation help detection on the embedded data?

Runs :func:`bcd_lightning.detection.pipeline.run_pipeline` for the chosen methods × paired seeds (seed s
fixes a student's initialisation and sample order for every method; one teacher), then writes
``docs/results_detection.{md,csv,png}``: per method the test box mAP / AP50 / AP75 (mean ± std) and the
paired difference to the baseline with a 95% t-interval over seeds. ``--from-json`` re-tabulates a
finished run's ``results.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bcd_lightning.utils.run_dir import atomic_write_text

METRICS = ("map", "map_50", "map_75")
#: Two-sided 95% Student-t quantiles by degrees of freedom (no scipy needed at run time).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_difference(method: Sequence[float], baseline: Sequence[float]) -> tuple[float, float, float]:
    """Mean of the per-seed differences and its 95% t-interval ``(mean, low, high)``."""
    diffs = [m - b for m, b in zip(method, baseline, strict=True)]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = T975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def summarise(rows: Sequence[Mapping[str, Any]], baseline: str = "baseline") -> list[dict[str, Any]]:
    """One row per method (teacher first), metrics as mean/std over seeds, paired Δ vs the baseline."""
    by: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(str(r["model"]), {})[int(r["seed"])] = r
    base = by.get(baseline, {})
    out = []
    for name, runs in by.items():
        seeds = sorted(runs)
        entry: dict[str, Any] = {"model": name, "seeds": len(seeds), "params": runs[seeds[0]]["params"]}
        entry["ms_per_image"] = statistics.mean(runs[s]["ms_per_image"] for s in seeds)
        for k in METRICS:
            values = [float(runs[s][k]) for s in seeds]
            entry[k] = statistics.mean(values)
            entry[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            common = [s for s in seeds if s in base]
            if name not in (baseline, "teacher") and len(common) == len(seeds):
                d, lo, hi = paired_difference([runs[s][k] for s in common], [base[s][k] for s in common])
                entry[f"d_{k}"], entry[f"d_{k}_lo"], entry[f"d_{k}_hi"] = d, lo, hi
        out.append(entry)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    head = ["model", "seeds", "params", "ms/img", "mAP", "AP50", "AP75", "Δ mAP vs baseline [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [r["model"], str(r["seeds"]), f"{r['params'] / 1e6:.2f}M", f"{r['ms_per_image']:.1f}"]
        cells += [f"{_pct(r[k])} ± {_pct(r[f'{k}_std'])}" if r["seeds"] > 1 else _pct(r[k]) for k in METRICS]
        cells.append(
            f"{100 * r['d_map']:+.1f} [{100 * r['d_map_lo']:+.1f}, {100 * r['d_map_hi']:+.1f}]"
            if "d_map" in r
            else "–"
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "seed", "params", "ms_per_image", *METRICS, "checkpoint"])
    for r in rows:
        ckpt = Path(r["checkpoint"])  # relative to the working directory when inside it (portable page)
        ckpt = ckpt.relative_to(Path.cwd()) if ckpt.is_relative_to(Path.cwd()) else ckpt
        writer.writerow(
            [r["model"], r["seed"], r["params"], f"{r['ms_per_image']:.2f}"]
            + [f"{r[k]:.4f}" for k in METRICS]
            + [str(ckpt)]
        )
    return buf.getvalue()


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(models), 3.2))
    for i, m in enumerate(models):
        values = [100 * r["map"] for r in rows if r["model"] == m]
        ax.scatter([i] * len(values), values, s=18, color="C0")
        ax.hlines(statistics.mean(values), i - 0.25, i + 0.25, color="C3")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("test box mAP (%)")
    ax.set_title("Embedded detection: per-seed test mAP (dots), mean (bar)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_page(
    rows: Sequence[Mapping[str, Any]], seconds: float, command: str, docs: Path, notes: str = ""
) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "# Detection distillation on the embedded data\n\n"
        f"Generated by `python -m bcd_lightning.detection.study` on {date}; do not edit by hand. Command:\n\n"
        f"```\n{command}\n```\n\n"
        "Faster R-CNN teacher ResNet-18-FPN (trained once, reused) and student MobileNetV3-Large-FPN (64 channels), both\n"
        "from scratch; data `detection/data=synthetic` (192 train / 64 val / 64 test images, 128 px); one\n"
        "schedule for every method (`experiment=detection/student`); best checkpoint by val mAP, scored on the\n"
        "test split (COCO box AP, %). Seeds are paired: seed s fixes each student's initialisation and sample\n"
        "order. Δ is the mean over seeds of (method − baseline) with a 95% t-interval; an interval that\n"
        "contains 0 means no detectable difference at this number of seeds.\n\n"
        f"{markdown(summary)}\n"
        f"Wall time of the whole run: {seconds / 60:.1f} min (one CPU thread per run, shared machine).\n\n"
        f"{notes}"
        "Per-seed numbers: `results_detection.csv`; plot: `results_detection.png`.\n"
    )
    atomic_write_text(docs / "results_detection.md", page)
    atomic_write_text(docs / "results_detection.csv", csv_text(rows))
    plot(rows, docs / "results_detection.png")


def merge_results(runs: Sequence[Mapping[str, Any]], students: Sequence[str]) -> tuple[list[dict], float]:
    """Rows of several ``results.json``: one teacher row, the chosen students' rows (a (model, seed) pair
    seen twice is an error: the runs overlap), and the summed wall time."""
    names = {"none": "baseline"}
    wanted = {names.get(s, s) for s in students}
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every stage")
    parser.add_argument("--students", default="none,pkd,bcd", help="detection/distill options")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="re-tabulate finished results.json files (pipeline or study runs, e.g. seed 0 + seeds 1,2)",
    )
    parser.add_argument("--notes", type=Path, default=None, help="a markdown file appended as the findings")
    args = parser.parse_args(argv)
    command = "python -m bcd_lightning.detection.study " + " ".join(
        [f"--students {args.students}", f"--seeds {args.seeds}", *args.overrides]
    )
    if args.from_json:
        command += " --from-json " + " ".join(str(p) for p in args.from_json)
        rows, seconds = merge_results(
            [json.loads(p.read_text()) for p in args.from_json], args.students.split(",")
        )
    else:
        from bcd_lightning.detection.pipeline import run_pipeline

        seeds = [int(s) for s in args.seeds.split(",")]
        start = datetime.now()
        rows = run_pipeline(args.overrides, args.students.split(","), out_dir=args.out_dir, seeds=seeds)
        seconds = (datetime.now() - start).total_seconds()
    if args.notes:
        command += f" --notes {args.notes}"
    notes = args.notes.read_text() + "\n" if args.notes else ""
    write_page(rows, seconds, command, args.docs, notes)
    print(f"Wrote {args.docs / 'results_detection.md'}")


if __name__ == "__main__":
    main()
