"""Smoke test of scripts/bench_step.py (``--quick``) and its doc writer."""

from __future__ import annotations

from pathlib import Path

from support import load_script


def test_bench_step_quick(capsys, tmp_path: Path) -> None:
    bench = load_script("bench_step")
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
