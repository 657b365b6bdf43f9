"""Run records and their aggregation, on fabricated run directories with hand-computed expectations."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bcd_lightning.aggregate import (
    csv_table,
    format_cell,
    incomplete_jobs,
    load_runs,
    markdown_table,
    mean_std,
    method_name,
    summarize,
    write_run_record,
)

MIOU, STEP = "test/mIoU", "train/step_time_median_s"


def fake_sweep(root: Path, runs: list[tuple[str, int, float, float]]) -> Path:
    """A Hydra multirun layout: <root>/<job>/{.hydra/,metrics.json} with the given (method, seed, mIoU, s)."""
    for job, (method, seed, miou, step) in enumerate(runs):
        job_dir = root / str(job)
        (job_dir / ".hydra").mkdir(parents=True)
        write_run_record(
            job_dir, {"method": method, "seed": seed, "metrics": {MIOU: miou, STEP: step, "epoch": 5}}
        )
    return root


RUNS = [
    ("kd", 0, 0.50, 0.10),
    ("bcd", 0, 0.62, 0.20),
    ("kd", 1, 0.60, 0.12),
    ("bcd", 1, 0.66, 0.22),
    ("kd", 2, 0.70, 0.14),
]


def test_summarize_gives_mean_and_sample_std_per_method(tmp_path: Path) -> None:
    runs = load_runs(fake_sweep(tmp_path / "sweep", RUNS))
    assert len(runs) == 5 and all(Path(r["run_dir"]).is_dir() for r in runs)
    rows = summarize(runs, [MIOU, STEP], order=["bcd", "kd"])
    assert [r["method"] for r in rows] == ["bcd", "kd"]
    bcd, kd = rows
    # kd: mIoU 0.5, 0.6, 0.7 -> mean 0.6, sample std sqrt((0.01 + 0 + 0.01) / 2) = 0.1
    assert kd["n"] == 3 and kd["seeds"] == [0, 1, 2]
    assert kd[MIOU] == pytest.approx(0.6) and kd[f"{MIOU}_std"] == pytest.approx(0.1)
    assert kd[STEP] == pytest.approx(0.12) and kd[f"{STEP}_std"] == pytest.approx(0.02)
    # bcd: 0.62, 0.66 -> mean 0.64, std sqrt(2 * 0.02**2 / 1) = 0.02 * sqrt(2)
    assert bcd[MIOU] == pytest.approx(0.64) and bcd[f"{MIOU}_std"] == pytest.approx(0.02 * math.sqrt(2))


def test_markdown_and_csv_tables(tmp_path: Path) -> None:
    rows = summarize(load_runs(fake_sweep(tmp_path, RUNS)), [MIOU, STEP], order=["kd", "bcd"])
    rows.append({"method": "teacher", "n": 1, "seeds": [0], MIOU: 0.8, f"{MIOU}_std": 0.0})
    table = markdown_table(rows, columns=[(MIOU, "mIoU", 100.0, False), (STEP, "step ms", 1000.0, True)])
    lines = table.strip().splitlines()
    assert lines[0] == "| method | n | mIoU ↑ | step ms ↓ |"
    assert lines[2] == "| kd | 3 | 60.00 ± 10.00 | 120.00 ± 20.00 |"
    assert lines[3] == "| bcd | 2 | 64.00 ± 2.83 | 210.00 ± 14.14 |"
    assert lines[4] == "| teacher | 1 | 80.00 | – |"  # one run: no ±; missing metric: a dash

    parsed = list(csv.DictReader(io.StringIO(csv_table(rows, [MIOU, STEP]))))
    assert parsed[0]["method"] == "kd" and parsed[0]["n"] == "3"
    assert float(parsed[0][f"{MIOU}_mean"]) == pytest.approx(0.6)
    assert float(parsed[0][f"{MIOU}_std"]) == pytest.approx(0.1)
    assert parsed[2][f"{STEP}_mean"] == ""


def test_mean_std_edge_cases() -> None:
    assert mean_std([0.3]) == (0.3, 0.0)
    assert mean_std([1.0, None, float("nan"), 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    mean, std = mean_std([])
    assert math.isnan(mean) and math.isnan(std)
    assert format_cell(float("nan"), 0.1) == "–"


def test_load_runs_errors_and_incomplete_jobs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No metrics\.json under .*empty"):
        load_runs(tmp_path / "empty")
    sweep = fake_sweep(tmp_path / "sweep", RUNS[:1])
    (sweep / "eval").mkdir()
    (sweep / "eval" / "metrics.json").write_text('{"mIoU": 0.5}')  # bcd-eval's format: not a run
    assert [r["method"] for r in load_runs(sweep)] == ["kd"]
    (sweep / "1" / ".hydra").mkdir(parents=True)  # a job that crashed before writing its record
    assert incomplete_jobs(sweep) == [sweep / "1"]
    (sweep / "2").mkdir()
    (sweep / "2" / "metrics.json").write_text("{truncated")
    with pytest.raises(ValueError, match=r"2/metrics\.json is not valid JSON"):
        load_runs(sweep)


def test_write_run_record_is_atomic_json(tmp_path: Path) -> None:
    path = write_run_record(tmp_path / "run", {"method": "kd", "seed": 3, "metrics": {MIOU: 0.5}})
    assert json.loads(path.read_text()) == {"method": "kd", "seed": 3, "metrics": {MIOU: 0.5}}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left


def test_method_name_from_config() -> None:
    assert method_name(OmegaConf.create({"distill": {"name": "cwd", "losses": {"x": {}}}})) == "cwd"
    assert method_name(OmegaConf.create({"distill": {"losses": {"kd": {}, "boundary": {}}}})) == "kd+boundary"
    assert method_name(OmegaConf.create({"distill": {"losses": {}}})) == "none"
    assert method_name({}) == "none"
