"""Tiny dataset trees in each dataset's official on-disk layout (file names, folders, label encodings).

Images are random RGB; masks hold every stored value the format defines (plus the void/ignore value), so
label mapping is exercised completely. Sizes are multiples of 32 so full-resolution validation needs no
padding unless a test asks for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

H, W = 64, 96


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def save_rgb(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def save_index(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    """8-bit single-channel PNG ('L'), or a palette PNG ('P') when ``palette`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8))
    if palette is not None:
        img = img.convert("P")
        img.putpalette(palette)
    img.save(path)


def random_image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return _rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mask_with_values(values: list[int], seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A mask that contains every value of ``values`` (first pixels), the rest drawn from them."""
    m = _rng(seed).choice(np.array(values), size=h * w)
    m[: len(values)] = values
    return m.reshape(h, w)


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (bit-interleaved), 256 RGB triplets flattened."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def cityscapes_tree(root: Path) -> dict[Path, np.ndarray]:
    """leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png + gtFine/... (labelIds, color,
    instanceIds, polygons: the real gtFine folder holds all four). Returns {labelIds file: stored ids}."""
    layout = {
        "train": [("aachen", 0, 19), ("aachen", 1, 19), ("bochum", 0, 313)],
        "val": [("frankfurt", 0, 294)],
    }
    out: dict[Path, np.ndarray] = {}
    for split, frames in layout.items():
        for k, (city, seq, frame) in enumerate(frames):
            stem = f"{city}_{seq:06d}_{frame:06d}"
            image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            gt = root / "gtFine" / split / city
            label = gt / f"{stem}_gtFine_labelIds.png"
            save_rgb(image, random_image(k))
            out[label] = mask_with_values([*range(34), 255], seed=10 + k)  # 255: licence plate (-1)
            save_index(label, out[label])
            save_rgb(gt / f"{stem}_gtFine_color.png", random_image(50 + k))
            save_index(gt / f"{stem}_gtFine_instanceIds.png", mask_with_values([0, 1, 26], seed=k))
            (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
    return out


def voc_tree(root: Path) -> dict[str, np.ndarray]:
    """VOC2012/JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG, 0..20 + 255 border),
    SegmentationClassAug/<id>.png (grey index PNG), ImageSets/Segmentation/{train,val,train_aug}.txt.
    Returns {id: stored mask}."""
    ids = {
        "train": ["2007_000032", "2007_000039"],
        "val": ["2007_000033"],
        "train_aug": ["2008_000002", "2007_000032"],
    }
    values = [*range(21), 255]
    masks: dict[str, np.ndarray] = {}
    for split, names in ids.items():
        for k, name in enumerate(names):
            if name not in masks:
                save_rgb(root / "JPEGImages" / f"{name}.jpg", random_image(k))
                masks[name] = mask = mask_with_values(values, seed=20 + len(masks))
                save_index(root / "SegmentationClass" / f"{name}.png", mask, voc_palette())
                save_index(root / "SegmentationClassAug" / f"{name}.png", mask)
        lists = root / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return masks


def ade20k_tree(root: Path) -> dict[str, np.ndarray]:
    """ADEChallengeData2016/images/{training,validation}/ADE_*.jpg + annotations/.../ADE_*.png (0..150).
    Returns {name: stored mask}."""
    base = root / "ADEChallengeData2016"
    masks: dict[str, np.ndarray] = {}
    for folder, prefix, n in (("training", "ADE_train", 2), ("validation", "ADE_val", 1)):
        for i in range(1, n + 1):
            name = f"{prefix}_{i:08d}"
            save_rgb(base / "images" / folder / f"{name}.jpg", random_image(i))
            masks[name] = mask_with_values(list(range(151)), 30 + i)
            save_index(base / "annotations" / folder / f"{name}.png", masks[name])
    (base / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    return masks


def camvid_tree(root: Path) -> dict[str, np.ndarray]:
    """SegNet CamVid: {train,val,test}/<seq>_<frame>.png + {split}annot/<same name>.png (0..10, 11 void).
    Returns {split/name: stored mask}."""
    masks: dict[str, np.ndarray] = {}
    names = {"train": ["0001TP_006690", "0001TP_006720"], "val": ["0016E5_07959"], "test": ["0001TP_008550"]}
    for split, stems in names.items():
        for k, stem in enumerate(stems):
            save_rgb(root / split / f"{stem}.png", random_image(k))
            masks[f"{split}/{stem}"] = mask_with_values(list(range(12)), 40 + len(masks))
            save_index(root / f"{split}annot" / f"{stem}.png", masks[f"{split}/{stem}"])
    (root / "train.txt").write_text("".join(f"train/{s}.png trainannot/{s}.png\n" for s in names["train"]))
    return masks
