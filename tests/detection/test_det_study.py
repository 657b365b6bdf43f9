"""The study page's statistics and the pipeline table, against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcd_lightning.detection.pipeline import aggregate, results_markdown
from bcd_lightning.detection.study import paired_difference, summarise, write_page


def row(model: str, seed: int, m: float) -> dict:
    return {
        "model": model,
        "seed": seed,
        "params": 1e6,
        "ms_per_image": 2.0,
        "map": m,
        "map_50": 2 * m,
        "map_75": m / 2,
        "checkpoint": "x",
        "arch": "a/b",
    }


def test_paired_difference_hand_computed() -> None:
    # Differences 0.1, 0.2, 0.3: mean 0.2, sample std 0.1, half-width t(0.975, 2) * 0.1 / sqrt(3).
    mean, lo, hi = paired_difference([1.1, 1.2, 1.3], [1.0, 1.0, 1.0])
    half = 4.303 * 0.1 / 3**0.5
    assert mean == pytest.approx(0.2) and lo == pytest.approx(0.2 - half) and hi == pytest.approx(0.2 + half)


def test_summary_pairs_by_seed_and_page(tmp_path: Path) -> None:
    rows = [row("teacher", 0, 0.5)] + [row("baseline", s, 0.2 + 0.01 * s) for s in range(3)]
    rows += [row("bcd", s, 0.25 + 0.01 * s) for s in (2, 0, 1)]  # any order: paired by seed
    summary = {r["model"]: r for r in summarise(rows)}
    assert "d_map" not in summary["teacher"] and "d_map" not in summary["baseline"]
    assert summary["bcd"]["d_map"] == pytest.approx(0.05)
    assert summary["bcd"]["d_map_lo"] == pytest.approx(0.05)  # identical differences: a zero-width interval
    write_page(rows, 60.0, "cmd", tmp_path)
    page = (tmp_path / "results_detection.md").read_text()
    assert "+5.0 [+5.0, +5.0]" in page and (tmp_path / "results_detection.png").is_file()
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
