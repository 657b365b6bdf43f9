"""``make compare``: every distillation method × seed under one teacher and one schedule, then a table.

    python scripts/compare.py                                   # 9 methods x seeds 0,1,2 on the CPU
    python scripts/compare.py --methods none,bcd --seeds 0 trainer.max_epochs=1   # overrides pass through
    python scripts/compare.py --gpu                             # bigger data/schedule on one GPU
    python scripts/compare.py --aggregate-only logs/embedded_compare/multiruns/<time>

1. The embedded teacher (``teacher.ckpt``, default ``logs/teachers/embedded_unet_r18.ckpt``) is trained
   first when missing, exactly as ``bcd-pipeline`` does, and scored on the test split (teacher row).
2. One Hydra multirun (``bcd-train -m``, joblib launcher, ``--n-jobs`` 1) trains the embedded student for
   ``distill ∈ methods`` × ``seed ∈ seeds`` with the embedded schedule; every job writes metrics.json.
3. The runs are aggregated (mean ± sample std over seeds) into ``<out-dir>/results.{md,csv,png}``.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bcd_lightning.aggregate import (
    TABLE_METRICS,
    csv_table,
    load_runs,
    markdown_table,
    report_failed,
    summarize,
)
from bcd_lightning.utils.run_dir import atomic_write_text

METHODS = ("none", "kd", "cwd", "skd", "ifvd", "cirkd", "boundary", "context", "bcd")
SEEDS = (0, 1, 2)
TASK = "embedded_compare"
#: `--gpu`: more and larger images, a longer schedule, bf16 on one GPU; its own teacher checkpoint.
GPU_OVERRIDES = (
    "trainer=gpu",
    "data.batch_size=16",
    "data.num_workers=4",
    "data.train_set.num_samples=4000",
    "data.val_set.num_samples=400",
    "data.test_set.num_samples=400",
    "data.train_set.image_size=192",
    "data.val_set.image_size=192",
    "data.test_set.image_size=192",
    "trainer.max_epochs=40",
    "teacher.ckpt=${paths.log_dir}/teachers/embedded_unet_r18_gpu.ckpt",
)
KEYS = [key for key, *_ in TABLE_METRICS]
DEFAULT_TUNING_NOTE = (
    "BCD's loss weights and temperatures are the defaults of `conf/distill/bcd.yaml` (chosen as explained "
    'in docs/method.md, "Preset weights"). `make tune` searches them with Optuna on the **validation** '
    "split only (objective: best val mIoU; the test split is never evaluated during the search); copy the "
    "best trial into the preset and re-run `make compare` to update this page."
)


# --- the runs ------------------------------------------------------------------------------------------
def ensure_teacher(overrides: Sequence[str], log_root: Path) -> Path:
    """The teacher checkpoint, trained first (as bcd-pipeline does) when it does not exist yet."""
    from bcd_lightning.pipeline import compose_stage
    from bcd_lightning.train import train

    probe = compose_stage("teacher", overrides, Path("unused"))
    ckpt = Path(probe.teacher.ckpt)
    if ckpt.is_file():
        print(f"Reusing the teacher checkpoint {ckpt}")
    else:
        print(f"No teacher at {ckpt}: training it (experiment=embedded/teacher)")
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        train(compose_stage("teacher", overrides, log_root / "compare_teacher" / stamp))
    return ckpt


def score_teacher(overrides: Sequence[str], ckpt: Path) -> dict[str, Any]:
    """Test-split metrics of the teacher, shaped like a run record (method ``teacher``)."""
    from bcd_lightning.pipeline import compose_stage, score_checkpoint

    probe = compose_stage("teacher", overrides, Path("unused"))
    scores = score_checkpoint(probe, ckpt, "teacher", "teacher")
    metrics = {f"test/{k}": v for k, v in scores.items() if isinstance(v, int | float)}
    return {"method": "teacher", "seed": int(probe.seed), "metrics": metrics, "arch": scores["arch"]}


def sweep_command(
    methods: Sequence[str], seeds: Sequence[int], sweep_dir: Path, overrides: Sequence[str], n_jobs: int
) -> list[str]:
    """The ``bcd-train -m`` command line of the comparison sweep."""
    return [
        str(Path(sys.executable).parent / "bcd-train"),
        "-m",
        "experiment=embedded/baseline",
        f"distill={','.join(methods)}",
        f"seed={','.join(map(str, seeds))}",
        f"task_name={TASK}",
        "tags=[embedded,compare]",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/launcher=parallel",
        f"hydra.launcher.n_jobs={n_jobs}",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]


# --- the report ----------------------------------------------------------------------------------------
COMMAND_FILE = "compare_command.txt"  # in the sweep dir: the command that ran it (for --aggregate-only)


def _tune_command(tune_dir: Path, searched: set[str]) -> str:
    """The ``bcd-train -m`` command of a sweep, rebuilt from its first job's saved Hydra overrides."""
    from omegaconf import OmegaConf

    jobs = sorted(tune_dir.glob("*/.hydra/hydra.yaml"))
    if not jobs:
        return ""
    overrides = OmegaConf.load(jobs[0]).hydra.overrides
    task = [o for o in overrides.task if o.split("=", 1)[0] not in searched]  # drop sampled values
    return " ".join(["bcd-train -m", *task, *overrides.hydra])


