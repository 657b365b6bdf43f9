"""Detection data: the embedded synthetic set, COCO ``instances_*.json``, Pascal VOC detection and
Cityscapes instances.

Every dataset yields ``(image float32 [3, H, W] in [0, 1], target)`` with ``target = {"boxes": float
[N, 4] xyxy pixels, "labels": int64 [N] in 1..K (0 is torchvision's background), "iscrowd": int64 [N]}``,
plus ``"masks": uint8 [N, H, W]`` for instance segmentation (COCO with ``masks=True``, Cityscapes).
Crowd boxes (COCO ``iscrowd=1``, VOC ``difficult``) are kept in the target so the metric ignores
detections on them; the training step drops them. Images without objects give empty ``[0, 4]`` boxes.
Degenerate boxes (width or height < 1 px after clipping, which torchvision asserts on) are dropped and
counted. A broken annotation file fails with one line naming it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from faster_coco_eval.core import mask as coco_mask
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bcd_lightning.data.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES
from bcd_lightning.data.cityscapes import IMAGE_SUFFIX as CITYSCAPES_IMAGE_SUFFIX
from bcd_lightning.data.cityscapes import LABEL_TO_TRAIN as CITYSCAPES_LABEL_TO_TRAIN
from bcd_lightning.data.cityscapes import list_pairs
from bcd_lightning.data.files import DatasetError, read_image, read_mask_raw, require_dir
from bcd_lightning.data.synthetic import BLOB_A, BLOB_B, VESSEL, SyntheticSegmentation
from bcd_lightning.metrics.morphology import label_components

Target = dict[str, Tensor]
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def make_target(
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    crowd: Sequence[int],
    masks: Tensor | None = None,
) -> Target:
    """A torchvision target; ``masks`` (uint8 ``[N, H, W]``, instance segmentation) when given."""
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "iscrowd": torch.tensor(crowd, dtype=torch.int64),
    }
    if masks is not None:
        if masks.dim() != 3 or masks.shape[0] != target["labels"].numel():
            raise ValueError(
                f"instance masks must be [N, H, W] with N = {len(labels)}, got {tuple(masks.shape)}"
            )
        target["masks"] = masks.to(torch.uint8)
    return target


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Tight xyxy pixel boxes ``[N, 4]`` of binary masks ``[N, H, W]`` (each mask must be non-empty)."""
    if masks.numel() == 0:
        return torch.zeros(0, 4)
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[-2:]
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1).float()


def load_image(path: Path) -> Tensor:
    """float32 ``[3, H, W]`` in [0, 1] (any Pillow-readable file)."""
    return torch.from_numpy(read_image(path)).permute(2, 0, 1).float() / 255.0


def clip_boxes(target: Target, height: int, width: int) -> tuple[Target, int]:
    """Clip to the image and drop boxes under 1 px wide or high (and their masks, as every key is
    indexed alike); returns the count dropped."""
    boxes = target["boxes"].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    out = {k: v[keep] for k, v in target.items()}
    out["boxes"] = boxes[keep]
    return out, int((~keep).sum())


