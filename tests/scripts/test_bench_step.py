"""Smoke test of scripts/bench_step.py (``--quick``) and its doc writer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_step_quick(capsys, tmp_path: Path) -> None:
    bench = load_script()
    res = bench.main(["--quick", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = res["rows"]
    for name in ("student step", "teacher forward (all outputs)", "distill bcd", "distill bcd (cached)"):
        assert rows[name]["ms"] > 0, name
    assert rows["distill bcd"]["ratio"] > 0 and rows["distill bcd (cached)"]["ratio_student"] > 0
    assert "Targets:" in out and "python scripts/bench_step.py --quick" in out
    doc = tmp_path / "perf.md"
    doc.write_text(f"intro\n{bench.BEGIN}\nold\n{bench.END}\noutro\n")
    bench.write_doc("NEW TABLE", doc)
    assert doc.read_text() == f"intro\n{bench.BEGIN}\nNEW TABLE\n{bench.END}\noutro\n"
