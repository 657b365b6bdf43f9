"""Pascal VOC 2012 segmentation: ``JPEGImages/<id>.jpg``, palette PNGs ``SegmentationClass/<id>.png`` (read
as index images: 0 background, 1..20 objects, 255 the "void" border, which is ignored) and split lists
``ImageSets/Segmentation/{train,val,trainval}.txt``. The SBD-augmented training set (10,582 images, the
KD protocol's ``train_aug``) is the same layout with ``mask_dir: SegmentationClassAug`` and
``split: train_aug`` (list ``ImageSets/Segmentation/train_aug.txt``).
"""

from __future__ import annotations

from pathlib import Path

from bcd_lightning.data.files import (
    DatasetError,
    PairedSegmentation,
    Transform,
    label_table,
    read_list_file,
    require_dir,
    short_list,
)

CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
VOID = 255
HINT = (
    "Download VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and set "
    "data.root=<...>/VOCdevkit/VOC2012 (or BCD_DATA=<parent folder> with that folder named 'voc'). For the "
    "augmented train set add SegmentationClassAug/ and ImageSets/Segmentation/train_aug.txt from SBD."
)


class PascalVOC(PairedSegmentation):
    """Pascal VOC 2012 segmentation, 21 classes.

    Args:
        root: the ``VOC2012`` folder (holding ``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/``).
        split: list name under ``ImageSets/Segmentation/`` (``train``, ``val``, ``trainval``, ``train_aug``).
        mask_dir: ``SegmentationClass`` or ``SegmentationClassAug`` (SBD-augmented masks).
        transform: joint transform (see :mod:`bcd_lightning.data.transforms`).
        ignore_index: class index of the void border.
    """

    class_names = CLASS_NAMES
    label_description = "VOC classes 0..20 and 255 (void)"
    rgb_mask_hint = (
        "VOC masks must be the original palette PNGs (or index PNGs as in SegmentationClassAug), whose "
        "pixel values are the class indices."
    )

    def __init__(
        self,
        root: str,
        split: str = "train",
        mask_dir: str = "SegmentationClass",
        transform: Transform | None = None,
        ignore_index: int = 255,
    ) -> None:
        base = require_dir(Path(root).expanduser(), "Pascal VOC root", HINT)
        image_dir = require_dir(base / "JPEGImages", "Pascal VOC images", HINT)
        masks = require_dir(base / mask_dir, f"Pascal VOC masks ({mask_dir})", HINT)
        ids = read_list_file(base / "ImageSets" / "Segmentation" / f"{split}.txt")
        pairs, missing = [], []
        for sample_id in ids:
            image, mask = image_dir / f"{sample_id}.jpg", masks / f"{sample_id}.png"
            if not image.is_file() or not mask.is_file():
                missing.append(str(image if not image.is_file() else mask))
            pairs.append((image, mask))
        if missing:
            raise DatasetError(
                f"Pascal VOC split {split!r} lists files that do not exist: {short_list(missing)}."
            )
        super().__init__(pairs, f"PascalVOC {split} ({base})", transform, ignore_index)
        self.table = label_table(256, {i: i for i in range(len(CLASS_NAMES))} | {VOID: ignore_index})