def tuning_note(tune_dir: Path, baseline_run: Path | None = None, metric: str = "val/mIoU_best") -> str:
    """How BCD's weights were chosen, from a finished ``make tune`` sweep (its ``optimization_results.yaml``
    and every trial's run record) and, optionally, a run of the previous weights on the same seed."""
    from statistics import median

    from omegaconf import OmegaConf

    results_file = Path(tune_dir) / "optimization_results.yaml"
    if not results_file.is_file():
        raise FileNotFoundError(f"{results_file} not found: is {tune_dir} a finished `make tune` sweep?")
    results = OmegaConf.to_container(OmegaConf.load(results_file))
    scores = [r["metrics"][metric] for r in load_runs(tune_dir) if metric in r["metrics"]]
    params = ", ".join(
        f"`{k.removeprefix('distill.losses.')}`={v:.3g}" for k, v in results["best_params"].items()
    )
    note = (
        f"`make tune` ran {len(scores)} Optuna (TPE) trials, each one training run at seed 0 scored by its "
        f"best **validation** mIoU (`{metric}`; `test=false`, so the test split was never evaluated), and "
        f"chose {params}. Rounded to two significant digits these are the defaults of "
        f"`conf/distill/bcd.yaml` used in the table above. Trial scores (val mIoU): best "
        f"{100 * float(results['best_value']):.2f}, median {100 * median(scores):.2f}, worst "
        f"{100 * min(scores):.2f}. Sweep: `{tune_dir}`."
    )
    command = _tune_command(Path(tune_dir), set(results["best_params"]))
    if command:
        note += f" Command: `{command}`."
    if baseline_run is not None:
        before = next(r for r in load_runs(baseline_run))["metrics"][metric]
        gain = 100 * (float(results["best_value"]) - before)
        note += (
            f" The previous weights (the CE-matching rule of docs/method.md) scored {100 * before:.2f} on "
            f"the same seed and split, {gain:+.2f} points from the search: one seed per trial, so compare "
            "that with the seed-to-seed std in the table before reading it as an improvement."
        )
    return note