# --- embedded synthetic data -----------------------------------------------------------------------------
class SyntheticDetection(Dataset):
    """Visible blob instances of the embedded renderer (:mod:`bcd_lightning.data.synthetic`) as boxes
    (and, with ``masks=True``, instance masks for Mask R-CNN).

    Two classes (``blob_a`` = 1, ``blob_b`` = 2). An instance is a connected region of one blob class
    after a morphological closing of ``close_radius`` px, which bridges the thin vessels drawn across a
    blob (they would otherwise cut it into pieces); its box spans the class's own pixels in that region
    (Regions under ``min_area`` own pixels are dropped: slivers of an occluded blob). Its mask is the
    object seen through the vessels crossing it: the class's own pixels in the region plus the vessel
    pixels the closing bridged (so it is one connected piece, box = the mask's box). The vessels are
    stuff, not instances: they cross the whole image (a box ≈ the image) and are 1-3 px wide, below what
    a 28x28 RoI mask resolves, so as instances they would measure mask resolution, not distillation. As
    thin occluders they are where a mask breaks, which the per-instance connectivity metric counts (a
    mask that a vessel cuts into pieces is broken). Seeded, offline, exact.
    """

    class_names: tuple[str, ...] = ("blob_a", "blob_b")

    def __init__(
        self,
        num_samples: int,
        image_size: int = 128,
        seed: int = 0,
        close_radius: int = 2,
        min_area: int = 24,
        masks: bool = False,
    ) -> None:
        self.seg = SyntheticSegmentation(num_samples, image_size, seed=seed, normalize=False, cache=True)
        self.close_radius = int(close_radius)
        self.min_area = int(min_area)
        self.masks = bool(masks)
        self._targets: dict[int, Target] = {}

    def __len__(self) -> int:
        return len(self.seg)

    def instances(self, mask: Tensor) -> Target:
        """Boxes (and masks when ``self.masks``) of the visible blob instances in a class mask ``[H, W]``."""
        boxes, labels, pixels = [], [], []
        k = 2 * self.close_radius + 1
        for cls, label in ((BLOB_A, 1), (BLOB_B, 2)):
            own = (mask == cls)[None, None].float()
            closed = -F.max_pool2d(-F.max_pool2d(own, k, 1, k // 2), k, 1, k // 2)  # dilate, then erode
            region = (closed[0, 0] > 0) | (own[0, 0] > 0)
            ids = label_components(region.long()[None])[0]
            for comp in torch.unique(ids[region]):
                pix = (ids == comp) & (own[0, 0] > 0)
                if int(pix.sum()) < self.min_area:
                    continue
                if self.masks:  # the object seen through the vessels crossing it: own + bridged vessel pixels
                    pix = (ids == comp) & ((own[0, 0] > 0) | (mask == VESSEL))
                ys, xs = torch.nonzero(pix, as_tuple=True)
                boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
                labels.append(label)
                pixels.append(pix)
        stacked = torch.stack(pixels) if pixels else torch.zeros(0, *mask.shape, dtype=torch.bool)
        return make_target(boxes, labels, [0] * len(labels), stacked if self.masks else None)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image, mask = self.seg.render_raw(index)
        i = self.seg._check_index(index)
        if i not in self._targets:
            self._targets[i] = self.instances(mask)
        return image, {k: v.clone() for k, v in self._targets[i].items()}


# --- COCO ----------------------------------------------------------------------------------------------
def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"COCO annotation file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"COCO annotation file {path} is not valid JSON: {err}") from err


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` as a uint8 ``[height, width]`` mask; ``ValueError`` saying what is wrong.

    Polygons (a list of ``[x0, y0, x1, y1, ...]`` lists, merged), uncompressed RLE (``counts`` a list,
    column-major run lengths starting with a zero run: crowd regions) or compressed RLE (``counts`` a
    string). Polygons of fewer than 3 points rasterise to nothing (COCO train2017 holds a few); an
    instance left without pixels keeps its box and an empty mask, as in torchvision's reference COCO loader.
    """
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or len(poly) % 2:
                raise ValueError(f"a polygon must be a list of x, y pairs, got {str(poly)[:60]}")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in poly):
                raise ValueError(f"a polygon holds a non-number: {str(poly)[:60]}")
        if not segm:  # no polygon (segmToRle would give a 0 x 0 mask)
            return np.zeros((height, width), np.uint8)
        rle = coco_mask.segmToRle(segm, width, height)
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise ValueError(
                f"RLE size {segm['size']} is not the image's [height, width] = [{height}, {width}]"
            )
        counts = segm["counts"]
        is_runs = isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
        if not (is_runs or isinstance(counts, str)):
            raise ValueError("RLE counts must be a list of run lengths or a compressed string")
        rle = coco_mask.segmToRle(segm, width, height)
    else:
        raise ValueError(f"expected polygons or an RLE dict with counts and size, got {str(segm)[:60]}")
    return coco_mask.decode(rle)  # its own ValueError for counts that do not cover height x width


class CocoDetection(Dataset):
    """COCO layout: ``root/annotations/instances_<split>.json`` and ``root/<split>/<file_name>``.

    Category ids are mapped to 1..K in increasing id order (COCO's 80 of 90 ids). Images without
    annotations are kept (empty targets). Boxes are ``[x, y, w, h]`` in the file, xyxy here. With
    ``masks=True`` the target also holds each annotation's ``segmentation`` (:func:`decode_segmentation`)
    as a uint8 ``[N, H, W]`` mask at the image's size, decoded per sample (COCO has 860k annotations);
    crowd annotations (RLE) keep theirs, for the metric.
    """

    def __init__(self, root: str | Path, split: str = "val2017", masks: bool = False) -> None:
        root = require_dir(Path(root), "COCO root", "Expected annotations/ and image folders under it.")
        ann_file = root / "annotations" / f"instances_{split}.json"
        data = _load_json(ann_file)
        try:
            cats = sorted(int(c["id"]) for c in data["categories"])
            names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            images = [(int(im["id"]), str(im["file_name"])) for im in data["images"]]
            anns = list(data.get("annotations", []))
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{ann_file}: missing or malformed key {err} in categories/images") from err
        self.ann_file = ann_file
        self.image_dir = root / split
        self.masks = bool(masks)
        self.cat_to_label = {c: i + 1 for i, c in enumerate(cats)}
        self.class_names = tuple(names[c] for c in cats)
        self.images = images
        # per image: (xyxy box, label, iscrowd, annotation id, segmentation or None)
        per_image: dict[int, list[tuple[list[float], int, int, Any, Any]]] = {i: [] for i, _ in images}
        for n, ann in enumerate(anns):
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
                label = self.cat_to_label[int(ann["category_id"])]
                segm = ann["segmentation"] if self.masks else None
                item = ([x, y, x + w, y + h], label, int(ann.get("iscrowd", 0)), ann.get("id"), segm)
                per_image[int(ann["image_id"])].append(item)
            except (KeyError, TypeError, ValueError) as err:
                raise DatasetError(
                    f"{ann_file}: annotation #{n} (id {ann.get('id') if isinstance(ann, dict) else '?'}) "
                    f"is malformed: {type(err).__name__} {err}"
                ) from err
        self.annotations = per_image
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.images)

    def decode_masks(self, items: Sequence[tuple[Any, ...]], height: int, width: int) -> Tensor:
        """uint8 ``[N, height, width]`` masks of one image's annotations."""
        masks = []
        for item in items:
            try:
                masks.append(decode_segmentation(item[4], height, width))
            except ValueError as err:
                raise DatasetError(
                    f"{self.ann_file}: annotation id {item[3]} has a malformed segmentation: {err}"
                ) from err
        return (
            torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
        )

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id, name = self.images[index]
        image = load_image(self.image_dir / name)
        items = self.annotations[image_id]
        height, width = image.shape[1:]
        masks = self.decode_masks(items, height, width) if self.masks else None
        target = make_target([i[0] for i in items], [i[1] for i in items], [i[2] for i in items], masks)
        target, dropped = clip_boxes(target, height, width)
        self.dropped += dropped
        return image, target


# --- Pascal VOC detection ------------------------------------------------------------------------------
class VOCDetection(Dataset):
    """``root/VOC2012`` (or any ``VOC20xx``): ``Annotations/*.xml``, ``JPEGImages``, ``ImageSets/Main``.

    The 20 VOC classes as 1..20; ``difficult`` objects are marked crowd (ignored by the metric, as in the
    VOC protocol, and not trained on). VOC's 1-based pixel coordinates become 0-based xyxy.
    """

    class_names: tuple[str, ...] = VOC_CLASSES

    def __init__(self, root: str | Path, split: str = "val", year: str = "2012") -> None:
        base = require_dir(Path(root) / f"VOC{year}", "VOC folder", "Expected VOCdevkit layout.")
        list_file = base / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetError(f"VOC split list not found: {list_file}")
        self.ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        self.base = base
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.ids)

    def parse(self, path: Path) -> Target:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as err:
            raise DatasetError(f"VOC annotation {path} cannot be parsed: {err}") from err
        boxes, labels, crowd = [], [], []
        for n, obj in enumerate(root.iter("object")):
            try:
                name = obj.findtext("name", "").strip()
                label = VOC_CLASSES.index(name) + 1
                bb = obj.find("bndbox")
                if bb is None:
                    raise ValueError("no bndbox")
                x1, y1, x2, y2 = (float(bb.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (ValueError, TypeError, AttributeError) as err:
                raise DatasetError(
                    f"VOC annotation {path}: object #{n} has an unknown class or a malformed bndbox ({err})"
                ) from err
            boxes.append([x1 - 1, y1 - 1, x2, y2])
            labels.append(label)
            crowd.append(int(obj.findtext("difficult", "0").strip() or 0))
        return make_target(boxes, labels, crowd)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        name = self.ids[index]
        image = load_image(self.base / "JPEGImages" / f"{name}.jpg")
        target, dropped = clip_boxes(self.parse(self.base / "Annotations" / f"{name}.xml"), *image.shape[1:])
        self.dropped += dropped
        return image, target


# --- Cityscapes instances ------------------------------------------------------------------------------
#: Label ids of the 8 classes Cityscapes evaluates instances of (cityscapesScripts labels.py: the
#: hasInstances classes without ignoreInEval), in the order of the labels 1..8.
CITYSCAPES_THING_IDS = (24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"


def cityscapes_pairs(root: str | Path, split: str, mask_suffix: str) -> list[tuple[Path, Path]]:
    """:func:`bcd_lightning.data.cityscapes.list_pairs`, and an empty split is an error here."""
    pairs = list_pairs(root, split, mask_suffix)
    if not pairs:
        raise DatasetError(
            f"Cityscapes {split} ({root}): the split is empty (no *{CITYSCAPES_IMAGE_SUFFIX})."
        )
    return pairs


class CityscapesInstances(Dataset):
    """Cityscapes fine instance segmentation: ``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png``
    with ``root/gtFine/<split>/<city>/<name>_gtFine_instanceIds.png``.

    The 8 evaluated classes (person, rider, car, truck, bus, train, motorcycle, bicycle) are labels 1..8.
    An instanceIds pixel holds ``class_id * 1000 + k`` for instance ``k`` of a class with instances and
    the bare ``class_id`` elsewhere; a bare id of one of the 8 classes marks a group the annotators did
    not split into instances (e.g. "person group"). Each such group (all pixels of that id) is kept as
    one ``iscrowd=1`` instance, so the metric ignores detections on it and training drops it; every other
    id (road, caravan, trailer, ...) is background. Boxes are the masks' tight boxes. Splits: ``train``,
    ``val`` (the test labels are not public: val serves as the test set).
    """

    class_names: tuple[str, ...] = tuple(
        CITYSCAPES_CLASSES[CITYSCAPES_LABEL_TO_TRAIN[i]] for i in CITYSCAPES_THING_IDS
    )

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.pairs = cityscapes_pairs(root, split, CITYSCAPES_INSTANCE_SUFFIX)
        self.label_of = {class_id: n + 1 for n, class_id in enumerate(CITYSCAPES_THING_IDS)}

    def __len__(self) -> int:
        return len(self.pairs)

    def read_ids(self, path: Path) -> np.ndarray:
        """The int64 instance-id map of an ``*_instanceIds.png`` (16-bit greyscale)."""
        raw, mode = read_mask_raw(path)
        if raw.ndim != 2 or mode in ("1", "L", "P"):
            raise DatasetError(
                f"{path} is a {mode} image: instance ids (class_id * 1000 + k) need a 16-bit single-channel "
                f"PNG, the *{CITYSCAPES_INSTANCE_SUFFIX} files of gtFine."
            )
        return raw.astype(np.int64)

    def instances(self, ids: np.ndarray) -> Target:
        """Target of an instance-id map ``[H, W]``: instances, then crowd groups, by increasing id."""
        found = np.unique(ids)
        keep = [int(v) for v in found if (v // 1000 if v >= 1000 else v) in self.label_of]
        ids_t = torch.from_numpy(ids)
        masks = (
            torch.stack([ids_t == v for v in keep]) if keep else torch.zeros(0, *ids.shape, dtype=torch.bool)
        )
        labels = [self.label_of[v // 1000 if v >= 1000 else v] for v in keep]
        crowd = [int(v < 1000) for v in keep]
        return make_target(boxes_from_masks(masks).tolist(), labels, crowd, masks)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_path, ids_path = self.pairs[index]
        image = load_image(image_path)
        ids = self.read_ids(ids_path)
        if tuple(ids.shape) != tuple(image.shape[1:]):
            raise DatasetError(
                f"Image {image_path} is {image.shape[2]}x{image.shape[1]} (WxH) but {ids_path} is "
                f"{ids.shape[1]}x{ids.shape[0]}: every instanceIds file must have its image's size."
            )
        return image, self.instances(ids)


# --- data module ---------------------------------------------------------------------------------------
def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Lists, not stacks: torchvision detectors take images of different sizes."""
    return [b[0] for b in batch], [b[1] for b in batch]


class DetectionDataModule(L.LightningDataModule):
    """Train / val / test detection datasets (already built) and their loaders."""

    def __init__(
        self,
        train: Dataset,
        val: Dataset,
        test: Dataset | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.train_set, self.val_set, self.test_set = train, val, test if test is not None else val
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.class_names = list(class_names or getattr(train, "class_names", ()))

    @property
    def num_classes(self) -> int:
        """Object classes + background (torchvision's ``num_classes``)."""
        return len(self.class_names) + 1

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)
