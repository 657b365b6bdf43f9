"""Your own data: any ``images/`` + ``masks/`` tree with a small ``classes.yaml``.

Layout (``root``)::

    classes.yaml
    images/train/a.jpg   masks/train/a.png     # split by sub-folders ...
    images/val/b.jpg     masks/val/b.png
    # ... or flat images/ + masks/ with list files root/train.txt, root/val.txt (one name per line)
    images/test/c.jpg    masks/test/c.png      # optional test split (or root/test.txt): what training's
                                               # test-after-fit and bcd-eval score; without it, val

``classes.yaml``::

    names: [background, road, car]     # class i = names[i]
    ignore_index: 255                  # optional: the value in the mask files meaning "no label"
    palette:                           # optional: masks are RGB colour images, one colour per class
      - [0, 0, 0]
      - [128, 64, 128]
      - [0, 0, 142]
    ignore_colors: [[255, 255, 255]]   # optional (palette masks): colours meaning "no label"

Forgiving about file names: images may be any of .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp (any case), masks
any lossless format (.png/.bmp/.tif/.tiff/.gif); an image and its mask are paired by their path relative
to the split folder, without extension (sub-folders allowed), with an optional ``mask_suffix`` (e.g.
``_mask``). Strict about everything else: an unpaired file, two files with the same name, a size mismatch,
a mask value that is neither a class nor the ignore value, or an RGB colour not in the palette is an error
naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf

from bcd_lightning.data.files import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    DatasetError,
    PairedSegmentation,
    Transform,
    apply_table,
    label_table,
    pair_by_stem,
    read_list_lines,
    read_mask_raw,
    require_dir,
    short_list,
)

HINT = "A folder dataset needs classes.yaml, images/ and masks/ under data.root (see the README)."


def _rgb_code(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colour(value: Any, where: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(c, int) and 0 <= c <= 255 for c in value)
    ):
        raise DatasetError(f"{where}: a colour must be [r, g, b] with integers 0..255, got {value!r}.")
    return int(value[0]), int(value[1]), int(value[2])


class ClassSpec:
    """The parsed ``classes.yaml``: names, ignore value of index masks, palette and ignore colours."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise DatasetError(f"Class file {path} not found. {HINT}")
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except OSError as err:  # unreadable (permissions): say so, not "num_classes has the wrong type"
            raise DatasetError(f"Class file {path} cannot be read: {err.strerror or err}.") from err
        except yaml.YAMLError as err:
            raise DatasetError(f"Class file {path} is not valid YAML: {err}".replace("\n", " ")) from err
        if not isinstance(spec, dict):
            raise DatasetError(f"Class file {path} must be a mapping with a 'names' list.")
        unknown = set(spec) - {"names", "ignore_index", "palette", "ignore_colors"}
        if unknown:
            raise DatasetError(
                f"Class file {path}: unknown key(s) {sorted(unknown)}; valid: names, ignore_index, palette, "
                "ignore_colors."
            )
        names = spec.get("names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"Class file {path}: 'names' must be a non-empty list of class names.")
        if len(set(names)) != len(names):
            raise DatasetError(f"Class file {path}: 'names' has duplicates.")
        self.path = path
        self.names: tuple[str, ...] = tuple(names)
        self.ignore_value = spec.get("ignore_index", 255)
        if not isinstance(self.ignore_value, int) or 0 <= self.ignore_value < len(names):
            raise DatasetError(
                f"Class file {path}: 'ignore_index' = {self.ignore_value!r} must be an integer that is not a "
                f"class index (0..{len(names) - 1})."
            )
        palette = spec.get("palette")
        self.palette: list[tuple[int, int, int]] | None = None
        self.ignore_colors: list[tuple[int, int, int]] = []
        if palette is not None:
            if not isinstance(palette, list) or len(palette) != len(names):
                raise DatasetError(
                    f"Class file {path}: 'palette' must list one [r, g, b] colour per class "
                    f"({len(names)}), got {palette!r}."
                )
            self.palette = [_colour(c, f"Class file {path}, palette") for c in palette]
            self.ignore_colors = [
                _colour(c, f"Class file {path}, ignore_colors") for c in spec.get("ignore_colors") or []
            ]
            colours = self.palette + self.ignore_colors
            if len(set(colours)) != len(colours):
                raise DatasetError(f"Class file {path}: a colour appears twice in palette/ignore_colors.")
        elif spec.get("ignore_colors"):
            raise DatasetError(f"Class file {path}: 'ignore_colors' needs a 'palette'.")


def _index_files(folder: Path, extensions: tuple[str, ...], suffix: str, what: str) -> dict[str, Path]:
    """``{relative path without extension (and suffix): file}``; two files with one key are an error."""
    found: dict[str, Path] = {}
    for path in _walk(folder):
        if not path.is_file() or path.name.startswith("."):
            continue
        ext = path.suffix.lower()
        if ext in (".jpg", ".jpeg") and what == "mask":
            raise DatasetError(
                f"Mask {path} is a JPEG: lossy compression changes label values along edges. Save masks as "
                "PNG (or TIFF/BMP)."
            )
        if ext not in extensions:
            continue
        key = str(path.relative_to(folder).with_suffix(""))
        if suffix:
            if not key.endswith(suffix):
                raise DatasetError(f"Mask {path} does not end with mask_suffix {suffix!r}.")
            key = key[: -len(suffix)]
        if key in found:
            raise DatasetError(f"Two {what} files for one sample: {found[key]} and {path}.")
        found[key] = path
    return found


def _walk(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted; an unreadable folder is an error (``rglob`` skips it silently,
    which reads as "0 images")."""

    def unreadable(err: OSError) -> None:
        raise DatasetError(f"Cannot read the folder {err.filename}: {err.strerror or err}.") from err

    if not os.access(folder, os.R_OK | os.X_OK):
        raise DatasetError(f"Cannot read the folder {folder}: permission denied.")
    files = [Path(d) / n for d, _, names in os.walk(folder, onerror=unreadable) for n in names]
    return sorted(files)


class FolderSegmentation(PairedSegmentation):
    """Images + masks from your own folder; see the module docstring for the layout.

    Args:
        root: folder holding ``classes.yaml``, ``images/`` and ``masks/``.
        split: sub-folder name (``images/<split>``, ``masks/<split>``) or, without such folders, the list
            file ``<root>/<split>.txt`` naming samples of the flat ``images/`` and ``masks/``.
        list_file: an explicit list file (relative to ``root`` or absolute) instead of the above.
        mask_suffix: text after the image name in mask names (``a.jpg`` <-> ``a_mask.png``: ``_mask``).
        classes_file: the class file, relative to ``root`` (or absolute).
        transform: joint transform (see :mod:`bcd_lightning.data.transforms`).
        ignore_index: class index given to unlabelled pixels in the returned masks.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        list_file: str | None = None,
        mask_suffix: str = "",
        classes_file: str = "classes.yaml",
        transform: Transform | None = None,
        ignore_index: int = 255,
    ) -> None:
        base = require_dir(Path(root).expanduser(), "Folder dataset root", HINT)
        self.spec = ClassSpec(base / classes_file)
        self.class_names = self.spec.names
        if 0 <= ignore_index < len(self.class_names):
            raise DatasetError(
                f"ignore_index={ignore_index} is a class index (classes 0..{len(self.class_names) - 1})."
            )
        image_root = require_dir(base / "images", "Folder dataset images", HINT)
        mask_root = require_dir(base / "masks", "Folder dataset masks", HINT)
        if list_file is None and (image_root / split).is_dir():
            image_dir = image_root / split
            mask_dir = require_dir(mask_root / split, f"Masks of split {split!r}", HINT)
            images = _index_files(image_dir, IMAGE_EXTENSIONS, "", "image")
            masks = _index_files(mask_dir, MASK_EXTENSIONS, mask_suffix, "mask")
            pairs = pair_by_stem(images, masks, image_dir, mask_dir)
        else:
            listed = base / (list_file or f"{split}.txt")
            if not listed.is_file():
                raise DatasetError(
                    f"Split {split!r} not found under {base}: expected images/{split}/ and masks/{split}/, "
                    f"or a list file {listed.name} naming samples of images/ and masks/."
                )
            pairs = self._pairs_from_list(listed, image_root, mask_root, mask_suffix)
        super().__init__(pairs, f"Folder {split} ({base})", transform, ignore_index)
        if self.spec.palette is None:
            mapping = {i: i for i in range(len(self.class_names))} | {self.spec.ignore_value: ignore_index}
            self.table = label_table(max(mapping) + 1, mapping)
        else:
            codes = [_rgb_code(np.array(c)) for c in self.spec.palette + self.spec.ignore_colors]
            targets = list(range(len(self.class_names))) + [ignore_index] * len(self.spec.ignore_colors)
            order = np.argsort(codes)
            self._codes = np.array(codes, dtype=np.int64)[order]
            self._targets = np.array(targets, dtype=np.int64)[order]

    @staticmethod
    def _pairs_from_list(
        listed: Path, image_root: Path, mask_root: Path, suffix: str
    ) -> list[tuple[Path, Path]]:
        names = read_list_lines(listed)
        images = _index_files(image_root, IMAGE_EXTENSIONS, "", "image")
        masks = _index_files(mask_root, MASK_EXTENSIONS, suffix, "mask")
        pairs, missing = [], []
        for name in names:
            key = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name
            if key not in images or key not in masks:
                missing.append(f"{name} ({'no image' if key not in images else 'no mask'})")
            else:
                pairs.append((images[key], masks[key]))
        if missing:
            raise DatasetError(f"Split list {listed} names samples that are missing: {short_list(missing)}.")
        return pairs

    def decode_mask(self, path: Path) -> np.ndarray:
        raw, mode = read_mask_raw(path)
        if self.spec.palette is None:
            if raw.ndim == 3:
                raise DatasetError(
                    f"Mask {path} is an RGB image but {self.spec.path.name} has no 'palette': add one colour "
                    "per class there, or save masks as single-channel index images."
                )
            allowed = f"classes 0..{len(self.class_names) - 1} and ignore {self.spec.ignore_value}"
            return apply_table(raw, self.table, path, allowed)
        if raw.ndim == 2:
            if mode == "P":  # a palette PNG: compare its colours
                from PIL import Image

                with Image.open(path) as img:
                    raw = np.asarray(img.convert("RGB"))
            else:
                raise DatasetError(
                    f"Mask {path} is single-channel but {self.spec.path.name} has a 'palette': save colour "
                    "masks, or remove the palette to read index masks."
                )
        codes = _rgb_code(raw[..., :3])
        pos = np.clip(np.searchsorted(self._codes, codes), 0, len(self._codes) - 1)
        known = self._codes[pos] == codes
        if not known.all():
            bad = np.unique(codes[~known])
            colours = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in bad]
            raise DatasetError(
                f"Mask {path} has colours not in the palette of {self.spec.path}: {short_list(colours)}."
            )
        return self._targets[pos]


