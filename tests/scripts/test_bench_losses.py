"""Smoke test of scripts/bench_losses.py (``--quick``, in-process)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_losses.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_losses", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_losses_quick(capsys, tmp_path: Path) -> None:
    bench = load_script()
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
