"""Run records and their aggregation: one ``metrics.json`` per run, mean ± std tables over seeds.

``bcd-train`` writes ``<output_dir>/metrics.json`` (:func:`write_run_record`); :func:`load_runs` collects
them from any directory tree (a multirun sweep, a pipeline output, ``logs/``), and :func:`summarize`
groups them (by method by default) into mean and sample standard deviation (n - 1) per metric. Used by
``scripts/aggregate_runs.py``, ``scripts/compare.py`` and ``bcd-pipeline``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig

from bcd_lightning.utils.run_dir import atomic_write_text

RECORD_NAME = "metrics.json"

#: Metrics of the comparison tables: (record key, column title, scale for display, lower is better).
TABLE_METRICS: tuple[tuple[str, str, float, bool], ...] = (
    ("test/mIoU", "mIoU", 100.0, False),
    ("test/boundary_iou", "bIoU", 100.0, False),
    ("test/boundary_f", "BF", 100.0, False),
    ("test/connectivity_err", "conn.err", 1.0, True),
    ("train/step_time_median_s", "step ms", 1000.0, True),
)


def method_name(cfg: Mapping[str, Any] | DictConfig) -> str:
    """The distillation method of a run: ``distill.name`` if set, else the Hydra choice of ``distill``,
    else the loss names joined with ``+`` (``none`` without losses)."""
    distill = cfg.get("distill") or {}
    if distill.get("name"):
        return str(distill["name"])
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("distill")
        if choice:
            return str(choice)
    losses = distill.get("losses") or {}
    return "+".join(str(k) for k in losses) or "none"


def write_run_record(output_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write ``<output_dir>/metrics.json`` atomically (never half-written)."""
    path = Path(output_dir) / RECORD_NAME
    atomic_write_text(path, json.dumps(dict(record), indent=2, sort_keys=True) + "\n")
    return path


def load_runs(root: Path) -> list[dict[str, Any]]:
    """Every bcd-train run record under ``root`` (recursively), sorted by path; each gets ``run_dir``.

    Files named metrics.json without ``method`` and ``metrics`` (bcd-eval's output) are skipped, and so
    are failed jobs (``status: failed``; :func:`failed_runs` lists them).

    Raises FileNotFoundError naming ``root`` when it does not exist or holds no record.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory (expected a multirun sweep or logs folder).")
    runs = []
    for path in sorted(root.rglob(RECORD_NAME)):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); delete or re-run that job.") from err
        if not (isinstance(record, dict) and "method" in record and isinstance(record.get("metrics"), dict)):
            continue  # another tool's metrics.json (e.g. bcd-eval's flat scores), not a training run
        if record.get("status") == "failed":
            continue  # no numbers: listed by failed_runs, never averaged
        runs.append({**record, "run_dir": str(path.parent)})
    if not runs:
        failed = failed_runs(root)
        raise FileNotFoundError(
            f"No {RECORD_NAME} under {root}"
            + (
                f" with results: all {len(failed)} jobs failed (first: {failed[0][0]}: {failed[0][1]})"
                if failed
                else ": did the jobs finish? (bcd-train writes one per run)"
            )
        )
    return runs


def failed_runs(root: Path) -> list[tuple[Path, str]]:
    """``(run dir, error)`` of every job under ``root`` whose ``metrics.json`` says ``status: failed``."""
    from bcd_lightning.utils.errors import failed_jobs_under

    return failed_jobs_under(Path(root), RECORD_NAME)


def report_failed(root: Path, file: Any = None) -> list[tuple[Path, str]]:
    """Print one ``warning: failed job <dir>: <error>`` line per failed job (stderr); returns them."""
    import sys

    failed = failed_runs(root)
    for run_dir, error in failed:
        print(f"warning: failed job {run_dir}: {error} (left out of the table)", file=file or sys.stderr)
    return failed


def incomplete_jobs(root: Path) -> list[Path]:
    """Hydra job directories (with ``.hydra/``) under ``root`` that have no run record: jobs killed
    without a trace (failed jobs write a record with ``status: failed``, see :func:`failed_runs`)."""
    return sorted(p.parent for p in Path(root).rglob(".hydra") if not (p.parent / RECORD_NAME).is_file())


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def metric_value(run: Mapping[str, Any], key: str) -> float | None:
    """``run['metrics'][key]`` (run records) or ``run[key]`` (flat rows); None when absent."""
    metrics = run.get("metrics")
    if isinstance(metrics, Mapping) and key in metrics:
        return metrics[key]
    return run.get(key)


def summarize(
    runs: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    by: str = "method",
    order: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per value of ``by``: ``n`` (runs), ``seeds`` and ``<metric>`` / ``<metric>_std`` per metric.

    Groups follow ``order`` (missing ones skipped, unlisted ones appended) or first appearance.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(str(run.get(by)), []).append(run)
    names = [n for n in (order or []) if n in groups] + [n for n in groups if n not in (order or [])]
    rows = []
    for name in names:
        members = groups[name]
        row: dict[str, Any] = {
            by: name,
            "n": len(members),
            "seeds": sorted(cast(set[int], {m.get("seed") for m in members})),
        }
        for key in metrics:
            row[key], row[f"{key}_std"] = mean_std(metric_value(m, key) for m in members)
        rows.append(row)
    return rows


def format_cell(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` scaled for display; ``–`` when the value is missing."""
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    by: str = "method",
    columns: Sequence[tuple[str, str, float, bool]] = TABLE_METRICS,
) -> str:
    """A markdown table: group, n, then ``mean ± std`` per column (std omitted for single runs)."""
    header = [by, "n", *(f"{title} {'↓' if lower else '↑'}" for _, title, _, lower in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            format_cell(row.get(key), row.get(f"{key}_std") if row["n"] > 1 else None, scale)
            for key, _, scale, _ in columns
        ]
        lines.append("| " + " | ".join([str(row[by]), str(row["n"]), *cells]) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], by: str = "method") -> str:
    """CSV with raw (unscaled) means and sample stds: ``<by>,n,<m>_mean,<m>_std,...``; empty = missing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, "n", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))])
    for row in rows:
        values = [row.get(k) for m in metrics for k in (m, f"{m}_std")]
        cells = ("" if v is None or not math.isfinite(float(v)) else repr(float(v)) for v in values)
        writer.writerow([row[by], row["n"], *cells])
    return out.getvalue()
