"""Detection datasets: embedded instances, COCO and VOC readers, crowd / empty / broken files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bcd_lightning.data.files import DatasetError
from bcd_lightning.detection.data import CocoDetection, DetectionDataModule, SyntheticDetection, VOCDetection


def test_synthetic_boxes_cover_their_class_and_are_seeded() -> None:
    data = SyntheticDetection(4, 96, seed=5)
    again = SyntheticDetection(4, 96, seed=5)
    for i in range(4):
        image, target = data[i]
        mask = data.seg.render_raw(i)[1]
        assert image.shape == (3, 96, 96) and float(image.min()) >= 0 and float(image.max()) <= 1
        assert torch.equal(target["boxes"], again[i][1]["boxes"])
        assert len(target["boxes"]) >= 2  # the renderer draws >= 1 blob of each class
        assert set(target["labels"].tolist()) <= {1, 2} and target["iscrowd"].sum() == 0
        for (x1, y1, x2, y2), label in zip(
            target["boxes"].long().tolist(), target["labels"].tolist(), strict=True
        ):
            inside = mask[y1:y2, x1:x2] == label  # blob_a = class 1, blob_b = class 2 in both label spaces
            # Tight: the box's first/last rows and columns each hold a pixel of the class.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert int(inside.sum()) >= data.min_area


def write_coco(root: Path, annotations: list, images: list | None = None) -> None:
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images = images or [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    for im in images:
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "val2017" / im["file_name"])
    data = {
        "images": images,
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": annotations,
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))


def test_coco_crowd_empty_and_degenerate(tmp_path: Path) -> None:
    write_coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 30, 20], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 4], "iscrowd": 0},  # zero width
        ],
    )
    data = CocoDetection(tmp_path, "val2017")
    assert data.class_names == ("cat", "dog")
    image, target = data[0]
    assert image.shape == (3, 20, 30)
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [0, 0, 30, 20]]
    assert target["labels"].tolist() == [2, 1] and target["iscrowd"].tolist() == [0, 1]
    assert data.dropped == 1
    _, empty = data[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert DetectionDataModule(data, data).num_classes == 3


def test_coco_broken_files_fail_in_one_line(tmp_path: Path) -> None:
    write_coco(tmp_path, [{"id": 9, "image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(DatasetError, match=r"annotation #0 \(id 9\) is malformed"):
        CocoDetection(tmp_path, "val2017")
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"instances_val2017\.json is not valid JSON"):
        CocoDetection(tmp_path, "val2017")
    with pytest.raises(DatasetError, match=r"instances_train2017\.json"):
        CocoDetection(tmp_path, "train2017")


def test_voc_difficult_is_crowd_and_broken_xml(tmp_path: Path) -> None:
    base = tmp_path / "VOC2012"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / d).mkdir(parents=True)
    (base / "ImageSets/Main/val.txt").write_text("x\ny\n")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(base / "JPEGImages/x.jpg")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(base / "JPEGImages/y.jpg")
    obj = "<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>8</xmax><ymax>9</ymax></bndbox></object>"
    (base / "Annotations/x.xml").write_text(
        f"<annotation>{obj.format('dog', 0)}{obj.format('cat', 1)}</annotation>"
    )
    (base / "Annotations/y.xml").write_text("<annotation><object>")
    data = VOCDetection(tmp_path, "val")
    _, target = data[0]
    assert target["boxes"].tolist() == [[1, 2, 8, 9], [1, 2, 8, 9]]  # 1-based pixels -> 0-based xyxy
    assert target["labels"].tolist() == [12, 8] and target["iscrowd"].tolist() == [0, 1]
    with pytest.raises(DatasetError, match=r"y\.xml cannot be parsed"):
        data[1]
