"""FolderSegmentation: index and RGB palette masks, sub-folder and list-file splits, and every bad input
named in one line."""

from __future__ import annotations

import re
from pathlib import Path

import fixture_trees as ft
import numpy as np
import pytest
import yaml
from hydra.errors import InstantiationException

from bcd_lightning import builders
from bcd_lightning.data import DatasetError, FolderSegmentation, SegDataModule
from bcd_lightning.utils.config_check import check_config
from support import compose_config

USER_ERROR = (ValueError, InstantiationException)
PALETTE = [[0, 0, 0], [128, 64, 128], [0, 0, 142]]
IGNORE_COLOUR = [255, 255, 255]


def write_classes(root: Path, **spec: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["background", "road", "car"], **spec}))


def index_tree(root: Path) -> dict[str, np.ndarray]:
    """images/{train,val} + masks/{train,val}; mixed image extensions, a nested sub-folder, stored ignore
    value 9 (classes.yaml), mask_suffix-free names. Returns {split/key: stored mask}."""
    write_classes(root, ignore_index=9)
    files = {"train": ["a.jpg", "b.JPEG", "sub/c.png"], "val": ["d.tif"]}
    masks = {}
    for split, names in files.items():
        for k, name in enumerate(names):
            key = str(Path(name).with_suffix(""))
            ft.save_rgb(root / "images" / split / name, ft.random_image(k))
            masks[f"{split}/{key}"] = ft.mask_with_values([0, 1, 2, 9], seed=k + 5 * len(masks))
            ft.save_index(root / "masks" / split / f"{key}.png", masks[f"{split}/{key}"])
    return masks


def palette_tree(root: Path) -> dict[str, np.ndarray]:
    """Flat images/ + masks/ with RGB colour masks and list files train.txt / val.txt."""
    write_classes(root, palette=PALETTE, ignore_colors=[IGNORE_COLOUR])
    colours = np.array([*PALETTE, IGNORE_COLOUR], dtype=np.uint8)
    classes = {}
    for k, name in enumerate(["x1", "x2", "x3"]):
        ft.save_rgb(root / "images" / f"{name}.png", ft.random_image(k))
        classes[name] = ft.mask_with_values([0, 1, 2, 3], seed=k)  # 3 = the ignore colour
        ft.save_rgb(root / "masks" / f"{name}.png", colours[classes[name]])
    (root / "train.txt").write_text("x1\nx2.png\n\n# a comment\n")
    (root / "val.txt").write_text("x3\n")
    return classes


def folder_dm(root: Path, *extra: str) -> SegDataModule:
    cfg = compose_config(
        [
            "data=folder",
            f"data.root={root}",
            "paths.output_dir=x",
            "data.num_workers=0",
            "data.batch_size=2",
            *extra,
        ]
    )
    check_config(cfg)
    return builders.build_datamodule(cfg)


def test_index_masks_with_subfolder_splits(tmp_path: Path) -> None:
    masks = index_tree(tmp_path / "mine")
    dm = folder_dm(tmp_path / "mine")
    assert dm.num_classes == 3 and dm.class_names == ["background", "road", "car"]
    assert len(dm.train_set) == 3 and len(dm.val_set) == 1
    assert sorted(str(p.relative_to(tmp_path / "mine" / "images" / "train")) for p, _ in dm.train_set.pairs) == [
        "a.jpg", "b.JPEG", "sub/c.png",
    ]  # fmt: skip
    sample = dm.val_set[0]
    stored = masks["val/d"]
    assert sample["image"].shape == (3, *stored.shape) and sample["mask"].dtype.is_floating_point is False
    # Stored 9 is classes.yaml's ignore value: it becomes data.ignore_index (255); classes stay.
    assert np.array_equal(sample["mask"].numpy(), np.where(stored == 9, 255, stored))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[0] == 2 and set(batch["mask"].unique().tolist()) <= {0, 1, 2, 255}


def test_rgb_palette_masks_with_list_files(tmp_path: Path) -> None:
    classes = palette_tree(tmp_path / "rgb")
    dm = folder_dm(tmp_path / "rgb")
    assert dm.num_classes == 3
    assert [p.stem for p, _ in dm.train_set.pairs] == ["x1", "x2"]
    assert [p.stem for p, _ in dm.val_set.pairs] == ["x3"]
    assert np.array_equal(dm.val_set[0]["mask"].numpy(), np.where(classes["x3"] == 3, 255, classes["x3"]))


def test_mask_suffix_and_explicit_list_file(tmp_path: Path) -> None:
    root = tmp_path / "suffix"
    write_classes(root)
    for k, name in enumerate(["p", "q"]):
        ft.save_rgb(root / "images" / f"{name}.jpg", ft.random_image(k))
        ft.save_index(root / "masks" / f"{name}_mask.png", ft.mask_with_values([0, 2], seed=k))
    (root / "lists").mkdir()
    (root / "lists" / "all.txt").write_text("p\nq\n")
    ds = FolderSegmentation(str(root), list_file="lists/all.txt", mask_suffix="_mask", transform=None)
    assert [(i.name, m.name) for i, m in ds.pairs] == [("p.jpg", "p_mask.png"), ("q.jpg", "q_mask.png")]


