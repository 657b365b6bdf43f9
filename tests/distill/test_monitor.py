"""TermMonitor logs each term's value and gradient norm and leaves training exactly as it was."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from bcd_lightning.train import train

MONITOR = "+callbacks.term_monitor={_target_:bcd_lightning.distill.monitor.TermMonitor,every_n_steps:1}"
SHORT = ("trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "test=false")


def _final_student(metrics: dict) -> dict[str, torch.Tensor]:
    state = torch.load(Path(metrics["output_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def test_monitor_logs_terms_and_does_not_change_training(make_cfg, teacher_state_file: Path) -> None:
    common = ("experiment=embedded/bcd", f"teacher.ckpt={teacher_state_file}", *SHORT)
    plain = train(make_cfg(*common, name="plain"))
    watched = train(make_cfg(*common, MONITOR, name="watched"))
    a, b = _final_student(plain), _final_student(watched)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with open(next(Path(watched["output_dir"]).rglob("metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    logged = [r for r in rows if r.get("monitor/ce/grad_norm")]
    assert len(logged) == 3  # steps 0, 1, 2
    for term in ("kd", "boundary", "bkd", "context"):
        assert all(float(r[f"monitor/{term}/grad_norm"]) > 0 for r in logged)
        assert all(float(r[f"monitor/{term}/factor"]) > 0 for r in logged)
    # Calibrated: each term's weighted value is ratio (1/4) x the running CE mean, so about CE/4 here.
    first = logged[0]
    ce = float(first["monitor/ce/value"])
    assert 0.1 * ce < float(first["monitor/kd/value"]) < 0.6 * ce
