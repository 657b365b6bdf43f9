"""The detection configs compose, and teacher -> distilled student runs end to end on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from bcd_lightning.detection.losses import DetectionLoss
from support import compose_config

STUDENT = ["detection.student.model.min_size=64", "detection.student.model.max_size=64"]
TINY = [
    "detection.data.module.train.num_samples=8",
    "detection.data.module.val.num_samples=4",
    "detection.data.module.test.num_samples=4",
    "detection.data.module.train.image_size=64",
    "detection.data.module.val.image_size=64",
    "detection.data.module.test.image_size=64",
    "detection.data.module.batch_size=4",
    "detection.teacher.model.min_size=64",
    "detection.teacher.model.max_size=64",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


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
