"""The baseline presets run end to end; adapters train with the student and stay out of its weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bcd_lightning.builders import build_datamodule, build_module
from bcd_lightning.lit.optim import build_optimizer
from bcd_lightning.models import SegModel
from bcd_lightning.models.teacher import extract_model_state, load_weights_strict
from bcd_lightning.train import train

PRESETS = {
    "cwd": "ChannelWiseDistillation",
    "skd": "PairwiseSimilarityDistillation",
    "ifvd": "IntraClassVariationDistillation",
    "cirkd": "CrossImageRelationDistillation",
    "dist": "DIST",
}
#: What each preset distils (the originals: the head's feature before the classifier at stride 8, or logits).
INPUTS = {"cwd": ("logits", None), "skd": ("decoder", 8), "ifvd": ("decoder", 8), "cirkd": ("decoder", 8)}
#: A CWD term on stage 3 (24 student vs 256 teacher channels): a 1x1 conv adapter is built.
FEATURE_TERM = (
    "+distill.losses.cwd_feat={loss: {_target_: bcd_lightning.distill.ChannelWiseDistillation, "
    "feature: 3, tau: 1.0}, weight: 1.0}"
)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_fast_dev_run(preset: str, make_cfg, teacher_state_file: Path) -> None:
    cfg = make_cfg(
        "experiment=embedded/kd", f"distill={preset}", "debug=fdr", f"teacher.ckpt={teacher_state_file}"
    )
    assert list(cfg.distill.losses) == (["kd", preset] if preset == "cirkd" else [preset])  # CIRKD adds KD
    assert cfg.distill.losses[preset].loss._target_.endswith(PRESETS[preset])
    if preset in INPUTS:
        loss = cfg.distill.losses[preset].loss
        assert (loss.feature, loss.get("avg_pool")) == INPUTS[preset]
    metrics = train(cfg)
    raw = metrics[f"train/loss/{preset}"]
    assert math.isfinite(raw) and raw > 0
    assert metrics[f"train/weight/{preset}"] == cfg.distill.losses[preset].weight


def test_adapters_are_optimised_with_the_student_and_not_part_of_it(
    make_cfg, teacher_state_file: Path
) -> None:
    cfg = make_cfg(
        "experiment=embedded/kd", "distill=cwd", FEATURE_TERM, f"teacher.ckpt={teacher_state_file}"
    )
    module = build_module(cfg, build_datamodule(cfg))
    adapter = module.distill_losses["cwd_feat"].adapter
    assert isinstance(adapter, nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (24, 256)
    assert isinstance(module.distill_losses["cwd"].adapter, nn.Identity)  # logits: same width
    # The optimizer configure_optimizers builds holds the adapter; the student model does not.
    in_optimizer = {
        id(p)
        for group in build_optimizer(module.parameters(), module.optimizer_cfg).param_groups
        for p in group["params"]
    }
    assert all(id(p) in in_optimizer for p in adapter.parameters())
    assert not any(p is q for p in adapter.parameters() for q in module.model.parameters())
    keys = module.state_dict().keys()
    assert {"distill_losses.cwd_feat.adapter.weight", "distill_losses.cwd_feat.adapter.bias"} <= set(keys)
    # The distillation losses of a step (training_step without a Trainer's logging) reach the adapter.
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    out_s, out_t = module.model(batch["image"]), module.teacher(batch["image"])
    sum(loss(out_s, out_t, batch["mask"]) for loss in module.distill_losses.values()).backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0


def test_warmup_schedule_and_export_drop_adapters(make_cfg, teacher_state_file: Path, tmp_path: Path) -> None:
    exported = tmp_path / "student.ckpt"
    cfg = make_cfg(
        "experiment=embedded/kd",
        "distill=cwd",
        FEATURE_TERM,
        "+distill.losses.cwd_feat.schedule={kind: linear_warmup, warmup_steps: 4}",
        f"teacher.ckpt={teacher_state_file}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "test=false",
        f"export_best_to={exported}",
    )
    metrics = train(cfg)
    # Logged at the last step (global_step 1): 1.0 * min(1, 1/4); the constant term keeps its weight.
    assert metrics["train/weight/cwd_feat"] == pytest.approx(0.25)
    assert metrics["train/weight/cwd"] == pytest.approx(3.0)
    ckpt = torch.load(exported, weights_only=True)
    assert any(k.startswith("distill_losses.cwd_feat.adapter.") for k in ckpt["state_dict"])  # resumable
    student_state = extract_model_state(ckpt, str(exported))
    assert not any("adapter" in k or k.startswith("distill_losses") for k in student_state)
    student = SegModel(
        arch="Unet",
        encoder_name="tu-mobilenetv3_small_050",
        num_classes=4,
        decoder_channels=[64, 32, 16, 16, 16],
    )
    load_weights_strict(student, student_state, str(exported))  # exactly the student's keys
