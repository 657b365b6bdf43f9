"""Detection datasets: embedded instances, COCO (boxes, masks), VOC and Cityscapes instance readers, crowd /
empty / broken files, and the instance-segmentation presets."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from faster_coco_eval.core import mask as coco_mask
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from bcd_lightning.data.files import DatasetError
from bcd_lightning.detection.data import (
    CityscapesInstances,
    CocoDetection,
    DetectionDataModule,
    SyntheticDetection,
    VOCDetection,
    boxes_from_masks,
)
from bcd_lightning.detection.models import DetectorConfig
from support import compose_config


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


def test_synthetic_instance_masks_are_the_objects_seen_through_the_vessels() -> None:
    from bcd_lightning.data.synthetic import VESSEL
    from bcd_lightning.metrics.morphology import count_components

    data = SyntheticDetection(8, 96, seed=5, masks=True)
    boxes_only = SyntheticDetection(8, 96, seed=5)
    bridged, pieces = 0, []
    for i in range(8):
        _, target = data[i]
        label_map = data.seg.render_raw(i)[1]
        masks = target["masks"].bool()
        assert masks.dtype == torch.bool and masks.shape == (len(target["labels"]), 96, 96)
        assert torch.equal(target["boxes"], boxes_only[i][1]["boxes"])  # the detection task's boxes
        assert torch.equal(boxes_from_masks(masks), target["boxes"])
        for m, label in zip(masks, target["labels"].tolist(), strict=True):
            own, vessel = label_map == label, label_map == VESSEL
            assert bool((m <= (own | vessel)).all())  # its class or a vessel crossing it, nothing else
            bridged += int((m & vessel).sum())
        assert not bool((masks.sum(0) > 1).any())  # instances do not overlap
        pieces += count_components(masks.to(torch.int8), num_classes=2, connectivity=8)[:, 1].tolist()
    assert bridged > 0  # the vessels crossing blobs are part of their masks
    assert sum(p == 1 for p in pieces) >= 0.75 * len(pieces)  # so the vessels rarely cut a mask


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


# --- COCO instance masks -------------------------------------------------------------------------------
def coco_rle_counts(mask: np.ndarray) -> str:
    """COCO's compressed RLE string of a binary mask (the file format of ``counts`` as str)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode()


def test_coco_instance_masks_polygon_rle_and_degenerate(tmp_path: Path) -> None:
    h, w = 20, 30  # write_coco's image size
    # Crowd region in columns 20..21, rows 5..9, written by hand as uncompressed column-major runs:
    # 20 * 20 + 5 = 405 zeros, 5 ones (column 20), 10 + 5 zeros (end of column 20, start of column 21),
    # 5 ones, then the 600 - 430 = 170 remaining zeros.
    crowd = {"counts": [405, 5, 15, 5, 170], "size": [h, w]}
    compressed = np.zeros((h, w), np.uint8)
    compressed[10:12, 0:3] = 1  # x 0..2, y 10..11
    write_coco(
        tmp_path,
        [
            # Axis-aligned integer rectangle (2, 3)-(12, 8): COCO's rasteriser fills the pixels whose
            # centres are inside, i.e. columns 2..11 and rows 3..7 (the box's half-open pixel range).
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 5, 2, 5], "iscrowd": 1,
             "segmentation": crowd},
            # zero width: dropped, and its mask with it
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 4], "iscrowd": 0,
             "segmentation": [[5, 5, 6, 5, 6, 9]]},
            # two polygons merged; the 2-point one rasterises to nothing and is skipped
            {"id": 4, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 2], "iscrowd": 0,
             "segmentation": [[0, 0, 4, 0, 4, 2, 0, 2], [25, 15, 28, 18]]},
            {"id": 5, "image_id": 2, "category_id": 7, "bbox": [0, 10, 3, 2], "iscrowd": 0,
             "segmentation": {"counts": coco_rle_counts(compressed), "size": [h, w]}},
        ],
    )  # fmt: skip
    data = CocoDetection(tmp_path, "val2017", masks=True)
    _, target = data[0]
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [20, 5, 22, 10], [0, 0, 4, 2]]
    assert target["labels"].tolist() == [2, 1, 1] and target["iscrowd"].tolist() == [0, 1, 0]
    assert data.dropped == 1
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (3, h, w)
    expected = torch.zeros(3, h, w, dtype=torch.uint8)
    expected[0, 3:8, 2:12] = 1
    expected[1, 5:10, 20:22] = 1
    expected[2, 0:2, 0:4] = 1
    assert torch.equal(masks, expected)
    _, second = data[1]
    assert torch.equal(second["masks"][0], torch.from_numpy(compressed)) and second["masks"].shape == (
        1,
        h,
        w,
    )
    # Without masks=True the segmentation is not read (boxes-only datasets keep working).
    assert "masks" not in CocoDetection(tmp_path, "val2017")[0][1]


