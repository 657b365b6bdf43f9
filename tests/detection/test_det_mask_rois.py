"""Object-level distillation (Mask R-CNN): the teacher's mask head runs on the student's own positive
proposals, without gradients or BN updates, and the RoI losses follow their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bcd_lightning.callbacks.teacher_guard import state_digest
from bcd_lightning.detection.data import SyntheticDetection, collate
from bcd_lightning.detection.features import FrozenDetector, MaskRoIs
from bcd_lightning.detection.lit import DetectionModule, DetectionTerm
from bcd_lightning.detection.losses import BoundaryLevels, BoundaryMaskKD, MaskKD, RoIContext
from bcd_lightning.detection.models import build_detector
from bcd_lightning.distill.functional import self_relation_kl_naive
from support import TINY_DETECTOR

TINY = dict(**TINY_DETECTOR, arch="mask_rcnn", mask_head_layers=[8], mask_dim_reduced=8)


def tiny_module() -> DetectionModule:
    torch.manual_seed(0)
    student = build_detector(dict(backbone="resnet18", fpn_channels=8, **TINY))
    teacher = FrozenDetector(build_detector(dict(backbone="resnet18", fpn_channels=16, **TINY)))
    losses = {
        "boundary": DetectionTerm(BoundaryLevels()),
        "mask_kd": DetectionTerm(MaskKD()),
        "mask_boundary": DetectionTerm(BoundaryMaskKD(tau=2.0)),
        "roi_context": DetectionTerm(RoIContext()),
    }
    return DetectionModule(student, ["blob_a", "blob_b"], teacher=teacher, losses=losses)


def batch(n: int = 2, size: int = 64):
    data = SyntheticDetection(n, size, seed=3, masks=True)
    return collate([data[i] for i in range(n)])


def test_teacher_mask_head_runs_on_the_students_proposals_without_grad_or_bn_updates() -> None:
    module = tiny_module()
    student_heads, teacher = module.model.roi_heads, module.teacher
    assert teacher is not None
    teacher_heads = teacher.model.roi_heads
    seen: dict[str, list] = {"student": [], "teacher": [], "teacher_other": [], "teacher_mode": []}
    student_heads.mask_roi_pool.register_forward_pre_hook(
        lambda m, a: seen["student"].append([p.detach().clone() for p in a[1]])
    )
    teacher_heads.mask_roi_pool.register_forward_pre_hook(
        lambda m, a: seen["teacher"].append([p.clone() for p in a[1]])
    )
    teacher_heads.mask_head.register_forward_pre_hook(
        lambda m, a: seen["teacher_mode"].append((m.training, torch.is_grad_enabled()))
    )
    for name in ("rpn", "roi_heads.box_roi_pool", "roi_heads.box_head", "transform"):
        teacher.model.get_submodule(name).register_forward_pre_hook(
            lambda m, a: seen["teacher_other"].append(1)
        )
    before = state_digest(teacher)
    bn_before = [m.running_mean.clone() for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    module.train()
    teacher.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    images, targets = batch()
    for _ in range(2):
        optimizer.zero_grad()
        loss = module.training_step((images, targets), 0)
        assert loss is not None and torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    assert len(seen["student"]) == len(seen["teacher"]) == 2
    for s, t in zip(seen["student"], seen["teacher"], strict=True):
        assert sum(len(p) for p in s) > 0  # the step had positive RoIs
        assert all(torch.equal(a, b) for a, b in zip(s, t, strict=True))  # exactly the student's proposals
    assert seen["teacher_other"] == []  # no teacher transform, RPN or box head: only backbone + mask head
    assert seen["teacher_mode"] == [(False, False)] * 2  # eval mode, no graph
    assert state_digest(teacher) == before
    bn_after = [m.running_mean for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(bn_before, bn_after, strict=True))
    assert not any(p.requires_grad or p.grad is not None for p in teacher.parameters())


def test_roi_labels_are_the_ones_the_mask_loss_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    module = tiny_module()
    heads = module.model.roi_heads
    sampled: list[torch.Tensor] = []
    original = heads.select_training_samples

    def spy(proposals, targets):
        out = original(proposals, targets)
        sampled.append(torch.cat([lab[lab > 0] for lab in out[2]]))  # labels of the positives, image order
        return out

    monkeypatch.setattr(heads, "select_training_samples", spy)
    captured: list[MaskRoIs] = []
    for loss in module.distill_losses.values():
        loss.register_forward_pre_hook(
            lambda m, a: captured.append(a[0]) if isinstance(a[0], MaskRoIs) else None
        )
    module.training_step(batch(), 0)
    assert captured and torch.equal(captured[0].labels, sampled[0])
    rois = captured[0]
    n = rois.labels.numel()
    assert rois.student_logits.shape == rois.teacher_logits.shape == (n, 28, 28)
    assert rois.student_features.shape == (n, 8, 14, 14) and rois.teacher_features.shape == (n, 8, 14, 14)
    assert rois.student_logits.requires_grad and not rois.teacher_logits.requires_grad


def rois(s_logit: torch.Tensor, t_logit: torch.Tensor, s_feat=None, t_feat=None) -> MaskRoIs:
    n = s_logit.shape[0]
    s_feat = torch.randn(n, 4, 14, 14) if s_feat is None else s_feat
    t_feat = torch.randn(n, 6, 14, 14) if t_feat is None else t_feat
    return MaskRoIs(s_logit, t_logit, s_feat, t_feat, torch.ones(n, dtype=torch.int64))


def bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_mask_kd_is_the_bernoulli_kl_of_the_masks(tau: float) -> None:
    s = torch.zeros(1, 28, 28)
    t = torch.zeros(1, 28, 28)
    t[0, :14] = math.log(3.0)  # p = 0.75 at tau 1 on the top half, 0.5 (= student) elsewhere
    sig = 1 / (1 + math.exp(-math.log(3.0) / tau))
    expected = tau**2 * bernoulli_kl(sig, 0.5) / 2
    assert MaskKD(tau)(rois(s, t)).item() == pytest.approx(expected, rel=1e-5)
    assert MaskKD(tau)(rois(t.clone(), t)).item() == pytest.approx(0.0, abs=1e-7)


def test_boundary_mask_kd_weights_by_the_teachers_roi_boundaries() -> None:
    t_feat = torch.zeros(1, 2, 14, 14)
    t_feat[0, 0, :, :7] = 1.0  # two orthogonal halves: the teacher's boundary is the column pair 6 | 7
    t_feat[0, 1, :, 7:] = 1.0
    t = torch.zeros(1, 28, 28)
    far = t.clone()
    far[0, :, :6] = 3.0  # disagreement only far from the boundary (28 px grid: boundary near x = 13, 14)
    near = t.clone()
    near[0, :, 12:16] = 3.0  # disagreement on the boundary
    loss = BoundaryMaskKD(tau=1.0)
    assert loss(rois(far, t, t_feat=t_feat)).item() == pytest.approx(0.0, abs=1e-6)
    on_boundary = loss(rois(near, t, t_feat=t_feat)).item()
    plain = MaskKD(tau=1.0)(rois(near, t, t_feat=t_feat)).item()
    assert on_boundary > plain > 0  # the weighting concentrates the KD where the teacher sees a boundary


def test_roi_context_is_the_self_relation_kl_inside_each_roi() -> None:
    torch.manual_seed(0)
    s_feat, t_feat = torch.randn(3, 4, 14, 14), torch.randn(3, 6, 14, 14)
    logits = torch.zeros(3, 28, 28)
    got = RoIContext(tau=0.5, grid=(7, 7))(rois(logits, logits, s_feat, t_feat))
    pooled_s, pooled_t = nn.functional.avg_pool2d(s_feat, 2), nn.functional.avg_pool2d(t_feat, 2)
    expected = self_relation_kl_naive(pooled_s, pooled_t, tau=0.5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    same = RoIContext()(rois(logits, logits, t_feat, t_feat))
    assert same.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loss", [MaskKD(), BoundaryMaskKD(), RoIContext()])
def test_no_positive_roi_gives_zero_with_a_graph(loss: nn.Module) -> None:
    s_logit = torch.zeros(0, 28, 28, requires_grad=True)
    s_feat = torch.zeros(0, 4, 14, 14, requires_grad=True)
    out = loss(rois(s_logit, torch.zeros(0, 28, 28), s_feat, torch.zeros(0, 6, 14, 14)))
    assert out.item() == 0.0
    out.backward()
    assert s_logit.grad is not None and s_feat.grad is not None


def test_mask_losses_need_mask_rcnn_on_both_sides() -> None:
    torch.manual_seed(0)
    student = build_detector(dict(backbone="resnet18", fpn_channels=8, **{**TINY, "arch": "faster_rcnn"}))
    teacher = FrozenDetector(build_detector(dict(backbone="resnet18", fpn_channels=16, **TINY)))
    with pytest.raises(ValueError, match=r"distill.losses.mask_kd: .*mask_rcnn"):
        DetectionModule(student, ["a", "b"], teacher=teacher, losses={"mask_kd": DetectionTerm(MaskKD())})


def test_box_only_teacher_of_a_mask_rcnn_student_is_scored_on_boxes(tmp_path) -> None:
    import lightning as L

    from bcd_lightning.detection.data import DetectionDataModule

    torch.manual_seed(0)
    student = build_detector(dict(backbone="resnet18", fpn_channels=8, **TINY))
    teacher = FrozenDetector(
        build_detector(dict(backbone="resnet18", fpn_channels=16, **{**TINY, "arch": "faster_rcnn"}))
    )
    module = DetectionModule(
        student, ["blob_a", "blob_b"], teacher=teacher, losses={"b": DetectionTerm(BoundaryLevels())}
    )
    data = DetectionDataModule(
        SyntheticDetection(4, 64, seed=1, masks=True),
        SyntheticDetection(2, 64, seed=2, masks=True),
        batch_size=2,
    )
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert module.teacher_metric == "map" and module.primary_metric == "mask_map"
    assert "val/teacher_map" in trainer.callback_metrics and "val/mask_map" in trainer.callback_metrics