def _num_classes_of(root: str, classes_file: str = "classes.yaml") -> int:
    """Class count of a folder dataset for ``${folder_num_classes:${data.root}}`` in configs.

    Lenient on purpose: a missing or invalid class file yields 1 here, and building the dataset (before any
    model) then raises the precise error; a config resolver that raises is reported as a confusing type
    error by the config checker instead.
    """
    try:
        return len(ClassSpec(Path(root).expanduser() / classes_file).names)
    except DatasetError:
        return 1


OmegaConf.register_new_resolver("folder_num_classes", _num_classes_of, replace=True)


def has_split(root: str, split: str, list_file: str | None = None) -> bool:
    """Whether ``root`` holds ``split``: ``images/<split>/`` or the list file (``<split>.txt`` by default)."""
    base = Path(root).expanduser()
    if list_file is None and (base / "images" / split).is_dir():
        return True
    return (base / (list_file or f"{split}.txt")).is_file()


def optional_split(root: str, split: str = "test", list_file: str | None = None, **kwargs: Any) -> Any:
    """The folder's ``split`` as a :class:`FolderSegmentation`, or ``None`` when the folder has no such
    split (then the datamodule tests on the validation split). For ``data.test_set`` of ``data=folder``."""
    if not has_split(root, split, list_file):
        return None
    return FolderSegmentation(root, split=split, list_file=list_file, **kwargs)
