"""Experiment presets of the standard protocol, iteration-based schedules, and `bcd-train data=<name>` on
each dataset's fixture tree."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import fixture_trees as ft
import pytest
import torch

import bcd_lightning
from bcd_lightning import builders
from bcd_lightning.train import train
from bcd_lightning.utils.config_check import ConfigError, check_config
from support import compose_config

CONF = Path(bcd_lightning.__file__).parent / "conf"
PRESETS = sorted(
    f"{p.parent.name}/{p.stem}"
    for d in ("cityscapes", "voc", "ade20k", "camvid")
    for p in (CONF / "experiment" / d).glob("*.yaml")
)
QUIET = (
    "logger=csv",
    "print_config=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
)
TREES = {
    "cityscapes": ft.cityscapes_tree,
    "voc": ft.voc_tree,
    "ade20k": ft.ade20k_tree,
    "camvid": ft.camvid_tree,
}


def test_presets_exist_for_every_dataset_and_student() -> None:
    names = set(PRESETS)
    for ds in ("cityscapes", "voc", "ade20k", "camvid"):
        assert {f"{ds}/teacher_dlv3_r101", f"{ds}/dlv3_r18"} <= names
    assert {"cityscapes/pspnet_r18", "cityscapes/dlv3_mnv2", "voc/pspnet_r18", "camvid/pspnet_r18"} <= names


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_with_the_protocol(preset: str) -> None:
    cfg = compose_config([f"experiment={preset}", "paths.output_dir=x"])
    check_config(cfg)
    dataset = preset.split("/")[0]
    # 40k iterations of SGD 0.02 poly 0.9, wd 1e-4; global batch 16 = 8 GPUs x 2.
    assert cfg.trainer.max_steps == 40000 and cfg.trainer.max_epochs == -1
    assert cfg.trainer.check_val_every_n_epoch is None and cfg.trainer.val_check_interval == 800
    assert cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.get("num_nodes", 1) == 16
    assert (cfg.optimizer._target_, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (
        "torch.optim.SGD",
        0.02,
        1e-4,
    )
    assert (cfg.scheduler.name, cfg.scheduler.power) == ("poly", 0.9)
    crop = {"cityscapes": [512, 1024], "voc": [512, 512], "ade20k": [512, 512], "camvid": [360, 360]}[dataset]
    assert list(cfg.data.train_set.transform.crop_size) == crop
    assert list(cfg.data.train_set.transform.scale_range) == [0.5, 2.0]
    # Offline by default: ImageNet weights are opt-in, and the teacher comes from its checkpoint.
    assert cfg.student.encoder_weights is None and cfg.teacher.model.encoder_weights is None
    assert (cfg.teacher.model.arch, cfg.teacher.model.encoder_name) == ("DeepLabV3", "resnet101")
    assert cfg.teacher.ckpt.endswith(f"teachers/{dataset}_dlv3_r101.ckpt")
    student = preset.split("/")[1]
    expected = {
        "teacher_dlv3_r101": ("DeepLabV3", "resnet101"), "dlv3_r18": ("DeepLabV3", "resnet18"),
        "pspnet_r18": ("PSPNet", "resnet18"), "dlv3_mnv2": ("DeepLabV3", "mobilenet_v2"),
    }  # fmt: skip
    if student in expected:
        assert (cfg.student.arch, cfg.student.encoder_name) == expected[student]
    if student.startswith("teacher"):
        assert cfg.export_best_to == cfg.teacher.ckpt
    if dataset == "voc":
        assert cfg.data.train_set.split == "train_aug"


@pytest.mark.parametrize("student", ["dlv3_r18", "pspnet_r18", "dlv3_mnv2", "dlv3_r101"])
def test_protocol_networks_are_dilated_to_stride_8(student: str) -> None:
    cfg = compose_config([f"student={student}", "data=camvid", "paths.output_dir=x"])
    model = builders.build_model(cfg.student).eval()
    assert model.output_stride == 8 and len(model.stage_channels) == 5
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 11, 64, 64)
    assert out.stages[-1].shape[-2:] == (8, 8)  # last stage at stride 8: the network is dilated


@pytest.mark.parametrize("dataset", sorted(TREES))
def test_bcd_train_fast_dev_run_on_fixture_tree(dataset: str, make_cfg, tmp_path: Path) -> None:
    TREES[dataset](tmp_path / dataset)
    cfg = make_cfg(
        f"data={dataset}",
        f"data.root={tmp_path / dataset}",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.train_set.transform.crop_size=[64,64]",
        "debug=fdr",
        *QUIET,
        fast=False,
    )
    if dataset == "voc":  # the fixture has the plain list too
        cfg.data.train_set.split = "train"
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss/total_step"]))
    assert 0.0 <= metrics["val/mIoU"] <= 1.0


def test_folder_fast_dev_run(make_cfg, tmp_path: Path) -> None:
    from test_folder_dataset import index_tree

    index_tree(tmp_path / "mine")
    cfg = make_cfg(
        "data=folder", f"data.root={tmp_path / 'mine'}", "data.num_workers=0", "data.batch_size=2",
        "data.train_set.transform.crop_size=[64,64]", "debug=fdr", *QUIET, fast=False,
    )  # fmt: skip
    assert train(cfg)["val/mIoU"] >= 0.0


def test_iteration_based_poly_schedule_and_step_validation(make_cfg, tmp_path: Path) -> None:
    """max_steps with max_epochs=-1: the poly schedule spans max_steps and steps every iteration, across
    epochs of 2 batches; validation runs every 3 iterations regardless of epoch boundaries."""
    ft.camvid_tree(tmp_path / "cv")
    for k, stem in enumerate(["0001TP_006750", "0001TP_006780"]):  # 4 training images: 2 batches an epoch
        ft.save_rgb(tmp_path / "cv" / "train" / f"{stem}.png", ft.random_image(k))
        ft.save_index(tmp_path / "cv" / "trainannot" / f"{stem}.png", ft.mask_with_values([0, 11], seed=k))
    cfg = make_cfg(
        "data=camvid", f"data.root={tmp_path / 'cv'}", "data.num_workers=0", "data.batch_size=2",
        "data.train_set.transform.crop_size=[32,32]", "optimizer=sgd", "optimizer.lr=0.02",
        "scheduler=poly", "scheduler.power=0.9", "trainer.max_epochs=-1", "trainer.max_steps=7",
        "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null", "trainer.log_every_n_steps=1",
        "test=false", *QUIET, fast=False,
    )  # fmt: skip
    metrics = train(cfg)
    with open(Path(metrics["output_dir"]) / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    lr_key = next(k for k in rows[0] if k.startswith("lr-"))
    lrs = {int(r["step"]): float(r[lr_key]) for r in rows if r.get(lr_key)}
    assert sorted(lrs) == list(range(7))  # one value per iteration, 7 iterations over 3.5 epochs
    for step, lr in lrs.items():
        assert lr == pytest.approx(0.02 * (1 - step / 7) ** 0.9, rel=1e-6)
    val_steps = sorted({int(r["step"]) for r in rows if r.get("val/mIoU")})
    assert len(val_steps) == 2  # after iterations 3 and 6 (max_steps=7 ends before the next one)


def test_iteration_based_run_needs_max_steps() -> None:
    cfg = compose_config(["trainer.max_epochs=-1", "trainer.max_steps=-1", "paths.output_dir=x"])
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs=-1 .* needs trainer\.max_steps > 0"):
        builders.build_trainer(cfg, [], [])


def test_cli_bad_data_root_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "bcd-train"),
            "data=folder",
            f"data.root={tmp_path / 'missing'}",
            "logger=csv",
        ],
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "COLUMNS": "500"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    # One message (rich may wrap it to the terminal width), naming the missing folder.
    assert done.stderr.count("error:") == 1
    message = " ".join(done.stderr.split())
    assert f"Folder dataset root not found: expected the directory {tmp_path / 'missing'}" in message
