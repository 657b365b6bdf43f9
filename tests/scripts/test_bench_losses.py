"""Smoke test of scripts/bench_losses.py (``--quick``, in-process)."""

from __future__ import annotations

from pathlib import Path

from support import load_script


def test_bench_losses_quick(capsys, tmp_path: Path) -> None:
    bench = load_script("bench_losses")
    results = bench.main(["--quick", "--device", "cpu", "--json", str(tmp_path / "bench.json")])
    out = capsys.readouterr().out
    assert "Context loss" in out and "BCD loss cost" in out
    assert (tmp_path / "bench.json").is_file()
    for row in results["context"]:
        for impl in ("chunked", "naive"):
            assert row[impl]["time_s"] > 0
    rows = results["bcd"]["rows"]
    assert {"kd", "boundary", "bkd", "context"} <= {r["what"].split()[0] for r in rows}
    assert all(r["time_s"] > 0 and r["fraction"] > 0 for r in rows)
    assert results["bcd"]["step_s"] > 0
