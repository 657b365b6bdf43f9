"""Cityscapes, Pascal VOC, ADE20K and CamVid read from fixture trees in their official layouts, through
their Hydra configs: shapes, dtypes, label mapping against tables written here, ignore handling."""

from __future__ import annotations

import re
from pathlib import Path

import fixture_trees as ft
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException

from bcd_lightning import builders
from bcd_lightning.data import SegDataModule
from bcd_lightning.utils.config_check import check_config
from support import compose_config

IGNORE = 255
#: What a config-built dataset raises for bad data (Hydra wraps it; the CLI prints the inner message).
USER_ERROR = (ValueError, InstantiationException)

# cityscapesScripts helpers/labels.py: (name, id, trainId); trainId 255 or -1 = not evaluated.
CITYSCAPES_LABELS = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5),
    ("polegroup", 18, 255), ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8),
    ("terrain", 22, 9), ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13),
    ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16),
    ("motorcycle", 32, 17), ("bicycle", 33, 18), ("license plate", -1, -1),
]  # fmt: skip


def datamodule(name: str, root: Path, tmp_path: Path, *extra: str) -> SegDataModule:
    overrides = [
        f"data={name}",
        f"data.root={root}",
        f"paths.output_dir={tmp_path / 'out'}",
        "data.num_workers=0",
    ]
    cfg = compose_config([*overrides, *extra])
    check_config(cfg)
    return builders.build_datamodule(cfg)