def test_num_classes_comes_from_classes_yaml(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    cfg = compose_config(["data=folder", f"data.root={tmp_path / 'd'}", "paths.output_dir=x"])
    assert cfg.data.num_classes == 3 and cfg.student.num_classes == 3


def test_num_classes_override_disagreeing_with_classes_yaml(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    with pytest.raises(USER_ERROR, match=r"data\.num_classes=5 but the training set .* has 3 classes"):
        folder_dm(tmp_path / "d", "data.num_classes=5")


# --- bad input: one clear error naming the file or key ----------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(
        USER_ERROR, match=rf"not found: expected the directory {re.escape(str(tmp_path))}/nope"
    ):
        folder_dm(tmp_path / "nope")


def test_missing_classes_yaml(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    (tmp_path / "d" / "classes.yaml").unlink()
    with pytest.raises(USER_ERROR, match=r"Class file .*classes\.yaml not found"):
        folder_dm(tmp_path / "d")


def test_image_without_mask_is_named(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    ft.save_rgb(tmp_path / "d" / "images" / "train" / "extra.jpg", ft.random_image(0))
    with pytest.raises(USER_ERROR, match=r"4 images in .* but 3 masks .*images without a mask: extra\.jpg"):
        folder_dm(tmp_path / "d")


def test_mask_without_image_is_named(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    ft.save_index(tmp_path / "d" / "masks" / "val" / "ghost.png", ft.mask_with_values([0], seed=0))
    with pytest.raises(USER_ERROR, match=r"masks without an image: ghost\.png"):
        folder_dm(tmp_path / "d")


def test_two_images_with_one_name(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    ft.save_rgb(tmp_path / "d" / "images" / "train" / "a.png", ft.random_image(0))
    with pytest.raises(USER_ERROR, match=r"Two image files for one sample: .*a\.jpg and .*a\.png"):
        folder_dm(tmp_path / "d")


def test_jpeg_mask_is_refused(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    ft.save_rgb(tmp_path / "d" / "masks" / "train" / "z.jpg", ft.random_image(0))
    with pytest.raises(USER_ERROR, match=r"Mask .*z\.jpg is a JPEG"):
        folder_dm(tmp_path / "d")


def test_size_mismatch_is_named(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    ft.save_index(tmp_path / "d" / "masks" / "val" / "d.png", ft.mask_with_values([0, 1], seed=0, h=32, w=32))
    dm = folder_dm(tmp_path / "d")
    with pytest.raises(DatasetError, match=r"Image .*d\.tif is 96x64 \(WxH\) but its mask .*d\.png is 32x32"):
        dm.val_set[0]


def test_mask_value_outside_classes_lists_file_and_values(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    ft.save_index(tmp_path / "d" / "masks" / "val" / "d.png", ft.mask_with_values([0, 1, 3, 255, 7], seed=0))
    dm = folder_dm(tmp_path / "d")
    with pytest.raises(
        DatasetError,
        match=r"d\.png has values 3, 7, 255 outside the label set \(classes 0\.\.2 and ignore 9\)",
    ):
        dm.val_set[0]


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    (tmp_path / "d" / "images" / "val" / "d.tif").write_bytes(b"not an image at all")
    dm = folder_dm(tmp_path / "d")
    with pytest.raises(DatasetError, match=r"Cannot read image .*d\.tif"):
        dm.val_set[0]


@pytest.mark.parametrize("how", ["folders", "list"])
def test_empty_split(tmp_path: Path, how: str) -> None:
    root = tmp_path / "d"
    write_classes(root)
    if how == "folders":
        (root / "images" / "train").mkdir(parents=True)
        (root / "masks" / "train").mkdir(parents=True)
        match = r"Folder train .* the split is empty"
    else:
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir(parents=True)
        (root / "train.txt").write_text("# nothing yet\n")
        match = r"Split list .*train\.txt is empty"
    with pytest.raises(DatasetError, match=match):
        FolderSegmentation(str(root), split="train")


def test_missing_split(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    with pytest.raises(
        DatasetError, match=r"Split 'test' not found .* images/test/ and masks/test/, or .*test\.txt"
    ):
        FolderSegmentation(str(tmp_path / "d"), split="test")


def test_palette_colour_not_in_classes_yaml(tmp_path: Path) -> None:
    palette_tree(tmp_path / "rgb")
    bad = np.zeros((ft.H, ft.W, 3), dtype=np.uint8)
    bad[0, 0] = [1, 2, 3]
    bad[5, 5] = [128, 64, 129]
    ft.save_rgb(tmp_path / "rgb" / "masks" / "x3.png", bad)
    dm = folder_dm(tmp_path / "rgb")
    with pytest.raises(
        DatasetError, match=r"x3\.png has colours not in the palette .*\(1, 2, 3\), \(128, 64, 129\)"
    ):
        dm.val_set[0]


def test_rgb_mask_without_palette(tmp_path: Path) -> None:
    index_tree(tmp_path / "d")
    ft.save_rgb(tmp_path / "d" / "masks" / "val" / "d.png", ft.random_image(0))
    dm = folder_dm(tmp_path / "d")
    with pytest.raises(DatasetError, match=r"d\.png is an RGB image but classes\.yaml has no 'palette'"):
        dm.val_set[0]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"names": []}, "'names' must be a non-empty list"),
        ({"names": ["a", "a"]}, "duplicates"),
        (
            {"names": ["a", "b"], "ignore_index": 1},
            "'ignore_index' = 1 must be an integer that is not a class",
        ),
        ({"names": ["a", "b"], "palette": [[0, 0, 0]]}, "'palette' must list one"),
        ({"names": ["a", "b"], "palette": [[0, 0, 0], [0, 0, 300]]}, r"\[r, g, b\] with integers 0\.\.255"),
        ({"names": ["a"], "colours": 1}, r"unknown key\(s\) \['colours'\]"),
    ],
)
def test_bad_classes_yaml_is_named(tmp_path: Path, spec: dict, match: str) -> None:
    index_tree(tmp_path / "d")
    (tmp_path / "d" / "classes.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match=match):
        FolderSegmentation(str(tmp_path / "d"))
