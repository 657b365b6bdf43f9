"""``bcd-eval`` on the checkpoint of a tiny training run: whole-image and sliding-window inference
reproduce the run's own test metrics; outputs (metrics.json, per_class.csv, confusion matrix); CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from bcd_lightning.evaluate import evaluate
from bcd_lightning.train import train
from support import FAST, compose_config

METRICS = ("mIoU", "boundary_iou", "boundary_f", "connectivity_err")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One epoch of the default student on 64-px synthetic data; tested on its best checkpoint."""
    root = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_config(
        [
            f"paths.log_dir={root / 'logs'}",
            f"paths.output_dir={root / 'run'}",
            *FAST,
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
        ]
    )
    return train(cfg)


def _eval(run: dict[str, Any], out: Path, *overrides: str) -> dict[str, Any]:
    cfg = compose_config(
        [f"ckpt_path={run['best_model_path']}", f"paths.output_dir={out}", "print_config=false", *overrides],
        "eval",
    )
    return evaluate(cfg, overridden=set())


def _assert_reproduces(metrics: dict[str, Any], run: dict[str, Any]) -> None:
    for name in METRICS:
        assert metrics[name] == pytest.approx(run[f"test/{name}"], abs=1e-4), name
    for cls, iou in metrics["per_class"].items():
        assert iou == pytest.approx(run[f"test/IoU/{cls}"], abs=1e-4), cls


def test_whole_image_reproduces_the_runs_test_metrics(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    metrics = _eval(tiny_run, tmp_path)
    _assert_reproduces(metrics, tiny_run)
    assert metrics["inference"] == {
        "mode": "whole",
        "window": None,
        "stride": None,
        "flip": False,
        "scales": [1.0],
    }
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["mIoU"] == metrics["mIoU"] and saved["inference"]["mode"] == "whole"
    lines = (tmp_path / "per_class.csv").read_text().splitlines()
    assert lines[0] == "class,mIoU,boundary_iou,boundary_f,connectivity_err" and len(lines) == 1 + 4


def test_sliding_window_covering_the_image_reproduces_them(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    # 64-px test images (FAST); the stride does not matter when one window covers the image.
    metrics = _eval(
        tiny_run, tmp_path, "inference.mode=slide", "inference.window=[64,64]", "inference.stride=[32,32]"
    )
    _assert_reproduces(metrics, tiny_run)
    assert metrics["inference"]["window"] == [64, 64]


def test_confusion_matrix_counts_every_labelled_test_pixel(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    metrics = _eval(tiny_run, tmp_path)
    cm = torch.tensor(metrics["confusion_matrix"])
    cfg = compose_config(["paths.output_dir=unused", *FAST])
    from bcd_lightning.builders import build_datamodule

    masks = torch.stack([s["mask"] for s in build_datamodule(cfg).test_set])
    assert cm.shape == (4, 4) and int(cm.sum()) == int((masks != 255).sum())
    assert cm.sum(1).tolist() == [int((masks == c).sum()) for c in range(4)]  # rows: ground truth
    iou = cm.diag().double() / (cm.sum(0) + cm.sum(1) - cm.diag()).double()
    assert iou.mean().item() == pytest.approx(metrics["mIoU"], abs=1e-6)
    with Image.open(tmp_path / "confusion_matrix.png") as png:
        png.verify()


def test_cli_sliding_window_with_tta_and_a_bad_key(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    exe = str(Path(sys.executable).parent / "bcd-eval")
    common = [
        f"ckpt_path={tiny_run['best_model_path']}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "print_config=false",
    ]
    done = subprocess.run(
        [exe, *common, "inference.mode=slide", "inference.window=[32,32]", "inference.flip=true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "inference: slide [32, 32] stride [22, 22] + flip" in done.stdout  # the Rich table's caption
    (run_dir,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["inference"] == {
        "mode": "slide",
        "window": [32, 32],
        "stride": [22, 22],
        "flip": True,
        "scales": [1.0],
    }
    assert 0 <= saved["mIoU"] <= 1 and (run_dir / "confusion_matrix.png").is_file()

    bad = subprocess.run(
        [exe, *common, "inference.mode=sliding"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1
    assert "inference.mode='sliding' must be one of ['whole', 'slide']" in bad.stderr
    assert "Traceback" not in bad.stderr

    typo = subprocess.run(
        [exe, *common, "inference.strid=[8,8]"],  # a key eval.yaml does not have: caught before Hydra
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert typo.returncode == 1 and "Traceback" not in typo.stderr
    assert "Unknown config key 'inference.strid'" in typo.stderr and "Did you mean 'stride'" in typo.stderr
