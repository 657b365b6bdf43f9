"""The default loggers (CSV + wandb offline) leave a run `wandb sync` can publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcd_lightning.train import train


def test_default_loggers_write_offline_wandb_run(
    make_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg("logger=default", "debug=limit", "trainer.max_epochs=1", "test=false")
    out = Path(train(cfg)["output_dir"])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert (out / "csv" / "metrics.csv").is_file()