def method_rows(
    runs: Sequence[Mapping[str, Any]], methods: Sequence[str], teacher: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Teacher row first (when given), then one row per method in ``methods`` order."""
    rows = summarize([teacher], KEYS) if teacher else []
    return rows + summarize([r for r in runs if r.get("method") != "teacher"], KEYS, order=methods)


def missing_runs(
    runs: Sequence[Mapping[str, Any]], methods: Sequence[str], seeds: Sequence[int]
) -> list[str]:
    done = {(r.get("method"), r.get("seed")) for r in runs}
    return [f"{m} seed {s}" for m in methods for s in seeds if (m, s) not in done]


def _size(gap: float, std: float | None, other_std: float | None) -> str:
    spread = max(std or 0.0, other_std or 0.0)
    return "within one standard deviation" if gap <= spread else "larger than one standard deviation"


def notes(rows: Sequence[Mapping[str, Any]], focus: str = "bcd") -> list[str]:
    """Plain statements of where ``focus`` wins and where it does not, per metric (means over seeds)."""
    students = [r for r in rows if r["method"] != "teacher"]
    mine = next((r for r in students if r["method"] == focus), None)
    if mine is None:
        return [f"`{focus}` was not part of this comparison."]
    out = []
    for key, title, scale, lower in TABLE_METRICS:
        value, std = mine.get(key), mine.get(f"{key}_std") or 0.0
        if value is None or not math.isfinite(value):
            continue
        better = [
            r
            for r in students
            if r is not mine
            and r.get(key) is not None
            and math.isfinite(r[key])
            and (r[key] < value if lower else r[key] > value)
        ]
        others = [r for r in students if r is not mine and r.get(key) is not None and math.isfinite(r[key])]
        if not better:
            # A win is only worth as much as its margin over the runner-up, measured against the seed spread.
            text = f"{title}: `{focus}` has the best mean ({value * scale:.2f})"
            if others:
                second = min(others, key=lambda r: r[key]) if lower else max(others, key=lambda r: r[key])
                gap = abs(second[key] - value)
                text += (
                    f"; runner-up `{second['method']}` {second[key] * scale:.2f} (gap {gap * scale:.2f}, "
                    f"{_size(gap, std, second.get(f'{key}_std'))})"
                )
            out.append(text + ".")
            continue
        best = min(better, key=lambda r: r[key]) if lower else max(better, key=lambda r: r[key])
        gap = abs(best[key] - value)
        size = _size(gap, std, best.get(f"{key}_std"))
        names = ", ".join(f"`{r['method']}`" for r in better)
        out.append(
            f"{title}: `{focus}` does **not** win — better mean: {names}; best `{best['method']}` "
            f"{best[key] * scale:.2f} vs {value * scale:.2f} (gap {gap * scale:.2f}, {size})."
        )
    base = next((r for r in students if r["method"] == "none"), None)
    if base and base.get("train/step_time_median_s") and mine.get("train/step_time_median_s"):
        ratio = mine["train/step_time_median_s"] / base["train/step_time_median_s"]
        out.append(f"Training cost: a `{focus}` step takes {ratio:.2f}× the time of a student-alone step.")
    return out


def results_document(
    rows: Sequence[Mapping[str, Any]],
    command: str,
    date: str,
    seeds: Sequence[int],
    missing: Sequence[str],
    tuning_note: str,
    teacher_arch: str = "",
) -> str:
    n_seeds = len(seeds)
    lines = [
        "# Method comparison (embedded benchmark)",
        "",
        f"Generated by `make compare` on {date} — do not edit by hand. Command:",
        "",
        f"```\n{command}\n```",
        "",
        "Test split of the embedded dataset, best checkpoint by val mIoU, one teacher"
        + (f" ({teacher_arch})" if teacher_arch else "")
        + f" and one schedule for every student; mean ± sample std over {n_seeds} training seed(s) "
        f"({', '.join(map(str, seeds))}). IoU values in %; bIoU = Boundary IoU, BF = boundary F-score, "
        "conn.err = mean |#components(pred) − #components(GT)| per image and class (lower is better), "
        "step ms = median training-step time (forward + backward + optimizer; on the machine that ran the "
        "command, so only the ratios between methods carry over). ↑ higher is better, ↓ lower.",
        "",
        markdown_table(rows),
        "![results](results.png)",
        "",
        "## Notes",
        "",
        *(f"- {n}" for n in notes(rows)),
    ]
    if missing:
        lines.append(f"- Missing runs (crashed or not run): {', '.join(missing)}.")
    lines += ["", "## How the BCD weights were chosen", "", tuning_note, ""]
    return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Bars with error bars (sample std) per metric; the teacher as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [m for m in TABLE_METRICS if m[0] != "train/step_time_median_s"]
    teacher = next((r for r in rows if r["method"] == "teacher"), None)
    students = [r for r in rows if r["method"] != "teacher"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    names = [r["method"] for r in students]
    for ax, (key, title, scale, lower) in zip(axes, panels, strict=True):
        means = [(r.get(key) or math.nan) * scale for r in students]
        stds = [(r.get(f"{key}_std") or 0.0) * scale for r in students]
        colors = ["tab:red" if n == "bcd" else "tab:blue" for n in names]
        ax.bar(names, means, yerr=stds, capsize=3, color=colors)
        if teacher and teacher.get(key) is not None and math.isfinite(teacher[key]):
            ax.axhline(teacher[key] * scale, ls="--", color="k", lw=1, label="teacher")
            ax.legend(loc="lower right" if not lower else "upper right", fontsize=8)
        finite = [m for m in means if math.isfinite(m)]
        if teacher and teacher.get(key) is not None and math.isfinite(teacher[key]):
            finite.append(teacher[key] * scale)
        if finite and not lower:  # zoom on the differences (teacher line included)
            spread = max(stds) or 1.0
            ax.set_ylim(max(0.0, min(finite) - 3 * spread), max(finite) + spread + 1.0)
        ax.set_title(f"{title} ({'lower' if lower else 'higher'} is better)")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(
    runs: Sequence[Mapping[str, Any]],
    teacher: Mapping[str, Any] | None,
    methods: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    command: str,
    date: str,
    tuning_note: str = DEFAULT_TUNING_NOTE,
) -> list[dict[str, Any]]:
    """``results.md``, ``results.csv`` and ``results.png`` in ``out_dir``; returns the table rows."""
    rows = method_rows(runs, methods, teacher)
    missing = missing_runs(runs, methods, seeds)
    arch = (teacher or {}).get("arch", "")
    atomic_write_text(
        out_dir / "results.md", results_document(rows, command, date, seeds, missing, tuning_note, arch)
    )
    atomic_write_text(out_dir / "results.csv", csv_table(rows, KEYS))
    plot(rows, out_dir / "results.png")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the teacher and every student")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated distill presets")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated training seeds")
    parser.add_argument("--n-jobs", type=int, default=1, help="jobs in parallel (joblib launcher)")
    parser.add_argument("--gpu", action="store_true", help="bigger data and schedule on one GPU")
    parser.add_argument("--out-dir", type=Path, default=Path("docs"), help="where results.{md,csv,png} go")
    parser.add_argument("--sweep-dir", type=Path, default=None, help="multirun directory (default: logs/...)")
    parser.add_argument(
        "--aggregate-only",
        type=Path,
        default=None,
        metavar="SWEEP_DIR",
        help="only tabulate a finished sweep",
    )
    parser.add_argument("--tuning-note", default=None, help="how BCD's weights were chosen (text)")
    parser.add_argument("--tune-dir", type=Path, default=None, help="a finished `make tune` sweep: the note")
    parser.add_argument(
        "--tune-baseline", type=Path, default=None, help="a run of the previous BCD weights (same seed)"
    )
    args = parser.parse_args(argv)
    note = args.tuning_note or DEFAULT_TUNING_NOTE
    if args.tune_dir is not None:
        note = tuning_note(args.tune_dir, args.tune_baseline)
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = [*(GPU_OVERRIDES if args.gpu else ()), *args.overrides]
    log_root = Path(os.environ.get("BCD_ROOT", ".")) / "logs"
    command = " ".join(["python scripts/compare.py", *(argv if argv is not None else sys.argv[1:])])

    teacher_ckpt = ensure_teacher(overrides, log_root)
    sweep_dir = args.aggregate_only
    if sweep_dir is None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        sweep_dir = (args.sweep_dir or log_root / TASK / "multiruns" / stamp).resolve()
        cmd = sweep_command(
            methods, seeds, sweep_dir, [*overrides, f"teacher.ckpt={teacher_ckpt}"], args.n_jobs
        )
        print("Sweep:", " ".join(cmd), flush=True)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep_dir / COMMAND_FILE, command + "\n")
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            print(
                f"error: the sweep failed (exit {done.returncode}); finished jobs are in {sweep_dir}. "
                f"Tabulate them with --aggregate-only {sweep_dir}",
                file=sys.stderr,
            )
            report_failed(sweep_dir)
            return done.returncode
    runs = load_runs(sweep_dir)
    report_failed(sweep_dir)
    if args.aggregate_only is not None and (sweep_dir / COMMAND_FILE).is_file():
        # The page names the command that trained the runs, and this one that tabulated them.
        command = f"{(sweep_dir / COMMAND_FILE).read_text().strip()}\n# tabulated with: {command}"
    teacher = score_teacher(overrides, teacher_ckpt)
    date = datetime.now().strftime("%Y-%m-%d %H:%M")
    rows = write_outputs(runs, teacher, methods, seeds, args.out_dir, command, date, note)
    print(markdown_table(rows), end="")
    print(f"Wrote {args.out_dir / 'results.md'}, results.csv, results.png (runs in {sweep_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
