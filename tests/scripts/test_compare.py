"""scripts/compare.py: the sweep command, and the report built from fabricated run outputs."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from support import load_script

compare = load_script("compare")

# (method, seed): (mIoU, boundary IoU, boundary F, connectivity error, step seconds)
FAKE = {
    ("none", 0): (0.60, 0.30, 0.50, 4.0, 0.10),
    ("none", 1): (0.64, 0.34, 0.54, 6.0, 0.12),
    ("kd", 0): (0.70, 0.36, 0.58, 3.0, 0.15),
    ("kd", 1): (0.72, 0.38, 0.60, 3.0, 0.15),
    ("bcd", 0): (0.66, 0.42, 0.62, 2.0, 0.30),
    ("bcd", 1): (0.68, 0.44, 0.66, 4.0, 0.32),
}
TEACHER = {
    "test/mIoU": 0.80,
    "test/boundary_iou": 0.50,
    "test/boundary_f": 0.70,
    "test/connectivity_err": 1.5,
}


def fabricate(sweep: Path) -> None:
    keys = ("test/mIoU", "test/boundary_iou", "test/boundary_f", "test/connectivity_err")
    for job, ((method, seed), values) in enumerate(FAKE.items()):
        metrics = dict(zip(keys, values[:4], strict=True))
        metrics["train/step_time_median_s"] = values[4]
        (sweep / str(job)).mkdir(parents=True)
        (sweep / str(job) / "metrics.json").write_text(
            json.dumps({"method": method, "seed": seed, "metrics": metrics})
        )


def test_report_from_fabricated_runs(tmp_path: Path) -> None:
    from bcd_lightning.aggregate import load_runs

    fabricate(tmp_path / "sweep")
    teacher = {"method": "teacher", "seed": 0, "metrics": TEACHER, "arch": "Unet/resnet18"}
    methods, seeds = ["none", "kd", "cwd", "bcd"], [0, 1]
    compare.write_outputs(
        load_runs(tmp_path / "sweep"),
        teacher,
        methods,
        seeds,
        tmp_path / "docs",
        "CMD --x",
        "2030-01-02 03:04",
    )
    doc = (tmp_path / "docs" / "results.md").read_text()
    head = doc.split("| method |")[0]
    assert "2030-01-02 03:04" in head and "```\nCMD --x\n```" in head

    rows = {line.split(" | ")[0].strip("| "): line for line in doc.splitlines() if line.startswith("| ")}
    # Means and sample stds computed by hand from FAKE (IoU in %, step in ms).
    assert rows["teacher"] == "| teacher | 1 | 80.00 | 50.00 | 70.00 | 1.50 | – |"
    assert (
        rows["none"]
        == "| none | 2 | 62.00 ± 2.83 | 32.00 ± 2.83 | 52.00 ± 2.83 | 5.00 ± 1.41 | 110.00 ± 14.14 |"
    )
    assert (
        rows["kd"] == "| kd | 2 | 71.00 ± 1.41 | 37.00 ± 1.41 | 59.00 ± 1.41 | 3.00 ± 0.00 | 150.00 ± 0.00 |"
    )
    assert (
        rows["bcd"]
        == "| bcd | 2 | 67.00 ± 1.41 | 43.00 ± 1.41 | 64.00 ± 2.83 | 3.00 ± 1.41 | 310.00 ± 14.14 |"
    )
    assert "cwd" not in rows  # asked for, never ran: listed as missing instead
    assert "Missing runs (crashed or not run): cwd seed 0, cwd seed 1." in doc

    notes = doc.split("## Notes")[1]
    # Honest: kd has the better mIoU (71 vs 67, gap 4 > the larger std 1.41); bcd wins bIoU and BF.
    assert (
        "mIoU: `bcd` does **not** win — better mean: `kd`; best `kd` 71.00 vs 67.00 (gap 4.00, larger"
        in notes
    )
    # Wins state their margin over the runner-up against the larger std (kd: 37 ± 1.41, 59 ± 1.41).
    assert (
        "bIoU: `bcd` has the best mean (43.00); runner-up `kd` 37.00 (gap 6.00, larger than one standard "
        "deviation)." in notes
    )
    assert "BF: `bcd` has the best mean (64.00); runner-up `kd` 59.00 (gap 5.00, larger" in notes
    # conn.err: kd 3.0 equals bcd 3.0 -> nobody is strictly better, and the margin is nil.
    assert (
        "conn.err: `bcd` has the best mean (3.00); runner-up `kd` 3.00 (gap 0.00, within one standard "
        "deviation)." in notes
    )
    assert "step ms: `bcd` does **not** win" in notes
    assert "takes 2.82× the time of a student-alone step" in notes  # 0.31 / 0.11
    assert "## How the BCD weights were chosen" in doc and "validation" in doc

    with open(tmp_path / "docs" / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == ["teacher", "none", "kd", "bcd"]
    assert float(table[3]["test/boundary_iou_mean"]) == pytest.approx(0.43)
    assert float(table[1]["test/connectivity_err_std"]) == pytest.approx(2**0.5)
    assert (tmp_path / "docs" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == [
        "results.csv",
        "results.md",
        "results.png",
    ]


def test_sweep_command_is_one_hydra_multirun(tmp_path: Path) -> None:
    cmd = compare.sweep_command(["none", "bcd"], [0, 1, 2], tmp_path / "s", ["trainer.max_epochs=1"], 1)
    assert Path(cmd[0]).name == "bcd-train" and cmd[1] == "-m"
    assert "distill=none,bcd" in cmd and "seed=0,1,2" in cmd and "experiment=embedded/baseline" in cmd
    assert "hydra/launcher=parallel" in cmd and "hydra.launcher.n_jobs=1" in cmd
    assert f"hydra.sweep.dir={tmp_path / 's'}" in cmd and cmd[-1] == "trainer.max_epochs=1"
    assert compare.METHODS == ("none", "kd", "cwd", "skd", "ifvd", "cirkd", "boundary", "context", "bcd")


@pytest.mark.slow
def test_compare_smoke_two_methods_one_seed(tmp_path: Path, teacher_state_file: Path, monkeypatch) -> None:
    """The whole script on 2 methods x 1 seed with tiny data (the real run is `make compare`)."""
    from support import FAST

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BCD_ROOT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tiny = [o for o in FAST if o != "logger=csv"]
    args = ["--methods", "none,kd", "--seeds", "0", "--out-dir", str(tmp_path / "docs")]
    overrides = [*tiny, "logger=csv", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    assert compare.main([*args, f"teacher.ckpt={teacher_state_file}", *overrides]) == 0
    doc = (tmp_path / "docs" / "results.md").read_text()
    assert "| teacher | 1 |" in doc and "| none | 1 |" in doc and "| kd | 1 |" in doc
    assert "`bcd` was not part of this comparison." in doc
    assert os.path.isfile(tmp_path / "docs" / "results.png") and sys.executable


def test_tuning_note_from_a_fabricated_tune_sweep(tmp_path: Path) -> None:
    tune = tmp_path / "tune"
    for job, score in enumerate((0.50, 0.61, 0.55)):
        (tune / str(job)).mkdir(parents=True)
        record = {"method": "bcd", "seed": 0, "metrics": {"val/mIoU_best": score}}
        (tune / str(job) / "metrics.json").write_text(json.dumps(record))
    (tune / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  distill.losses.kd.weight: 0.35351\n"
        "  distill.losses.context.loss.tau: 0.5\nbest_value: 0.61\n"
    )
    before = tmp_path / "before"
    before.mkdir()
    (before / "metrics.json").write_text(
        json.dumps({"method": "bcd", "seed": 0, "metrics": {"val/mIoU_best": 0.58}})
    )
    note = compare.tuning_note(tune, before)
    assert "ran 3 Optuna (TPE) trials" in note
    assert "`kd.weight`=0.354" in note and "`context.loss.tau`=0.5" in note
    assert "best 61.00, median 55.00, worst 50.00" in note
    assert "scored 58.00" in note and "+3.00 points" in note
    with pytest.raises(FileNotFoundError, match=r"optimization_results\.yaml"):
        compare.tuning_note(before)
