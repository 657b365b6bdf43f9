"""ADE20K SceneParsing (the 150-class MIT benchmark): ``ADEChallengeData2016/images/{training,validation}/
ADE_*.jpg`` with ``annotations/{training,validation}/ADE_*.png``. Stored label 0 ("other") is ignored;
labels 1..150 become classes 0..149.
"""

from __future__ import annotations

from pathlib import Path

from bcd_lightning.data.files import (
    DatasetError,
    PairedSegmentation,
    Transform,
    label_table,
    pair_by_stem,
    require_dir,
)

CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car",
    "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat",
    "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
HINT = (
    "Download ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu/ and set data.root to the "
    "folder holding ADEChallengeData2016/ (or to ADEChallengeData2016 itself)."
)


class ADE20K(PairedSegmentation):
    """ADE20K SceneParsing, 150 classes (stored 0 -> ignore, k -> k - 1).

    Args:
        root: ``ADEChallengeData2016`` or the folder that contains it.
        split: ``train``/``training`` or ``val``/``validation``.
        transform: joint transform (see :mod:`bcd_lightning.data.transforms`).
        ignore_index: class index of the unlabelled ("other") pixels.
    """

    class_names = CLASS_NAMES
    label_description = "ADE20K labels 0 (ignored) .. 150"
    rgb_mask_hint = "ADE20K annotations are 8-bit index PNGs."

    def __init__(
        self, root: str, split: str = "train", transform: Transform | None = None, ignore_index: int = 255
    ) -> None:
        base = require_dir(Path(root).expanduser(), "ADE20K root", HINT)
        if (base / "ADEChallengeData2016").is_dir():
            base = base / "ADEChallengeData2016"
        if split not in SPLITS:
            raise DatasetError(f"ADE20K split must be one of {sorted(SPLITS)}, got {split!r}.")
        folder = SPLITS[split]
        image_dir = require_dir(base / "images" / folder, f"ADE20K images ({folder})", HINT)
        mask_dir = require_dir(base / "annotations" / folder, f"ADE20K annotations ({folder})", HINT)
        images = {p.stem: p for p in image_dir.glob("*.jpg")}
        masks = {p.stem: p for p in mask_dir.glob("*.png")}
        super().__init__(
            pair_by_stem(images, masks, image_dir, mask_dir),
            f"ADE20K {folder} ({base})",
            transform,
            ignore_index,
        )
        self.table = label_table(len(CLASS_NAMES) + 1, {0: ignore_index} | {k: k - 1 for k in range(1, 151)})
