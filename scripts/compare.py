"""``make compare``: every distillation method × seed, paired by seed, with significance tests.

    python scripts/compare.py                      # the embedded benchmark and its variant -> docs/
    python scripts/compare.py --quick              # smoke test: 2 methods x 2 seeds, tiny runs
    python scripts/compare.py --benchmarks embedded --methods none,kd,bcd --seeds 0,1,2
    python scripts/compare.py data=folder data.root=my_data data.num_classes=3   # your data -> the run dir
    python scripts/compare.py --aggregate-only logs/compare/<time>            # re-tabulate finished runs

Per benchmark (a named set of data and schedule overrides, or your own ``data=...`` overrides):

1. The teacher (``teacher.ckpt``) is trained first when missing, exactly as ``bcd-pipeline`` does.
2. Every method (each preset of ``conf/distill/``, plus ``bcd`` minus each of its terms) is trained for
   every seed, ``--n-jobs`` runs at a time. Seed ``s`` fixes the student's initial weights and the order
   of the training samples for every method (``L.seed_everything(s)`` before the student is built; the
   shuffle generator is seeded from it), so differences are measured within a seed.
3. The runs are tabulated: mean ± std per method, and the paired difference of every method against the
   baseline student (``none``) and against ``kd`` with a 95% t-interval, the paired t-test p-value and
   its Holm correction across methods (:mod:`bcd_lightning.stats`), per metric and per class.

A run whose ``metrics.json`` exists is not run again, so an interrupted comparison resumes.
"""

# No `from __future__ import annotations`: the tests load this script without registering it in
# sys.modules, where dataclasses cannot resolve string annotations.
import argparse
import csv
import io
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bcd_lightning.aggregate import (
    TABLE_METRICS,
    load_runs,
    markdown_table,
    metric_value,
    report_failed,
    summarize,
)
from bcd_lightning.jobs import JobResult, TrainJob, run_jobs
from bcd_lightning.stats import PairedResult, holm, paired_difference
from bcd_lightning.utils.run_dir import atomic_write_text

SEEDS = (0, 1, 2, 3, 4)
FOCUS = "bcd"  # the method whose ablations are run and whose results the notes discuss
REFERENCES = ("none", "kd")  # paired differences are taken against these
ALPHA = 0.05
KEYS = [key for key, *_ in TABLE_METRICS]
PAIRED_METRICS = [m for m in TABLE_METRICS if m[0] != "train/step_time_median_s"]
COMMAND_FILE = "compare_command.txt"
_SIZE = ("data.train_set.image_size", "data.val_set.image_size", "data.test_set.image_size")


@dataclass(frozen=True)
class Benchmark:
    """A dataset and schedule: Hydra overrides shared by the teacher and every student."""

    name: str
    title: str
    overrides: tuple[str, ...]
    #: Extra overrides for the teacher only (a longer schedule: the teacher must be strong).
    teacher_overrides: tuple[str, ...] = ()
    #: Methods run on this benchmark (None: all).
    methods: tuple[str, ...] | None = None
    split: str = "test"


def _sizes(size: str) -> tuple[str, ...]:
    return tuple(f"{key}={size}" for key in _SIZE)


