"""Image/mask file pairs on disk: reading with Pillow, label mapping, and the checks every dataset shares.

Every real dataset (Cityscapes, VOC, ADE20K, CamVid, folder) is a list of ``(image, mask)`` paths plus a
lookup table from the values stored in its mask files to training class indices. Pairing and counts are
checked when the dataset is built; sizes and mask values are checked when a sample is loaded (cheap: one
comparison and one table lookup), so a bad file fails with one line naming it instead of a silent wrong
label or a cryptic collate error deep in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from bcd_lightning.utils.config_check import ConfigError

#: Value of a lookup table entry for a stored mask value the dataset does not define.
INVALID = -1
#: Extensions accepted for images and for masks (lower case). JPEG masks are refused on purpose: lossy
#: compression invents label values along every edge.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")

Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class DatasetError(ConfigError):
    """Bad data on disk (missing root, unpaired files, wrong sizes or label values); names the file."""


def require_dir(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is a directory, else a :class:`DatasetError` saying what was expected there."""
    if not path.is_dir():
        raise DatasetError(f"{what} not found: expected the directory {path}. {hint}")
    return path


def short_list(items: Sequence[object], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in list(items)[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def label_table(size: int, mapping: dict[int, int]) -> np.ndarray:
    """A lookup table ``stored value -> class index`` of ``size`` entries, :data:`INVALID` elsewhere."""
    table = np.full(size, INVALID, dtype=np.int64)
    for stored, target in mapping.items():
        table[stored] = target
    return table


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``; any Pillow-readable file (greyscale, palette and RGBA are converted)."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))  # a writable copy: torch.from_numpy needs one
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(f"Cannot read image {path}: {err}") from err


def read_mask_raw(path: Path) -> tuple[np.ndarray, str]:
    """The stored mask values (palette PNGs give their indices) and the Pillow mode."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("RGBA", "LA", "CMYK", "YCbCr", "HSV", "LAB"):
                return np.asarray(img.convert("RGB")), "RGB"
            return np.asarray(img), mode
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(f"Cannot read mask {path}: {err}") from err


def apply_table(raw: np.ndarray, table: np.ndarray, path: Path, allowed: str) -> np.ndarray:
    """Map stored values through ``table``; values it does not define are an error listing them."""
    if raw.ndim != 2:
        raise DatasetError(
            f"Mask {path} has shape {raw.shape}: expected a single-channel index image ({allowed})."
        )
    values = raw.astype(np.int64, copy=False)
    inside = (values >= 0) & (values < len(table))
    mapped = table[np.where(inside, values, 0)]
    bad = ~inside | (mapped == INVALID)
    if bad.any():
        found = np.unique(values[bad]).tolist()
        raise DatasetError(f"Mask {path} has values {short_list(found)} outside the label set ({allowed}).")
    return mapped


class PairedSegmentation(Dataset):
    """``(image, mask)`` file pairs -> ``{"image": float32 [3, H, W], "mask": int64 [H, W]}``.

    Subclasses build the pairs and implement :meth:`decode_mask` (stored values -> class indices, with
    ``ignore_index`` for unlabelled pixels). ``transform(image, mask)`` receives a uint8 ``[3, H, W]``
    image and an int64 ``[H, W]`` mask and must return the normalised float image and the mask; without
    one, the image is only scaled to [0, 1] and ImageNet-normalised.
    """

    class_names: tuple[str, ...] = ()
    #: stored mask value -> class index (see :func:`label_table`), set by subclasses.
    table: np.ndarray
    #: the stored values a mask may hold, for error messages.
    label_description: str = ""
    #: why an RGB mask is wrong for this dataset, for error messages.
    rgb_mask_hint: str = "masks must be single-channel index images."

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        name: str,
        transform: Transform | None = None,
        ignore_index: int = 255,
    ) -> None:
        if not pairs:
            raise DatasetError(f"{name}: the split is empty (no image/mask pairs found).")
        self.pairs = list(pairs)
        self.name = name
        self.transform = transform
        self.ignore_index = ignore_index

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def decode_mask(self, path: Path) -> np.ndarray:
        """Stored values of the index mask at ``path`` -> class indices (``ignore_index`` where unlabelled)."""
        raw, _ = read_mask_raw(path)
        if raw.ndim == 3:
            raise DatasetError(f"Mask {path} is an RGB image: {self.rgb_mask_hint}")
        return apply_table(raw, self.table, path, self.label_description)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        """(uint8 image [3, H, W], int64 mask [H, W]) before any transform."""
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = self.decode_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"Image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]}: every mask must have its image's size."
            )
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        return image_t, torch.from_numpy(np.ascontiguousarray(mask))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, mask = self.load(index)
        if self.transform is None:
            from bcd_lightning.data.transforms import normalize

            return {"image": normalize(image), "mask": mask}
        image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {len(self)} samples)"


def pair_by_stem(
    images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path
) -> list[tuple[Path, Path]]:
    """Pairs of files sharing a key, in sorted key order; any unmatched file is an error naming it."""
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images or lonely_masks:
        parts = [f"{len(images)} images in {image_dir} but {len(masks)} masks in {mask_dir}"]
        if lonely_images:
            parts.append(f"images without a mask: {short_list([images[k].name for k in lonely_images])}")
        if lonely_masks:
            parts.append(f"masks without an image: {short_list([masks[k].name for k in lonely_masks])}")
        raise DatasetError("Image/mask mismatch: " + "; ".join(parts) + ".")
    return [(images[k], masks[k]) for k in sorted(images)]


def read_list_lines(path: Path) -> list[str]:
    """The entries of a split list, one per line; blank lines and ``#`` comments skipped."""
    if not path.is_file():
        raise DatasetError(f"Split list {path} not found.")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DatasetError(f"Split list {path} is empty.")
    return lines


def read_list_file(path: Path) -> list[str]:
    """Sample ids from a split list (:func:`read_list_lines`). A line with several fields
    (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``) gives the stem of its first field."""
    return [
        Path(line.split()[0]).with_suffix("").name if " " in line or "/" in line else line
        for line in read_list_lines(path)
    ]
