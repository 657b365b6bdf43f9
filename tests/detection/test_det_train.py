"""The detection configs compose, and teacher -> distilled student runs end to end on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from bcd_lightning.detection.losses import DetectionLoss
from support import DETECTION_TINY, compose_config

TINY = DETECTION_TINY


@pytest.mark.parametrize("method", ["fitnet", "cwd", "pkd", "bcd"])
def test_distill_configs_build_losses(method: str) -> None:
    cfg = compose_config(["experiment=detection/student", f"detection/distill={method}"], "train_detection")
    assert cfg.detection.distill.name == method
    for node in cfg.detection.distill.losses.values():
        assert isinstance(instantiate(node.loss), DetectionLoss)


def test_coco_presets_compose() -> None:
    for name in (
        "faster_rcnn_r101_teacher",
        "faster_rcnn_r101_to_r50",
        "retinanet_r101_teacher",
        "retinanet_r101_to_r50",
    ):
        cfg = compose_config([f"experiment=coco/{name}", "paths.output_dir=/tmp/unused"], "train_detection")
        assert cfg.detection.data.num_classes == 81
        assert cfg.detection.teacher.model.backbone == "resnet101"


def test_teacher_then_bcd_student(tmp_path: Path) -> None:
    from bcd_lightning.detection.train import train

    common = [f"paths.log_dir={tmp_path / 'logs'}", *TINY]
    teacher_cfg = compose_config(
        ["experiment=detection/teacher", f"paths.output_dir={tmp_path / 't'}", *common], "train_detection"
    )
    result = train(teacher_cfg)
    assert Path(teacher_cfg.detection.teacher.ckpt).is_file()
    assert "val/map" in result
    student_cfg = compose_config(
        [
            "experiment=detection/student",
            "detection/distill=bcd",
            f"paths.output_dir={tmp_path / 's'}",
            *common,
        ],
        "train_detection",
    )
    out = train(student_cfg)
    assert "test/map" in out and "train/loss/boundary" in out and "train/loss/context" in out
    assert Path(out["best_model_path"]).is_file()
    metrics = (tmp_path / "s" / "csv" / "metrics.csv").read_text()
    assert "teacher/unchanged" in metrics  # TeacherGuard: digest equal at fit end
    record = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert record["method"] == "bcd" and record["task"] == "detection" and "test/map" in record["metrics"]


@pytest.mark.parametrize("method", ["mask_kd", "cwd", "pkd", "bcd_instance", "bcd_object", "bcd_fpn"])
def test_instance_distill_configs_build_losses(method: str) -> None:
    from bcd_lightning.detection.losses import MaskRoILoss

    cfg = compose_config(["experiment=instance/student", f"detection/distill={method}"], "train_detection")
    assert cfg.detection.student.model.arch == cfg.detection.teacher.model.arch == "mask_rcnn"
    assert cfg.callbacks.model_checkpoint.monitor == "val/mask_map"
    losses = {n: instantiate(node.loss) for n, node in cfg.detection.distill.losses.items()}
    assert all(isinstance(x, DetectionLoss | MaskRoILoss) for x in losses.values())
    expected = {  # bcd_instance = the FPN-level BCD terms (bcd_fpn) + the two object-level ones (bcd_object)
        "bcd_instance": ("bcd", {"boundary", "context", "mask_boundary", "roi_context"}),
        "bcd_object": ("bcd_object", {"mask_boundary", "roi_context"}),
        "bcd_fpn": ("bcd_fpn", {"boundary", "context"}),
    }
    if method in expected:
        assert (cfg.detection.distill.name, set(losses)) == expected[method]


def test_instance_teacher_then_bcd_student(tmp_path: Path) -> None:
    from bcd_lightning.detection.train import train

    common = [f"paths.log_dir={tmp_path / 'logs'}", *TINY, "callbacks.instance_panels.max_images=2"]
    teacher_cfg = compose_config(
        ["experiment=instance/teacher", f"paths.output_dir={tmp_path / 't'}", *common], "train_detection"
    )
    result = train(teacher_cfg)
    assert Path(teacher_cfg.detection.teacher.ckpt).is_file()
    assert {"val/mask_map", "val/boundary_map", "val/conn_error"} <= set(result)
    student_cfg = compose_config(
        [
            "experiment=instance/student",
            "detection/distill=bcd_instance",
            f"paths.output_dir={tmp_path / 's'}",
            *common,
        ],
        "train_detection",
    )
    out = train(student_cfg)
    assert {"test/mask_map", "test/boundary_map", "test/broken_rate"} <= set(out)
    for term in ("boundary", "context", "mask_boundary", "roi_context"):
        assert f"train/loss/{term}" in out
    metrics = (tmp_path / "s" / "csv" / "metrics.csv").read_text()
    assert "teacher/unchanged" in metrics  # TeacherGuard: digest equal at fit end
    assert sorted(p.name for p in (tmp_path / "s" / "panels" / "epoch_000").iterdir()) == [
        "img_00.png",
        "img_01.png",
    ]
    record = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert record["method"] == "bcd" and record["task"] == "instance" and "test/mask_map" in record["metrics"]


def _detection_experiments() -> list[str]:
    from test_configs import is_detection_experiment, options

    return [o for o in options("experiment") if is_detection_experiment(o) and not o.endswith("common")]


@pytest.mark.parametrize("experiment", _detection_experiments())
def test_every_detection_experiment_composes_and_its_models_are_valid(experiment: str) -> None:
    from bcd_lightning.builders import plain
    from bcd_lightning.detection.models import DetectorConfig

    cfg = compose_config([f"experiment={experiment}", "paths.output_dir=/tmp/unused"], "train_detection")
    for role in ("student", "teacher"):
        DetectorConfig(**plain(cfg.detection[role].model))
    if cfg.detection.student.model.arch == "mask_rcnn":
        assert cfg.callbacks.model_checkpoint.monitor == "val/mask_map"