def check_sample(sample: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
    assert sample["image"].shape == (3, *shape) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == shape and sample["mask"].dtype == torch.int64


def test_cityscapes_label_ids_to_train_ids(tmp_path: Path) -> None:
    written = ft.cityscapes_tree(tmp_path / "cityscapes")
    dm = datamodule("cityscapes", tmp_path / "cityscapes", tmp_path)
    assert dm.num_classes == 19 and len(dm.train_set) == 3 and len(dm.val_set) == 1
    assert dm.class_names[0] == "road" and dm.class_names[18] == "bicycle"
    # Official table, with the licence plate's id -1 as stored in an 8-bit PNG (255).
    expected = {lid % 256: (tid if 0 <= tid < 255 else IGNORE) for _, lid, tid in CITYSCAPES_LABELS}
    [stored] = [m for p, m in written.items() if "/val/" in str(p)]
    sample = dm.val_set[0]
    check_sample(sample, stored.shape)
    want = np.vectorize(expected.__getitem__)(stored)
    assert np.array_equal(sample["mask"].numpy(), want)
    assert set(np.unique(want)) == set(range(19)) | {IGNORE}  # every train id and the ignore value occur
    assert sorted(v for v in expected.values() if v != IGNORE) == list(range(19))
    # Only the *_labelIds files are masks: colour/instance/polygon files do not break pairing.
    assert all(p.name.endswith("_gtFine_labelIds.png") for _, p in dm.train_set.pairs)


def test_cityscapes_train_crops(tmp_path: Path) -> None:
    ft.cityscapes_tree(tmp_path / "cs")
    dm = datamodule(
        "cityscapes",
        tmp_path / "cs",
        tmp_path,
        "data.train_set.transform.crop_size=[32,48]",
        "data.batch_size=2",
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 48) and batch["mask"].shape == (2, 32, 48)
    assert set(batch["mask"].unique().tolist()) <= set(range(19)) | {IGNORE}


def test_voc_palette_pngs_are_read_as_indices(tmp_path: Path) -> None:
    masks = ft.voc_tree(tmp_path / "VOC2012")
    dm = datamodule("voc", tmp_path / "VOC2012", tmp_path)
    assert dm.num_classes == 21 and len(dm.train_set) == 2 and len(dm.val_set) == 1
    sample = dm.val_set[0]
    check_sample(sample, masks["2007_000033"].shape)
    # Stored indices are the classes; 255 (the void border) stays the ignore index.
    assert np.array_equal(sample["mask"].numpy(), masks["2007_000033"])
    assert set(sample["mask"].unique().tolist()) == set(range(21)) | {IGNORE}


def test_voc_sbd_augmented_train_list(tmp_path: Path) -> None:
    masks = ft.voc_tree(tmp_path / "voc")
    dm = datamodule(
        "voc",
        tmp_path / "voc",
        tmp_path,
        "data.train_set.split=train_aug",
        "data.train_set.mask_dir=SegmentationClassAug",
        "data.train_set.transform=null",
    )
    assert [p.stem for p, _ in dm.train_set.pairs] == ["2008_000002", "2007_000032"]
    assert all(m.parent.name == "SegmentationClassAug" for _, m in dm.train_set.pairs)
    assert np.array_equal(dm.train_set[0]["mask"].numpy(), masks["2008_000002"])


def test_ade20k_zero_is_ignored_and_labels_shift(tmp_path: Path) -> None:
    masks = ft.ade20k_tree(tmp_path / "ade")
    dm = datamodule("ade20k", tmp_path / "ade", tmp_path)
    assert dm.num_classes == 150 and len(dm.class_names) == 150 and len(dm.train_set) == 2
    stored = masks["ADE_val_00000001"]
    sample = dm.val_set[0]
    check_sample(sample, stored.shape)
    want = np.where(stored == 0, IGNORE, stored.astype(np.int64) - 1)
    assert np.array_equal(sample["mask"].numpy(), want)
    assert sample["mask"].max() == IGNORE and set(sample["mask"].unique().tolist()) == set(range(150)) | {
        IGNORE
    }


def test_ade20k_root_may_be_the_challenge_folder_itself(tmp_path: Path) -> None:
    ft.ade20k_tree(tmp_path / "ade")
    dm = datamodule("ade20k", tmp_path / "ade" / "ADEChallengeData2016", tmp_path)
    assert len(dm.val_set) == 1


def test_camvid_void_is_ignored_and_test_split_is_separate(tmp_path: Path) -> None:
    masks = ft.camvid_tree(tmp_path / "CamVid")
    dm = datamodule("camvid", tmp_path / "CamVid", tmp_path)
    assert dm.num_classes == 11 and len(dm.train_set) == 2
    assert [p.stem for p, _ in dm.val_set.pairs] == ["0016E5_07959"]
    assert [p.stem for p, _ in dm.test_set.pairs] == ["0001TP_008550"]
    stored = masks["test/0001TP_008550"]
    sample = dm.test_set[0]
    check_sample(sample, stored.shape)
    assert np.array_equal(sample["mask"].numpy(), np.where(stored == 11, IGNORE, stored))


def test_validation_pads_to_the_output_stride_with_ignore(tmp_path: Path) -> None:
    masks = ft.camvid_tree(tmp_path / "cv")
    dm = datamodule("camvid", tmp_path / "cv", tmp_path, "data.val_set.transform.pad_to_multiple=40")
    sample = dm.val_set[0]
    check_sample(sample, (80, 120))  # 64x96 padded up to multiples of 40
    stored = masks["val/0016E5_07959"]
    assert np.array_equal(sample["mask"][:64, :96].numpy(), np.where(stored == 11, IGNORE, stored))
    assert (sample["mask"][64:] == IGNORE).all() and (sample["mask"][:, 96:] == IGNORE).all()
    assert sample["image"][:, 64:].abs().max() < 0.01  # mean colour: ~0 after normalisation


@pytest.mark.parametrize("name", ["cityscapes", "voc", "ade20k", "camvid"])
def test_missing_root_says_where_and_how(name: str, tmp_path: Path) -> None:
    cfg = compose_config([f"data={name}", f"data.root={tmp_path / 'nowhere'}", "paths.output_dir=x"])
    where = re.escape(str(tmp_path / "nowhere"))
    with pytest.raises(USER_ERROR, match=rf"not found: expected the directory {where}\..*data\.root"):
        builders.build_datamodule(cfg)


def test_default_root_comes_from_bcd_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BCD_DATA", str(tmp_path))
    cfg = compose_config(["data=camvid", "paths.output_dir=x"])
    assert cfg.data.root == f"{tmp_path}/camvid" and cfg.data.val_set.root == cfg.data.root


def test_cityscapes_unpaired_image_is_named(tmp_path: Path) -> None:
    ft.cityscapes_tree(tmp_path / "cs")
    extra = tmp_path / "cs" / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000001_000001_leftImg8bit.png"
    ft.save_rgb(extra, ft.random_image(0))
    cfg = compose_config(["data=cityscapes", f"data.root={tmp_path / 'cs'}", "paths.output_dir=x"])
    with pytest.raises(
        USER_ERROR, match=r"2 images .* but 1 masks .*without a mask: frankfurt_000001_000001"
    ):
        builders.build_datamodule(cfg)


def test_voc_out_of_range_value_lists_file_and_values(tmp_path: Path) -> None:
    ft.voc_tree(tmp_path / "voc")
    bad = ft.mask_with_values([0, 1, 21, 254], seed=0)
    ft.save_index(tmp_path / "voc" / "SegmentationClass" / "2007_000033.png", bad, ft.voc_palette())
    dm = datamodule("voc", tmp_path / "voc", tmp_path)
    with pytest.raises(ValueError, match=r"2007_000033\.png has values 21, 254 outside"):
        dm.val_set[0]


def test_voc_list_naming_missing_files(tmp_path: Path) -> None:
    ft.voc_tree(tmp_path / "voc")
    (tmp_path / "voc" / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2099_000001\n")
    cfg = compose_config(["data=voc", f"data.root={tmp_path / 'voc'}", "paths.output_dir=x"])
    with pytest.raises(USER_ERROR, match=r"lists files that do not exist: .*2099_000001\.jpg"):
        builders.build_datamodule(cfg)