def test_coco_empty_images_and_empty_segmentations(tmp_path: Path) -> None:
    ann = {"image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2], "iscrowd": 0}
    # no polygon at all, and only a 2-point one: each instance keeps its box with an all-zero mask
    write_coco(
        tmp_path, [{"id": 1, **ann, "segmentation": []}, {"id": 2, **ann, "segmentation": [[1, 1, 3, 3]]}]
    )
    data = CocoDetection(tmp_path, "val2017", masks=True)
    _, target = data[0]
    assert target["masks"].shape == (2, 20, 30) and int(target["masks"].sum()) == 0
    assert target["boxes"].tolist() == [[0, 0, 2, 2], [0, 0, 2, 2]]
    _, empty = data[1]  # an image without annotations
    assert empty["masks"].shape == (0, 20, 30) and empty["boxes"].shape == (0, 4)


@pytest.mark.parametrize(
    ("segmentation", "reason"),
    [
        ([[1, 2, 3, 4, 5]], "a polygon must be a list of x, y pairs"),
        ([[1, 2, 3, "a", 5, 6]], "a polygon holds a non-number"),
        ({"counts": [1, 2], "size": [10, 30]}, r"RLE size \[10, 30\] is not the image's"),
        ({"counts": [100, 1], "size": [20, 30]}, "Invalid RLE|RLE counts"),  # covers 101 of 600 pixels
        ({"counts": None, "size": [20, 30]}, "RLE counts must be"),
        ("not a mask", "expected polygons or an RLE dict"),
    ],
)
def test_coco_malformed_segmentation_is_one_line(tmp_path: Path, segmentation: object, reason: str) -> None:
    ann = {"id": 9, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2], "segmentation": segmentation}
    write_coco(tmp_path, [ann])
    data = CocoDetection(tmp_path, "val2017", masks=True)  # decoded lazily: the sample fails, not __init__
    with pytest.raises(
        DatasetError, match=r"instances_val2017\.json: annotation id 9 has a malformed segmentation"
    ) as err:
        data[0]
    assert re.search(reason, str(err.value)) and "\n" not in str(err.value)


def test_coco_masks_need_a_segmentation_key(tmp_path: Path) -> None:
    write_coco(tmp_path, [{"id": 4, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2]}])
    with pytest.raises(DatasetError, match=r"annotation #0 \(id 4\) is malformed: KeyError 'segmentation'"):
        CocoDetection(tmp_path, "val2017", masks=True)


# --- Cityscapes instances -------------------------------------------------------------------------------
def write_cityscapes(root: Path, split: str, ids: np.ndarray, name: str = "aachen_000000_000019") -> None:
    images, gt = root / "leftImg8bit" / split / "aachen", root / "gtFine" / split / "aachen"
    images.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*ids.shape, 3), np.uint8)).save(images / f"{name}_leftImg8bit.png")
    Image.fromarray(ids.astype(np.uint16)).save(gt / f"{name}_gtFine_instanceIds.png")  # 16-bit, as gtFine


def cityscapes_ids() -> np.ndarray:
    ids = np.full((8, 12), 7, np.int64)  # road: not an instance class
    ids[1:3, 1:4] = 26001  # car #1: x 1..3, y 1..2
    ids[4:7, 5:7] = 26002  # car #2: x 5..6, y 4..6
    ids[0:2, 8:11] = 24  # a person group (no instance split) ...
    ids[7, 0] = 24  # ... in two pieces: one crowd instance spanning both
    ids[5, 10] = 29001  # caravan: has instances but is not evaluated
    return ids


def test_cityscapes_instances_labels_boxes_and_crowd(tmp_path: Path) -> None:
    write_cityscapes(tmp_path, "val", cityscapes_ids())
    data = CityscapesInstances(tmp_path, "val")
    assert data.class_names == ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    assert len(data) == 1
    image, target = data[0]
    assert image.shape == (3, 8, 12)
    # by increasing id: the person group (24), then cars 26001, 26002
    assert target["labels"].tolist() == [1, 3, 3] and target["iscrowd"].tolist() == [1, 0, 0]
    assert target["boxes"].tolist() == [[0, 0, 11, 8], [1, 1, 4, 3], [5, 4, 7, 7]]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (3, 8, 12)
    assert masks.sum(dim=(1, 2)).tolist() == [6 + 1, 6, 6]
    assert masks[0, 7, 0] == 1 and masks[1, 1:3, 1:4].all() and masks[2, 4:7, 5:7].all()


