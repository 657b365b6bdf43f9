"""scripts/aggregate_runs.py on a fabricated sweep: table on stdout, files, crashed jobs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

from support import load_script

aggregate_runs = load_script("aggregate_runs")


def test_cli_tables_a_sweep_and_reports_crashed_jobs(tmp_path: Path, capsys) -> None:
    for job, (method, seed, miou) in enumerate([("kd", 0, 0.5), ("kd", 1, 0.7), ("bcd", 0, 0.9)]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        record = {"method": method, "seed": seed, "metrics": {"test/mIoU": miou}}
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps(record))
    (tmp_path / "3" / ".hydra").mkdir(parents=True)  # crashed: no metrics.json
    code = aggregate_runs.main(
        [str(tmp_path), "--csv", str(tmp_path / "t.csv"), "--md", str(tmp_path / "t.md")]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert "| kd | 2 | 60.00 ± 14.14 |" in out and "| bcd | 1 | 90.00 |" in out  # std of 0.5, 0.7
    assert "no metrics.json in" in err and str(tmp_path / "3") in err
    assert (tmp_path / "t.md").read_text() == out
    assert (tmp_path / "t.csv").read_text().splitlines()[1].startswith("kd,2,0.6")


def test_cli_fails_in_one_line_without_runs(tmp_path: Path, capsys) -> None:
    assert aggregate_runs.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: No metrics.json under")


def test_cli_lists_failed_jobs_and_leaves_them_out(tmp_path: Path, capsys) -> None:
    """Issue 14: a failed job's record (status: failed + error) is listed, never averaged."""
    ok = {"method": "kd", "seed": 0, "status": "completed", "metrics": {"test/mIoU": 0.5}}
    failed = {
        "method": "kd",
        "seed": 1,
        "status": "failed",
        "error": "NonFiniteLossError: kd=nan",
        "metrics": {},
    }
    for job, record in enumerate([ok, failed]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps(record))
    assert aggregate_runs.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "| kd | 1 | 50.00 |" in out  # n = 1: the failed seed is not a run of the table
    assert f"failed job {tmp_path / '1'}: NonFiniteLossError: kd=nan" in err
    assert "no metrics.json" not in err


def test_cli_says_when_every_job_failed(tmp_path: Path, capsys) -> None:
    (tmp_path / "0").mkdir()
    record = {"method": "kd", "seed": 0, "status": "failed", "error": "ValueError: bad", "metrics": {}}
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(record))
    assert aggregate_runs.main([str(tmp_path)]) == 1
    assert "all 1 jobs failed" in capsys.readouterr().err
