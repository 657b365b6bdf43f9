"""The teacher sees the student's exact batch tensor and never changes; levels pair by stride."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from bcd_lightning.callbacks.teacher_guard import state_digest
from bcd_lightning.detection.data import SyntheticDetection, collate
from bcd_lightning.detection.features import FrozenDetector, paired_levels, valid_mask
from bcd_lightning.detection.lit import DetectionModule, DetectionTerm
from bcd_lightning.detection.losses import BoundaryLevels, ContextLevels, FitNetLevels
from bcd_lightning.detection.models import build_detector
from support import TINY_DETECTOR

TINY = TINY_DETECTOR


def tiny_module(teacher_ckpt=None) -> DetectionModule:
    torch.manual_seed(0)
    student = build_detector(dict(backbone="resnet18", fpn_channels=8, **TINY))
    teacher = FrozenDetector(build_detector(dict(backbone="resnet18", fpn_channels=16, **TINY)), teacher_ckpt)
    losses = {
        "boundary": DetectionTerm(BoundaryLevels()),
        "context": DetectionTerm(ContextLevels(strides=[8], max_nodes=16)),
        "fitnet": DetectionTerm(FitNetLevels(), weight=0.5),
    }
    return DetectionModule(student, ["blob_a", "blob_b"], teacher=teacher, losses=losses)


def batch(n: int = 2, size: int = 64):
    data = SyntheticDetection(n, size, seed=3)
    return collate([data[i] for i in range(n)])


def test_teacher_receives_the_students_exact_batch_tensor() -> None:
    module = tiny_module()
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": [], "teacher_transform": []}
    module.model.backbone.register_forward_pre_hook(
        lambda m, a: seen["student"].append(a[0].detach().clone())
    )
    module.teacher.model.backbone.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].clone()))
    module.teacher.model.transform.register_forward_pre_hook(lambda m, a: seen["teacher_transform"].append(1))
    torch.manual_seed(1)
    images, targets = batch()
    # Different sizes in one batch: the student's transform pads them into one tensor.
    images[1] = images[1][:, :48, :56]
    targets[1]["boxes"] = targets[1]["boxes"].clamp(max=47)
    targets[1] = {
        k: v[
            (targets[1]["boxes"][:, 2] - targets[1]["boxes"][:, 0] >= 1)
            & (targets[1]["boxes"][:, 3] - targets[1]["boxes"][:, 1] >= 1)
        ]
        for k, v in targets[1].items()
    }
    loss = module.training_step((images, targets), 0)
    assert torch.isfinite(loss)
    assert len(seen["student"]) == 1 and len(seen["teacher"]) == 1
    assert torch.equal(seen["teacher"][0], seen["student"][0])  # bit-identical, normalised and padded
    assert seen["teacher_transform"] == []  # the teacher's own transform never ran
    # The tensor is the student's normalisation of the raw images (not the raw images themselves).
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(seen["student"][0][0, :, :64, :64], (images[0] - mean) / std)


def test_teacher_weights_and_bn_statistics_never_change() -> None:
    module = tiny_module()
    teacher = module.teacher
    before = state_digest(teacher)
    bn_before = [m.running_mean.clone() for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module.train()  # Lightning calls train() on the module: the teacher must stay in eval
    teacher.train()
    images, targets = batch()
    for _ in range(2):
        optimizer.zero_grad()
        module.training_step((images, targets), 0).backward()
        optimizer.step()
    assert state_digest(teacher) == before
    bn_after = [m.running_mean for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(bn_before, bn_after, strict=True))
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    assert not any(p is q for p in module.parameters() for q in teacher.parameters())  # not optimised
    assert not any(k.startswith("teacher") for k in module.state_dict())  # not checkpointed


def test_strict_teacher_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    teacher = build_detector(dict(backbone="resnet18", fpn_channels=16, **TINY))
    path = tmp_path / "t.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in teacher.state_dict().items()}}, path)
    torch.manual_seed(1)
    loaded = FrozenDetector(build_detector(dict(backbone="resnet18", fpn_channels=16, **TINY)), path)
    assert state_digest(loaded.model) == state_digest(teacher)
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, path)
    with pytest.raises(RuntimeError, match="does not match"):
        FrozenDetector(loaded.model, path)


def test_levels_pair_by_stride_not_key() -> None:
    x = torch.zeros(2, 3, 128, 128)
    il = ImageList(x, [(128, 128), (100, 60)])
    f = lambda c, s: torch.randn(2, c, 128 // s, 128 // s)  # noqa: E731
    student = OrderedDict(a=f(4, 4), b=f(4, 8), c=f(4, 32), d=f(4, 32))  # MobileNet-like: two stride-32
    teacher = OrderedDict(
        [("0", f(8, 4)), ("1", f(8, 8)), ("2", f(8, 16)), ("3", f(8, 32)), ("pool", f(8, 64))]
    )
    s, t = paired_levels(student, teacher, il)
    assert s.strides == t.strides == [4, 8, 32]
    assert s.features[2] is student["d"] and t.features[2] is teacher["3"]
    assert t.features[1] is teacher["1"]
    with pytest.raises(ValueError, match=r"strides \[16\]"):
        paired_levels(student, teacher, il, strides=[16])


def test_valid_mask_excludes_padding() -> None:
    level = torch.zeros(2, 1, 16, 16)  # stride 8 of a 128 x 128 padded batch
    mask = valid_mask([(128, 128), (100, 60)], level, 8)
    assert mask[0].all()
    # row y valid iff 8y < 100 -> y <= 12 (13 rows); col x valid iff 8x < 60 -> x <= 7 (8 cols)
    assert mask[1].sum() == 13 * 8
    assert mask[1, :13, :8].all()


def test_nonfinite_loss_names_the_term() -> None:
    module = tiny_module()
    module.distill_losses["fitnet"].forward = lambda s, t: torch.tensor(float("nan"))
    with pytest.raises(FloatingPointError, match=r"fitnet=nan \(weight 0.5\)"):
        module.training_step(batch(), 0)