#: The teacher's outputs per training sample are computed once per method and reused by every seed
#: (deterministic data; docs/performance.md): fp16-rounded teacher outputs for every method alike.
CACHE = ("teacher.cache.enabled=true",)
#: The embedded benchmark: 64x64 images (cheap steps), a fixed schedule long enough to converge.
EMBEDDED = Benchmark(
    name="embedded",
    title="embedded synthetic data (64×64, 256 training images, 4 epochs; teacher 384 images, 12 epochs)",
    overrides=(
        *_sizes("64"),
        "data.train_set.num_samples=256",
        "trainer.max_epochs=4",
        *CACHE,
        "teacher.ckpt=${paths.log_dir}/teachers/bench_embedded_unet_r18.ckpt",
    ),
    teacher_overrides=("data.train_set.num_samples=384", "trainer.max_epochs=12"),
)
#: A differently built variant: other image shape, sample count, data seeds and difficulty (fainter blob
#: textures, twice the noise): where BCD's untuned defaults must transfer.
VARIANT = Benchmark(
    name="variant",
    title="embedded variant (256 training images drawn with other data seeds, fainter blob textures ×0.6, noise ×2, 4 epochs; teacher 8 epochs)",
    overrides=(
        *_sizes("64"),
        "data.train_set.num_samples=256",
        "data.train_set.seed=4000",
        "data.val_set.seed=5000",
        "data.test_set.seed=6000",
        *(f"+data.{s}.texture=0.6" for s in ("train_set", "val_set", "test_set")),
        *(f"+data.{s}.noise=2.0" for s in ("train_set", "val_set", "test_set")),
        "trainer.max_epochs=4",
        *CACHE,
        "teacher.ckpt=${paths.log_dir}/teachers/bench_variant_unet_r18.ckpt",
    ),
    teacher_overrides=("trainer.max_epochs=8",),
    methods=("none", "kd", "bcd"),
)
BENCHMARKS = {b.name: b for b in (EMBEDDED, VARIANT)}
#: Teacher training in a comparison: CSV logs, no image panels (what the students get too).
QUIET = (
    "logger=csv",
    "print_config=false",
    "trainer.enable_progress_bar=false",
    "callbacks.panels.enabled=false",
)
#: --quick: a smoke test of the whole path (seconds per run, numbers meaningless).
QUICK = (
    "data.train_set.num_samples=16",
    "data.val_set.num_samples=8",
    "data.test_set.num_samples=8",
    "data.batch_size=4",
    *_sizes("64"),
    "trainer.max_epochs=1",
)


# --- methods ---------------------------------------------------------------------------------------------
def preset_methods(conf_dir: Path | None = None) -> list[str]:
    """Every ``distill`` preset Hydra sees (package ``conf/distill/`` plus ``BCD_CONFIG_PATH``), or the
    ``*.yaml`` files of ``conf_dir``: a new file is a new method. ``none`` first, ``FOCUS`` last."""
    from bcd_lightning.utils.presets import group_options

    names = sorted(p.stem for p in conf_dir.glob("*.yaml")) if conf_dir else group_options("distill")
    head = [n for n in ("none",) if n in names]
    tail = [n for n in (FOCUS,) if n in names]
    return head + [n for n in names if n not in head + tail] + tail


def focus_terms(overrides: Sequence[str] = ()) -> list[str]:
    """The loss terms of the composed ``FOCUS`` preset (its ablations drop one each)."""
    from bcd_lightning.pipeline import compose_stage

    cfg = compose_stage("baseline", [f"distill={FOCUS}", *overrides], Path("unused"))
    return list(cfg.distill.losses)


def ablation_name(term: str) -> str:
    return f"{FOCUS}-{term}"


#: On ``FOCUS`` runs: each term's value and gradient norm over training (the page's "What each term does").
MONITOR = ("+callbacks.term_monitor={_target_:bcd_lightning.distill.monitor.TermMonitor,every_n_steps:48}",)


@dataclass(frozen=True)
class Method:
    name: str
    overrides: tuple[str, ...]


def method_specs(names: Sequence[str], ablate: Sequence[str]) -> list[Method]:
    """Presets by name, then ``FOCUS`` minus each term in ``ablate``."""
    specs = [Method(n, (f"distill={n}", *(MONITOR if n == FOCUS else ()))) for n in names]
    specs += [
        Method(
            ablation_name(t), (f"distill={FOCUS}", f"~distill.losses.{t}", f"distill.name={ablation_name(t)}")
        )
        for t in ablate
    ]
    return specs


# --- the runs --------------------------------------------------------------------------------------------
def ensure_teacher(overrides: Sequence[str], log_root: Path) -> Path:
    """The teacher checkpoint, trained first (as bcd-pipeline does) when it does not exist yet."""
    from bcd_lightning.pipeline import compose_stage
    from bcd_lightning.train import train

    probe = compose_stage("teacher", overrides, Path("unused"))
    ckpt = Path(probe.teacher.ckpt)
    if ckpt.is_file():
        print(f"Reusing the teacher checkpoint {ckpt}", flush=True)
    else:
        print(f"No teacher at {ckpt}: training it (experiment=embedded/teacher)", flush=True)
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        train(compose_stage("teacher", overrides, log_root / "compare_teacher" / stamp))
    return ckpt


