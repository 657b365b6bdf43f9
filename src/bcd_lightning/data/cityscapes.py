"""Cityscapes (fine annotations): ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
``gtFine/<split>/<city>/*_gtFine_labelIds.png``; the 34 label ids map to the 19 train ids of the official
label table (cityscapesScripts ``labels.py``), every other id (and the licence plate) to ``ignore_index``.
"""

from __future__ import annotations

from pathlib import Path

from bcd_lightning.data.files import (
    PairedSegmentation,
    Transform,
    label_table,
    pair_by_stem,
    require_dir,
)

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip
#: label id -> train id for the 19 evaluated classes (cityscapesScripts labels.py); ids 0..33 otherwise
#: ignored.
LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
NUM_LABEL_IDS = 34
HINT = (
    "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ (free registration), unzip both into one folder and "
    "set data.root=<that folder> (or BCD_DATA=<parent folder> with the folder named 'cityscapes')."
)
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"


def list_pairs(root: str | Path, split: str, mask_suffix: str) -> list[tuple[Path, Path]]:
    """``(leftImg8bit image, gtFine *<mask_suffix> file)`` pairs of a split in sorted ``<city>/<name>`` order
    (semantic ``_gtFine_labelIds.png``, instance ``_gtFine_instanceIds.png``); a missing folder or an image
    without its annotation (or the reverse) is one error naming it."""
    base = require_dir(Path(root).expanduser(), "Cityscapes root", HINT)
    image_dir = require_dir(base / "leftImg8bit" / split, f"Cityscapes split {split!r}", HINT)
    mask_dir = require_dir(base / "gtFine" / split, f"Cityscapes annotations of split {split!r}", HINT)
    images = {
        str(p.relative_to(image_dir))[: -len(IMAGE_SUFFIX)]: p for p in image_dir.rglob("*" + IMAGE_SUFFIX)
    }
    masks = {str(p.relative_to(mask_dir))[: -len(mask_suffix)]: p for p in mask_dir.rglob("*" + mask_suffix)}
    return pair_by_stem(images, masks, image_dir, mask_dir)


class Cityscapes(PairedSegmentation):
    """Cityscapes fine annotations, 19 classes.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test`` (test labels are not public: all ignored).
        transform: joint transform (see :mod:`bcd_lightning.data.transforms`).
        ignore_index: class index of unlabelled pixels.
    """

    class_names = CLASS_NAMES
    label_description = f"Cityscapes label ids 0..{NUM_LABEL_IDS - 1} or 255"
    rgb_mask_hint = f"Cityscapes needs the *{MASK_SUFFIX} files (label ids), not *_gtFine_color.png."

    def __init__(
        self, root: str, split: str = "train", transform: Transform | None = None, ignore_index: int = 255
    ) -> None:
        base = Path(root).expanduser()
        pairs = list_pairs(base, split, MASK_SUFFIX)
        super().__init__(pairs, f"Cityscapes {split} ({base})", transform, ignore_index)
        # Every label id 0..33 is valid (non-evaluated ones -> ignore); 255 is the licence plate's id -1
        # as stored by some conversion tools.
        ignored = {i: ignore_index for i in (*range(NUM_LABEL_IDS), 255)}
        self.table = label_table(256, ignored | LABEL_TO_TRAIN)
