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