def score_teacher(overrides: Sequence[str], ckpt: Path) -> dict[str, Any]:
    """Metrics of the teacher on the test split, shaped like a run record (method ``teacher``)."""
    from bcd_lightning.pipeline import compose_stage, score_checkpoint

    probe = compose_stage("teacher", overrides, Path("unused"))
    scores = score_checkpoint(probe, ckpt, "teacher", "teacher")
    metrics = {f"test/{k}": v for k, v in scores.items() if isinstance(v, int | float)}
    return {"method": "teacher", "seed": int(probe.seed), "metrics": metrics, "arch": scores["arch"]}


def job_overrides(method: Method, seed: int, overrides: Sequence[str]) -> list[str]:
    """The Hydra overrides of one run of ``method`` at ``seed`` (``experiment=embedded/baseline`` + these)."""
    return [
        *method.overrides,
        f"seed={seed}",
        "task_name=compare",
        "tags=[compare]",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        "callbacks.panels.enabled=false",
        "callbacks.confusion_matrix.enabled=false",
        "logger=csv",
        *overrides,
    ]


def plan_jobs(
    methods: Sequence[Method], seeds: Sequence[int], root: Path, overrides: Sequence[str]
) -> list[TrainJob]:
    """Seed-major order (a partial run still has complete seeds); jobs with a run record are skipped."""
    jobs = []
    for seed in seeds:
        for method in methods:
            run_dir = root / method.name / f"seed{seed}"
            if (run_dir / "metrics.json").is_file():
                continue
            jobs.append(TrainJob(method.name, tuple(job_overrides(method, seed, overrides)), str(run_dir)))
    return jobs


def _report(result: JobResult) -> None:
    status = "ok" if result.ok else f"FAILED (see {result.job.log})"
    print(
        f"  {result.job.name} {Path(result.job.run_dir).name}: {status} in {result.seconds:.0f} s", flush=True
    )


# --- statistics ------------------------------------------------------------------------------------------
def values_by_seed(runs: Sequence[Mapping[str, Any]], method: str, key: str) -> dict[int, float]:
    out = {}
    for run in runs:
        value = metric_value(run, key)
        if run.get("method") == method and value is not None and math.isfinite(float(value)):
            out[int(run["seed"])] = float(value)
    return out


def class_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """``test/IoU/<class>`` keys present in the runs (first appearance order)."""
    keys: list[str] = []
    for run in runs:
        for key in run.get("metrics", {}):
            if key.startswith("test/IoU/") and key not in keys:
                keys.append(key)
    return keys


@dataclass(frozen=True)
class Comparison:
    method: str
    reference: str
    metric: str
    result: PairedResult
    p_holm: float

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p_holm) and self.p_holm <= ALPHA


def paired_table(
    runs: Sequence[Mapping[str, Any]], methods: Sequence[str], reference: str, metric: str
) -> list[Comparison]:
    """``method − reference`` for every other method, Holm-corrected across those methods."""
    ref = values_by_seed(runs, reference, metric)
    others = [m for m in methods if m != reference]
    results = [paired_difference(values_by_seed(runs, m, metric), ref) for m in others]
    adjusted = holm([r.p for r in results])
    return [Comparison(m, reference, metric, r, p) for m, r, p in zip(others, results, adjusted, strict=True)]


def ablation_table(
    runs: Sequence[Mapping[str, Any]], ablations: Sequence[str], metric: str
) -> list[Comparison]:
    """``FOCUS − (FOCUS minus term)``: what each term adds, Holm-corrected across the terms."""
    mine = values_by_seed(runs, FOCUS, metric)
    results = [paired_difference(mine, values_by_seed(runs, a, metric)) for a in ablations]
    adjusted = holm([r.p for r in results])
    return [Comparison(FOCUS, a, metric, r, p) for a, r, p in zip(ablations, results, adjusted, strict=True)]


# --- the report ------------------------------------------------------------------------------------------
def _fmt(x: float, scale: float, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x * scale:+.{digits}f}"


