"""The study page's statistics and the pipeline table, against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcd_lightning.detection.pipeline import TASKS, aggregate, results_markdown
from bcd_lightning.detection.study import summarise, write_page


def row(model: str, seed: int, m: float) -> dict:
    return {
        "model": model,
        "seed": seed,
        "params": 1_000_000,
        "ms_per_image": 2.0,
        "map": m,
        "map_50": 2 * m,
        "map_75": m / 2,
        "checkpoint": "x",
        "arch": "a/b",
    }


def test_summary_pairs_by_seed_and_page(tmp_path: Path) -> None:
    rows = [row("teacher", 0, 0.5)] + [row("baseline", s, 0.2 + 0.01 * s) for s in range(3)]
    rows += [row("bcd", s, 0.25 + 0.01 * s) for s in (2, 0, 1)]  # any order: paired by seed
    summary = {r["model"]: r for r in summarise(rows)}
    assert "d_map" not in summary["teacher"] and "d_map" not in summary["baseline"]
    assert summary["bcd"]["d_map"].mean == pytest.approx(0.05)
    assert summary["bcd"]["d_map"].low == pytest.approx(0.05)  # identical differences: a zero-width interval
    write_page(rows, 60.0, "cmd", tmp_path)
    page = (tmp_path / "results_detection.md").read_text()
    assert (
        "+5.0 [+5.0, +5.0], p=0.00 **significant**" in page and (tmp_path / "results_detection.png").is_file()
    )
    assert len((tmp_path / "results_detection.csv").read_text().splitlines()) == 1 + len(rows)


def test_pipeline_table_means_over_seeds() -> None:
    table = results_markdown([row("baseline", 0, 0.2), row("baseline", 1, 0.3)])
    (entry,) = aggregate([row("baseline", 0, 0.2), row("baseline", 1, 0.3)])
    assert entry["map"] == pytest.approx(0.25) and entry["map_std"] == pytest.approx(0.0707, abs=1e-4)
    assert "25.0 ± 7.1" in table


def test_merge_results_keeps_one_teacher_and_the_chosen_students() -> None:
    from bcd_lightning.detection.study import merge_results

    first = {"rows": [row("teacher", 0, 0.5), row("baseline", 0, 0.2), row("cwd", 0, 0.1)], "seconds": 10}
    second = {"rows": [row("teacher", 0, 0.5), row("baseline", 1, 0.3)], "seconds": 5}
    rows, seconds = merge_results([first, second], ["none"])
    assert [(r["model"], r["seed"]) for r in rows] == [("teacher", 0), ("baseline", 0), ("baseline", 1)]
    assert seconds == 15
    with pytest.raises(ValueError, match="appears in two runs"):
        merge_results([first, first], ["none"])


def instance_row(model: str, seed: int, mask: float, conn: float) -> dict:
    return {
        **row(model, seed, mask + 0.1),
        "mask_map": mask,
        "mask_map_50": mask,
        "mask_map_75": mask,
        "boundary_map": mask / 2,
        "conn_error": conn,
        "broken_rate": conn / 2,
    }


def test_instance_page_holm_corrects_over_methods(tmp_path: Path) -> None:
    # Two methods vs the baseline over 3 seeds. a: differences +0.01, +0.02, +0.03 (mean 0.02, sd 0.01,
    # t = 0.02 / (0.01 / sqrt 3) = 3.464, two-sided p(df 2) = 0.0742); b: differences 0.10, 0.11, 0.12
    # (t = 19.05, p = 0.00274). Holm: b's p x 2 = 0.0055, a's max(0.0055, 0.0742 x 1) = 0.0742.
    base = [instance_row("baseline", s, 0.30, 0.5) for s in range(3)]
    a = [instance_row("a", s, 0.30 + 0.01 * (s + 1), 0.5) for s in range(3)]
    b = [instance_row("b", s, 0.40 + 0.01 * s, 0.4) for s in range(3)]
    summary = {r["model"]: r for r in summarise(base + a + b, TASKS["instance"])}
    assert summary["a"]["p_mask_map"] == pytest.approx(0.0742, abs=5e-4)
    assert summary["b"]["p_mask_map"] == pytest.approx(2 * 0.00274, abs=5e-4)
    write_page([instance_row("teacher", 0, 0.6, 0.1), *base, *a, *b], 60.0, "cmd", tmp_path, task="instance")
    page = (tmp_path / "results_instance.md").read_text()
    assert "| a | +2.0 [" in page and "p=0.07 not significant" in page
    assert "p=0.01 **significant**" in page
    assert "conn. err" in page and "Boundary AP" in page
    header = (tmp_path / "results_instance.csv").read_text().splitlines()[0]
    assert header.startswith(
        "model,seed,params,ms_per_image,mask_map,map,boundary_map,conn_error,broken_rate"
    )


def results_table(page: str) -> str:
    """The page from its first table to the line after the tables."""
    end = page.index("Wall time") if "Wall time" in page else page.index("Re-tabulated")
    return page[page.index("| model") : end]


def test_from_csv_rebuilds_the_page_from_its_own_csv(tmp_path: Path) -> None:
    from bcd_lightning.detection.study import main

    rows = [row("teacher", 0, 0.5)] + [row("baseline", s, 0.2 + 0.01 * s) for s in range(3)]
    rows += [row("bcd", s, 0.25 + 0.02 * s) for s in range(3)]
    write_page(rows, 60.0, "cmd", tmp_path)
    first = (tmp_path / "results_detection.md").read_text()
    csv_copy = tmp_path / "copy.csv"
    csv_copy.write_text((tmp_path / "results_detection.csv").read_text())
    main(["--task", "detection", "--from-csv", str(csv_copy), "--docs", str(tmp_path)])
    again = (tmp_path / "results_detection.md").read_text()
    assert results_table(again) == results_table(first)  # same numbers, tests and verdicts from the CSV alone
    assert "--from-csv" in again and "wall time is not known" in again
    assert (tmp_path / "results_detection.csv").read_text() == csv_copy.read_text()


@pytest.mark.slow
def test_pipeline_reports_a_failed_student_and_keeps_the_others(tmp_path: Path) -> None:
    import json

    from bcd_lightning.detection.pipeline import run_pipeline
    from support import DETECTION_TINY

    overrides = [*DETECTION_TINY, f"paths.log_dir={tmp_path / 'logs'}", "threads=1"]
    with pytest.raises(SystemExit) as stop:
        run_pipeline(
            overrides, ["none", "no_such_method"], out_dir=tmp_path / "out", task="detection", n_jobs=2
        )
    assert stop.value.code == 1
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["teacher", "baseline"]  # the table still has every run that worked
    assert "no_such_method" in (tmp_path / "out" / "no_such_method_seed0.log").read_text()
