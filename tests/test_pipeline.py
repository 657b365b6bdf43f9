"""`make train`'s pipeline on tiny settings: teacher trained once then reused, table written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bcd_lightning.pipeline import run_pipeline
from support import FAST


def test_pipeline_trains_teacher_once_and_writes_table(tmp_path: Path, capsys) -> None:
    overrides = [
        *FAST,
        f"paths.log_dir={tmp_path / 'logs'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
    ]
    rows = run_pipeline(overrides, students=["baseline", "kd"], out_dir=tmp_path / "first")
    assert [r["model"] for r in rows] == ["teacher", "baseline", "kd"]
    assert (tmp_path / "logs" / "teachers" / "embedded_unet_r18.ckpt").is_file()
    assert rows[0]["params"] > 5 * rows[1]["params"] and rows[1]["params"] == rows[2]["params"]
    saved = json.loads((tmp_path / "first" / "results.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["teacher", "baseline", "kd"]
    assert "| kd |" in (tmp_path / "first" / "results.md").read_text()

    capsys.readouterr()
    rows = run_pipeline(overrides, students=["baseline"], out_dir=tmp_path / "second")
    assert "Reusing the teacher checkpoint" in capsys.readouterr().out
    assert not (tmp_path / "second" / "teacher").exists()
    assert [r["model"] for r in rows] == ["teacher", "baseline"]


def test_aggregate_means_and_sample_std_over_seeds() -> None:
    from bcd_lightning.pipeline import aggregate

    def row(model: str, seed: int, miou: float, ms: float, bg: float) -> dict:
        scores = {"boundary_iou": 0.5, "boundary_f": 0.4, "connectivity_err": 1.0}
        return {"model": model, "arch": "a/b", "params": 7, "seed": seed, "mIoU": miou, "ms_per_image": ms,
                "per_class": {"bg": bg}, **scores}  # fmt: skip

    kd, teacher = aggregate(
        [row("kd", 0, 0.5, 2.0, 0.9), row("kd", 1, 0.7, 4.0, 0.7), row("t", 0, 0.8, 5, 1)]
    )
    assert (kd["model"], kd["seeds"], kd["arch"], kd["params"]) == ("kd", 2, "a/b", 7)
    # mean 0.6; sample std sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1 * sqrt(2)
    assert kd["mIoU"] == pytest.approx(0.6) and kd["mIoU_std"] == pytest.approx(0.1 * 2**0.5)
    assert kd["ms_per_image"] == pytest.approx(3.0) and kd["per_class"] == {"bg": pytest.approx(0.8)}
    assert (teacher["seeds"], teacher["mIoU"], teacher["mIoU_std"]) == (1, 0.8, 0.0)


def test_a_user_mistake_in_a_stage_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 14: bcd-pipeline reports a config mistake of any stage in one line, exit status 1."""
    from bcd_lightning.pipeline import main

    with pytest.raises(SystemExit) as info:
        main(
            [
                "seed=abc",
                f"paths.log_dir={tmp_path / 'logs'}",
                "--out-dir",
                str(tmp_path / "p"),
                "--retrain-teacher",
            ]
        )
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert (
        "error: ConfigError: Config key 'seed' = 'abc' has the wrong type" in err and "Traceback" not in err
    )