def _p(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def comparison_rows(comparisons: Sequence[Comparison], scale: float, lower: bool) -> list[str]:
    lines = []
    for c in comparisons:
        r = c.result
        if c.significant:
            better = (r.mean < 0) if lower else (r.mean > 0)
            verdict = "**better**" if better else "**worse**"
        else:
            verdict = "n.s."
        lines.append(
            f"| {c.method} | {c.reference} | {r.n} | {_fmt(r.mean, scale)} | "
            f"[{_fmt(r.low, scale)}, {_fmt(r.high, scale)}] | {_p(r.p)} | {_p(c.p_holm)} | {verdict} |"
        )
    return lines


PAIRED_HEADER = [
    "| method | vs | n | Δ mean | 95% CI | p | p (Holm) | verdict |",
    "|---|---|---|---|---|---|---|---|",
]


@dataclass
class BenchmarkReport:
    benchmark: Benchmark
    runs: list[dict[str, Any]]
    teacher: dict[str, Any] | None
    methods: list[str]
    ablations: list[str]
    seeds: list[int]
    wall_s: float | None = None
    #: Methods that exist (presets, ablations) but were not run here: the page says so.
    skipped: tuple[str, ...] = ()


def baseline_sigma(report: BenchmarkReport) -> float:
    vals = list(values_by_seed(report.runs, "none", "test/mIoU").values())
    if len(vals) < 2:
        return math.nan
    mean = sum(vals) / len(vals)
    return 100 * math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def teacher_gap(report: BenchmarkReport) -> float:
    vals = list(values_by_seed(report.runs, "none", "test/mIoU").values())
    t = (report.teacher or {}).get("metrics", {}).get("test/mIoU")
    if not vals or t is None:
        return math.nan
    return 100 * (float(t) - sum(vals) / len(vals))


def significance_notes(report: BenchmarkReport) -> list[str]:
    """Plain statements of where ``FOCUS`` differs significantly (Holm, α = 0.05) and where it does not."""
    methods = report.methods
    if FOCUS not in methods:
        return [f"`{FOCUS}` was not part of this comparison."]
    out = []
    for reference in [r for r in (*REFERENCES, "cwd") if r in methods and r != FOCUS]:
        for key, title, scale, lower in PAIRED_METRICS:
            c = next(x for x in paired_table(report.runs, methods, reference, key) if x.method == FOCUS)
            r = c.result
            word = (
                "significantly " + ("better" if ((r.mean < 0) if lower else (r.mean > 0)) else "worse")
                if c.significant
                else "not significantly different"
            )
            out.append(
                f"{title}: `{FOCUS}` − `{reference}` = {_fmt(r.mean, scale)} "
                f"[{_fmt(r.low, scale)}, {_fmt(r.high, scale)}], p = {_p(r.p)}, Holm p = {_p(c.p_holm)}: {word}."
            )
    for reference in [r for r in REFERENCES if r in methods and r != FOCUS]:
        per_class = []
        for key in class_keys(report.runs):
            c = next(x for x in paired_table(report.runs, methods, reference, key) if x.method == FOCUS)
            if math.isfinite(c.result.mean):
                per_class.append((c.result.mean, key.removeprefix("test/IoU/"), c.significant))
        if per_class:
            low, high = min(per_class), max(per_class)
            out.append(
                f"Per class vs `{reference}`: largest gain `{high[1]}` {_fmt(high[0], 100)}"
                f"{' (significant)' if high[2] else ' (n.s.)'}, largest loss `{low[1]}` {_fmt(low[0], 100)}"
                f"{' (significant)' if low[2] else ' (n.s.)'} IoU points."
            )
    return out


def term_history(runs: Sequence[Mapping[str, Any]], method: str = FOCUS) -> dict[int, dict[str, list[float]]]:
    """``step -> column -> values over seeds`` of the ``monitor/*`` columns in ``method``'s CSV logs."""
    history: dict[int, dict[str, list[float]]] = {}
    for run in runs:
        if run.get("method") != method or not run.get("run_dir"):
            continue
        for path in Path(run["run_dir"]).rglob("metrics.csv"):
            with open(path) as handle:
                for row in csv.DictReader(handle):
                    cols = {
                        k: v for k, v in row.items() if k and k.startswith("monitor/") and v not in ("", None)
                    }
                    if cols and row.get("step") not in ("", None):
                        at = history.setdefault(int(float(row["step"])), {})
                        for k, v in cols.items():
                            at.setdefault(k, []).append(float(v))
    return history


def term_section(report: BenchmarkReport) -> list[str]:
    history = term_history(report.runs)
    if not history:
        return []
    terms = sorted({k.split("/")[1] for at in history.values() for k in at} - {"ce"})
    terms = ["ce", *terms]
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    lines = [
        f"### What each `{FOCUS}` term does (mean over seeds; weighted value / gradient norm on the student)",
        "",
        "| step | " + " | ".join(terms) + " |",
        "|---|" + "---|" * len(terms),
    ]
    for step in sorted(history):
        at = history[step]
        cells = [
            f"{mean(at.get(f'monitor/{t}/value', [])):.3g} / {mean(at.get(f'monitor/{t}/grad_norm', [])):.3g}"
            for t in terms
        ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    last = history[max(history)]
    factors = ", ".join(
        f"`{t}` {mean(last.get(f'monitor/{t}/factor', [])):.3g}"
        for t in terms[1:]
        if f"monitor/{t}/factor" in last
    )
    lines += ["", f"Calibration factors c (raw → weighted, frozen after the first steps): {factors}."]
    ratios = {}
    for t in terms[1:]:
        norms = [
            mean(at.get(f"monitor/{t}/grad_norm", [])) / mean(at.get("monitor/ce/grad_norm", []))
            for at in history.values()
        ]
        norms = [n for n in norms if math.isfinite(n)]
        if norms:
            ratios[t] = sum(norms) / len(norms)
    if ratios:
        ranked = sorted(ratios.items(), key=lambda kv: -kv[1])
        lines.append(
            "Gradient norm relative to the CE's, averaged over the logged steps: "
            + ", ".join(f"`{t}` {r:.2f}×" for t, r in ranked)
            + f". Equal values (each term at 1/4 of the CE) do not mean equal pull: `{ranked[0][0]}` pushes "
            f"the student hardest, `{ranked[-1][0]}` least."
        )
    lines.append("")
    return lines


def benchmark_section(report: BenchmarkReport) -> list[str]:
    b = report.benchmark
    runs, methods = report.runs, [*report.methods, *report.ablations]
    rows = summarize([report.teacher], KEYS) if report.teacher else []
    rows += summarize([r for r in runs if r.get("method") != "teacher"], KEYS, order=methods)
    sigma, gap = baseline_sigma(report), teacher_gap(report)
    lines = [
        f"## Benchmark `{b.name}`: {b.title}",
        "",
        f"Every number is on the **{b.split}** split (best checkpoint by validation mIoU; the teacher's "
        f"checkpoint is scored on the same split). Seeds: {', '.join(map(str, report.seeds))}. "
        + (f"Wall time of this benchmark's runs: {report.wall_s / 60:.1f} min. " if report.wall_s else "")
        + "Overrides: `"
        + " ".join(b.overrides)
        + "`"
        + (f"; teacher also `{' '.join(b.teacher_overrides)}`." if b.teacher_overrides else "."),
        "",
        f"- Baseline student (`none`) σ over seeds: **{sigma:.2f} mIoU** (target ≤ 1.0: "
        f"{'met' if sigma <= 1.0 else f'missed by {sigma - 1.0:.2f}'}).",
        f"- Teacher − baseline student gap: **{gap:.2f} mIoU** (target ≥ 10: "
        f"{'met' if gap >= 10 else f'missed by {10 - gap:.2f}'}).",
        "",
        markdown_table(rows),
    ]
    for key, title, scale, lower in PAIRED_METRICS:
        lines += [f"### Paired differences: {title} ({'lower' if lower else 'higher'} is better)", ""]
        lines += PAIRED_HEADER
        for reference in REFERENCES:
            if reference in methods:
                lines += comparison_rows(paired_table(runs, report.methods, reference, key), scale, lower)
        lines.append("")
    per_class = class_keys(runs)
    if per_class:
        lines += [
            "### Per-class IoU: paired differences (Δ mean in IoU points; * = significant after Holm)",
            "",
            "| method | vs | " + " | ".join(k.removeprefix("test/IoU/") for k in per_class) + " |",
            "|---|---|" + "---|" * len(per_class),
        ]
        for reference in [r for r in REFERENCES if r in methods]:
            tables = {
                k: {c.method: c for c in paired_table(runs, report.methods, reference, k)} for k in per_class
            }
            for m in [m for m in report.methods if m != reference]:
                cells = []
                for k in per_class:
                    c = tables[k][m]
                    cells.append(_fmt(c.result.mean, 100) + ("*" if c.significant else ""))
                lines.append(f"| {m} | {reference} | " + " | ".join(cells) + " |")
        lines.append("")
    if report.ablations:
        lines += [
            f"### Ablation: `{FOCUS}` − `{FOCUS}` without one term (positive: the term helps)",
            "",
            *PAIRED_HEADER,
        ]
        for key, _, scale, lower in PAIRED_METRICS[:1]:
            lines += comparison_rows(ablation_table(runs, report.ablations, key), scale, lower)
        lines.append("")
    if report.skipped:
        lines += [
            f"**Not run on this benchmark** (not part of this command): {', '.join(f'`{m}`' for m in report.skipped)}.",
            "",
        ]
    lines += term_section(report)
    lines += ["### Notes", "", *(f"- {n}" for n in significance_notes(report)), ""]
    missing = [
        f"{m} seed {s}"
        for m in methods
        for s in report.seeds
        if s not in values_by_seed(runs, m, "test/mIoU")
    ]
    if missing:
        lines += [f"- Missing runs (crashed or not run): {', '.join(missing)}.", ""]
    return lines


TUNING_NOTE = (
    "**Equal tuning: no method is tuned.** Every baseline uses its reference's weights and temperatures "
    "(the header of each `conf/distill/*.yaml` says which), and BCD uses its transfer rule: each term is "
    "scaled to a fixed fraction of the cross-entropy over the first training steps "
    '(`calibrate`, docs/method.md "Preset weights"). The test split is never used to choose anything.'
)


def results_document(
    reports: Sequence[BenchmarkReport],
    command: str,
    date: str,
    wall_s: float | None,
    title: str,
    note: str | None = None,
) -> str:
    lines = [
        f"# {title}",
        "",
        f"Generated by `scripts/compare.py` on {date} — do not edit by hand."
        + (f" Total wall time: **{wall_s / 60:.1f} min**." if wall_s else "")
        + " Command:",
        "",
        f"```\n{command}\n```",
        "",
        "Paired design: seed s fixes the student's initial weights and its training-batch order for every "
        "method, so each difference is taken within a seed. Δ = method − reference per seed, averaged; "
        "95% CI = t-interval of that mean; p = two-sided paired t-test; p (Holm) = Holm–Bonferroni across "
        f"the methods compared with the same reference on the same metric. A difference is called "
        f"better/worse only when p (Holm) ≤ {ALPHA}; otherwise n.s. IoU values in %; bIoU = Boundary IoU, "
        "BF = boundary F-score, conn.err = mean |#components(pred) − #components(GT)| per image and class "
        "(lower is better), step ms = median training-step time on the machine that ran the command.",
        "",
        TUNING_NOTE,
        "",
        *([f"**Note on this run:** {note}", ""] if note else []),
        "![paired differences](results.png)",
        "",
    ]
    for report in reports:
        lines += benchmark_section(report)
    return "\n".join(lines)


def num(x: float | None) -> str:
    """A CSV number: exact (repr), empty when missing or not finite."""
    return "" if x is None or not math.isfinite(float(x)) else repr(float(x))


def _result_cells(c: Any) -> list[Any]:
    """The CSV cells of one paired comparison: n, mean, std, 95% interval, p and Holm's p."""
    r = c.result
    return [r.n, num(r.mean), num(r.std), num(r.low), num(r.high), num(r.p), num(c.p_holm)]


def results_csv(reports: Sequence[BenchmarkReport]) -> str:
    """Long format: one row per (benchmark, kind, method, reference, metric); raw (unscaled) values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "benchmark",
            "kind",
            "method",
            "reference",
            "metric",
            "n",
            "mean",
            "std",
            "ci_low",
            "ci_high",
            "p",
            "p_holm",
        ]
    )

    for report in reports:
        name = report.benchmark.name
        everyone = [*report.methods, *report.ablations]
        rows = summarize([report.teacher], KEYS) if report.teacher else []
        rows += summarize([r for r in report.runs if r.get("method") != "teacher"], KEYS, order=everyone)
        for row in rows:
            for key in KEYS:
                writer.writerow(
                    [
                        name,
                        "mean",
                        row["method"],
                        "",
                        key,
                        row["n"],
                        num(row.get(key)),
                        num(row.get(f"{key}_std")),
                        "",
                        "",
                        "",
                        "",
                    ]
                )
        metrics = [k for k, *_ in PAIRED_METRICS] + class_keys(report.runs)
        for reference in [r for r in REFERENCES if r in report.methods]:
            for key in metrics:
                for c in paired_table(report.runs, report.methods, reference, key):
                    writer.writerow([name, "paired", c.method, reference, key, *_result_cells(c)])
        for c in ablation_table(report.runs, report.ablations, "test/mIoU") if report.ablations else []:
            writer.writerow([name, "ablation", FOCUS, c.reference, "test/mIoU", *_result_cells(c)])
    return out.getvalue()


def plot(reports: Sequence[BenchmarkReport], path: Path) -> None:
    """Paired mIoU differences with 95% intervals: one panel per (benchmark, reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(rep, ref) for rep in reports for ref in REFERENCES if ref in rep.methods]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.0 * max(1, len(panels)), 4.8), squeeze=False)
    for ax, (rep, ref) in zip(axes[0], panels, strict=False):
        comps = paired_table(rep.runs, rep.methods, ref, "test/mIoU")
        if rep.ablations and ref == REFERENCES[0]:
            comps += paired_table(rep.runs, [*rep.ablations, ref], ref, "test/mIoU")
        names = [c.method for c in comps]
        means = [100 * c.result.mean for c in comps]
        lo = [100 * (c.result.mean - c.result.low) if math.isfinite(c.result.low) else 0 for c in comps]
        hi = [100 * (c.result.high - c.result.mean) if math.isfinite(c.result.high) else 0 for c in comps]
        colors = ["tab:red" if c.significant else "tab:gray" for c in comps]
        y = list(range(len(comps)))[::-1]
        ax.errorbar(means, y, xerr=[lo, hi], fmt="none", ecolor="k", capsize=3, lw=1)
        ax.scatter(means, y, c=colors, zorder=3)
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_yticks(y, names)
        ax.set_xlabel(f"Δ test mIoU vs {ref} (points, 95% CI)")
        ax.set_title(f"{rep.benchmark.name}: method − {ref}\n(red: significant after Holm)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(
    reports: Sequence[BenchmarkReport],
    out_dir: Path,
    command: str,
    date: str,
    wall_s: float | None = None,
    title: str = "Method comparison (embedded benchmarks)",
    note: str | None = None,
) -> None:
    """``results.md``, ``results.csv`` and ``results.png`` in ``out_dir``."""
    atomic_write_text(out_dir / "results.md", results_document(reports, command, date, wall_s, title, note))
    atomic_write_text(out_dir / "results.csv", results_csv(reports))
    plot(reports, out_dir / "results.png")