def test_cityscapes_missing_instance_file_and_8bit_ids(tmp_path: Path) -> None:
    write_cityscapes(tmp_path, "val", cityscapes_ids())
    lonely = tmp_path / "leftImg8bit" / "val" / "aachen" / "aachen_000001_000019_leftImg8bit.png"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(lonely)
    with pytest.raises(DatasetError, match=r"images without a mask: aachen_000001_000019_leftImg8bit\.png"):
        CityscapesInstances(tmp_path, "val")
    lonely.unlink()
    gt = tmp_path / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png"
    Image.fromarray(np.full((8, 12), 7, np.uint8)).save(gt)  # an 8-bit file cannot hold instance ids
    with pytest.raises(DatasetError, match=r"instanceIds\.png is a L image: instance ids .* need a 16-bit"):
        CityscapesInstances(tmp_path, "val")[0]
    with pytest.raises(DatasetError, match=r"Cityscapes split 'train' not found"):
        CityscapesInstances(tmp_path, "train")


# --- the instance-segmentation presets compose -----------------------------------------------------------
INSTANCE_PRESETS = (
    "coco/mask_rcnn_r101_teacher",
    "coco/mask_rcnn_r101_to_r50",
    "cityscapes_instance/teacher",
    "cityscapes_instance/student",
)


def instance_callbacks_overrides(tmp_path: Path) -> list[str]:
    """``callbacks=instance`` comes with the metric's integration (the lead's conf/callbacks/instance.yaml);
    until it exists, a stand-in (detection.yaml monitoring val/mask_map) on the search path."""
    if (resources.files("bcd_lightning.conf") / "callbacks" / "instance.yaml").is_file():
        return []
    (tmp_path / "sp" / "callbacks").mkdir(parents=True)
    (tmp_path / "sp" / "callbacks" / "instance.yaml").write_text(
        "defaults:\n  - detection\n  - _self_\nmodel_checkpoint:\n  monitor: val/mask_map\n"
    )
    return [f"hydra.searchpath=[file://{tmp_path / 'sp'}]"]


def detector(node: DictConfig) -> DetectorConfig:
    """The preset's model node as the dataclass the detector is built from (validates every field)."""
    fields = OmegaConf.to_container(node, resolve=True)
    assert isinstance(fields, dict)
    return DetectorConfig(**{str(k): v for k, v in fields.items()})


@pytest.mark.parametrize("preset", INSTANCE_PRESETS)
def test_instance_presets_compose(tmp_path: Path, preset: str) -> None:
    overrides = [f"experiment={preset}", "paths.output_dir=/tmp/unused", f"paths.data_dir={tmp_path}"]
    cfg = compose_config(overrides + instance_callbacks_overrides(tmp_path), "train_detection")
    assert cfg.callbacks.model_checkpoint.monitor == "val/mask_map"
    teacher, student = (detector(cfg.detection[role].model) for role in ("teacher", "student"))
    assert (teacher.arch, teacher.backbone, student.arch) == ("mask_rcnn", "resnet101", "mask_rcnn")
    assert student.backbone == ("resnet101" if preset.endswith("teacher") else "resnet50")
    assert teacher.mask_head_layers == [256, 256, 256, 256] and student.mask_dim_reduced == 256
    if preset.startswith("coco/"):
        assert cfg.detection.data.num_classes == 81 and (student.min_size, student.max_size) == (800, 1333)
        write_coco(tmp_path / "coco", [])
        val = instantiate(cfg.detection.data.module.val)
        assert isinstance(val, CocoDetection) and val.masks and cfg.detection.data.module.train.masks
    else:
        assert cfg.detection.data.num_classes == 9 == len(CityscapesInstances.class_names) + 1
        assert (student.min_size, student.max_size) == (teacher.min_size, teacher.max_size) == (1024, 2048)
        assert cfg.trainer.max_steps == 24000 and cfg.optimizer.lr == 0.01
        for split in ("train", "val"):
            write_cityscapes(tmp_path / "cityscapes", split, cityscapes_ids())
        module = instantiate(cfg.detection.data.module)
        assert isinstance(module.train_set, CityscapesInstances) and module.test_set is module.val_set
