"""``bcd-eval`` on detection checkpoints: a tiny (untrained) Mask R-CNN / Faster R-CNN saved in the Lightning
module's checkpoint format; instance and box metric keys, outputs, overrides, and one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import bcd_lightning.evaluate as bcd_evaluate
from bcd_lightning.detection.instance_metrics import INSTANCE_SUMMARY_KEYS
from bcd_lightning.detection.metrics import SUMMARY_KEYS
from bcd_lightning.utils.config_check import ConfigError
from bcd_lightning.utils.errors import CheckpointError
from support import compose_config

TINY = [
    "experiment=detection/student",
    "detection.student.model.backbone=mobilenet_v3_small",
    "detection.student.model.returned_layers=null",
    "detection.student.model.fpn_channels=32",
    "detection.student.model.min_size=64",
    "detection.student.model.max_size=64",
    "detection.student.model.detections_per_img=10",
    "detection.data.module.batch_size=2",
    *(f"detection.data.module.{s}.num_samples=2" for s in ("train", "val", "test")),
    *(f"detection.data.module.{s}.image_size=64" for s in ("train", "val", "test")),
]
MASKS = [
    "detection.student.model.arch=mask_rcnn",
    "+detection.student.model.mask_head_layers=[16]",
    "+detection.student.model.mask_dim_reduced=16",
    *(f"+detection.data.module.{s}.masks=true" for s in ("train", "val", "test")),
]


def save_run_checkpoint(path: Path, overrides: list[str]) -> Path:
    """What a detection run's checkpoint holds: ``state_dict`` (``model.*`` and the rest of the module) and
    ``hyper_parameters`` (class names, the resolved run config)."""
    from bcd_lightning.detection.train import build_datamodule, build_module

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([*TINY, *overrides, f"paths.output_dir={path.parent}"], "train_detection")
    module = build_module(cfg, build_datamodule(cfg))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def mask_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_run_checkpoint(tmp_path_factory.mktemp("mask_run") / "best.ckpt", MASKS)


def run_eval(
    ckpt: Path, out: Path, monkeypatch: pytest.MonkeyPatch, *deferred: str, **kw: str
) -> dict[str, Any]:
    """``evaluate`` as ``bcd-eval`` calls it: ``deferred`` are the ``detection.*`` args :func:`main` sets aside."""
    monkeypatch.setattr(bcd_evaluate, "DEFERRED", list(deferred))
    args = [
        f"ckpt_path={ckpt}",
        f"paths.output_dir={out}",
        "print_config=false",
        *(f"{k}={v}" for k, v in kw.items()),
    ]
    return bcd_evaluate.evaluate(compose_config(args, "eval"), overridden=set())


def test_mask_rcnn_checkpoint_gives_the_instance_metrics(
    mask_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = run_eval(mask_ckpt, tmp_path, monkeypatch, "detection.data.module.batch_size=1", split="val")
    assert (metrics["task"], metrics["arch"], metrics["split"]) == ("instance", "mask_rcnn", "val")
    for key in INSTANCE_SUMMARY_KEYS:
        assert isinstance(metrics[key], float) and metrics[key] >= -1.0, key
    assert set(metrics["per_class"]) <= {"blob_a", "blob_b"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert (tmp_path / "per_class.csv").read_text().splitlines()[0] == "class,mask_AP"
    config = (tmp_path / "config.yaml").read_text()
    assert "batch_size: 1" in config and "mask_rcnn" in config and "\nstudent:" not in config


def test_box_detector_checkpoint_gives_box_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = save_run_checkpoint(tmp_path / "run" / "best.ckpt", [])
    metrics = run_eval(ckpt, tmp_path / "eval", monkeypatch)
    assert (metrics["task"], metrics["arch"], metrics["split"]) == ("detection", "faster_rcnn", "test")
    assert set(SUMMARY_KEYS) <= set(metrics) and "mask_map" not in metrics


def test_wrong_arch_is_one_error_naming_the_checkpoint(
    mask_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CheckpointError) as err:
        run_eval(mask_ckpt, tmp_path, monkeypatch, "detection.student.model.arch=faster_rcnn")
    text = str(err.value)
    assert f"Checkpoint {mask_ckpt} does not match detection.student.model (faster_rcnn/" in text
    assert "unexpected keys ['roi_heads.mask_head" in text and "\n" not in text


def test_wrong_label_space_is_refused(
    mask_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(
        ConfigError, match=r"has classes \['cat', 'dog'\] but checkpoint .* predicts \['blob_a'"
    ):
        run_eval(mask_ckpt, tmp_path, monkeypatch, "+detection.data.module.class_names=[cat,dog]")


def test_segmentation_keys_on_a_detection_run_are_refused(
    mask_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"detection\.data\.batch_size"):
        run_eval(mask_ckpt, tmp_path, monkeypatch, "data.batch_size=1")
    with pytest.raises(ConfigError, match=r"Unknown config key detection\.'data\.module\.batch_sise'"):
        run_eval(mask_ckpt, tmp_path, monkeypatch, "detection.data.module.batch_sise=1")


CLI_ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def bcd_eval(ckpt: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bcd_lightning.evaluate", f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}"]
    return subprocess.run(
        [*cmd, "print_config=false", *args], cwd=run_dir.parent, env=CLI_ENV, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_cli_prints_and_writes_the_instance_metrics(mask_ckpt: Path, tmp_path: Path) -> None:
    done = bcd_eval(mask_ckpt, tmp_path / "ok", "split=val", "detection.data.module.batch_size=1")
    assert done.returncode == 0, done.stderr[-3000:]
    for key in ("boundary_map", "mask_map_75", "conn_error", "broken_rate"):
        assert key in done.stdout, key
    saved = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert (saved["task"], saved["split"]) == ("instance", "val")


def test_cli_refuses_a_wrong_arch_in_one_line(mask_ckpt: Path, tmp_path: Path) -> None:
    bad = bcd_eval(mask_ckpt, tmp_path / "bad", "detection.student.model.arch=faster_rcnn")
    assert bad.returncode == 1
    assert f"Checkpoint {mask_ckpt} does not match detection.student.model" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert json.loads((tmp_path / "bad" / "metrics.json").read_text())["status"] == "failed"