# --- main ------------------------------------------------------------------------------------------------
def _custom_data(overrides: Sequence[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") in ("data", "experiment") for o in overrides)


def test_split(overrides: Sequence[str]) -> str:
    """Which split the runs' test numbers come from: a folder dataset's ``test`` split when it has one."""
    from bcd_lightning.data.folder import has_split

    values = dict(o.split("=", 1) for o in overrides if "=" in o)
    if values.get("data") != "folder" or "data.root" not in values:
        return "test (the data config's test split; it may fall back to val)"
    if has_split(values["data.root"], "test"):
        return "test"
    return "val (the folder has no test split: images/test or test.txt)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the teacher and every student")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated benchmark names")
    parser.add_argument(
        "--methods", default=None, help="comma-separated presets (default: all of conf/distill)"
    )
    parser.add_argument(
        "--ablations", default=None, help=f"`{FOCUS}` terms to drop one at a time (default: all)"
    )
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated training seeds")
    parser.add_argument("--n-jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--quick", action="store_true", help="smoke test: none,kd x seeds 0,1, tiny runs")
    parser.add_argument("--out-dir", type=Path, default=None, help="results.{md,csv,png} (default: docs/)")
    parser.add_argument(
        "--root", type=Path, default=None, help="where the runs go (default: logs/compare/<time>)"
    )
    parser.add_argument("--aggregate-only", type=Path, default=None, metavar="ROOT", help="only tabulate")
    parser.add_argument("--teachers-only", action="store_true", help="only train the missing teachers")
    parser.add_argument("--note", default=None, help="a note about this run, printed on the page")
    args = parser.parse_args(argv)

    log_root = Path(os.environ.get("BCD_ROOT", ".")) / "logs"
    root = (
        args.aggregate_only
        or args.root
        or log_root / "compare" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    ).resolve()
    overrides = list(args.overrides)
    if _custom_data(overrides):  # the user's data: one benchmark, its own teacher, results in the run dir
        if not any(o.startswith("teacher.ckpt=") for o in overrides):
            overrides.append(f"teacher.ckpt={root / 'teacher.ckpt'}")
        benchmarks = [
            Benchmark(
                "custom",
                "your data (" + " ".join(args.overrides) + ")",
                tuple(overrides),
                split=test_split(overrides),
            )
        ]
        overrides = []
        out_dir = args.out_dir or root
        title = "Method comparison (your data)"
    else:
        benchmarks = [BENCHMARKS[b] for b in args.benchmarks.split(",")]
        out_dir = args.out_dir or Path("docs")
        title = "Method comparison (embedded benchmarks)"
    if args.quick:
        overrides = [*overrides, *QUICK]
    seeds = [int(s) for s in args.seeds.split(",")] if not args.quick else [0, 1]
    command = " ".join(["python scripts/compare.py", *(argv if argv is not None else sys.argv[1:])])
    if args.aggregate_only is None:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / COMMAND_FILE, command + "\n")
    elif (root / COMMAND_FILE).is_file():
        command = f"{(root / COMMAND_FILE).read_text().strip()}\n# tabulated with: {command}"

    start = time.perf_counter()
    reports = []
    for bench in benchmarks:
        common = [*bench.overrides, *overrides]
        # A benchmark's own method list wins over --methods (the variant checks BCD's transfer only).
        names = (
            list(bench.methods)
            if bench.methods
            else (args.methods.split(",") if args.methods else preset_methods())
        )
        if args.quick and not args.methods:
            names = ["none", "kd"]
        if bench.methods is not None:  # a benchmark with its own method list runs no ablations
            ablate = []
        elif args.ablations is not None:
            ablate = [t for t in args.ablations.split(",") if t]
        elif FOCUS in names and not args.quick and bench.methods is None:
            ablate = focus_terms(common)
        else:
            ablate = []
        specs = method_specs(names, ablate)
        bench_root = root / bench.name
        bench_start = time.perf_counter()
        # The user's overrides (and --quick's) win over the benchmark's teacher schedule.
        teacher_cfg = [*QUIET, *bench.overrides, *bench.teacher_overrides, *overrides]
        if args.quick:  # never leave a smoke-test teacher where a real comparison would reuse it
            common.append(f"teacher.ckpt={bench_root / 'teacher_quick.ckpt'}")
            teacher_cfg.append(common[-1])
        teacher_ckpt = ensure_teacher(teacher_cfg, log_root)
        if args.teachers_only:
            continue
        common.append(f"teacher.ckpt={teacher_ckpt}")
        if args.aggregate_only is None:
            jobs = plan_jobs(specs, seeds, bench_root, common)
            print(
                f"[{bench.name}] {len(jobs)} runs ({len(specs)} methods x {len(seeds)} seeds), {args.n_jobs} at a time",
                flush=True,
            )
            failed = [r for r in run_jobs(jobs, args.n_jobs, _report) if not r.ok]
            if failed:
                print(
                    f"[{bench.name}] {len(failed)} run(s) failed; the page lists them as missing.",
                    file=sys.stderr,
                )
        wall_file = bench_root / "wall_s.txt"
        if args.aggregate_only is None:
            wall = time.perf_counter() - bench_start
            atomic_write_text(wall_file, f"{wall:.1f}\n")
        else:
            wall = float(wall_file.read_text()) if wall_file.is_file() else None
        if bench_root.is_dir():
            report_failed(bench_root)  # failed jobs are named, never averaged
        runs = load_runs(bench_root) if bench_root.is_dir() and any(bench_root.rglob("metrics.json")) else []
        teacher = score_teacher(teacher_cfg, teacher_ckpt)
        skipped: list[str] = []
        if bench.methods is None and bench.name != "custom":
            skipped = [m for m in preset_methods() if m not in names]
            if FOCUS in names:
                skipped += [ablation_name(t) for t in focus_terms(common) if t not in ablate]
        reports.append(
            BenchmarkReport(
                bench, runs, teacher, names, [ablation_name(t) for t in ablate], seeds, wall, tuple(skipped)
            )
        )
    if args.teachers_only:
        return 0
    wall_s = time.perf_counter() - start if args.aggregate_only is None else None
    if args.aggregate_only is not None and (root / "wall_s.txt").is_file():
        wall_s = float((root / "wall_s.txt").read_text())
    elif wall_s is not None:
        atomic_write_text(root / "wall_s.txt", f"{wall_s:.1f}\n")
    date = datetime.now().strftime("%Y-%m-%d %H:%M")
    write_outputs(reports, out_dir, command, date, wall_s, title, args.note)
    print(f"Wrote {out_dir / 'results.md'}, results.csv, results.png (runs in {root})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
