"""The student's transformed batch and FPN levels (hooks), the frozen teacher's backbone on that exact
batch, stride pairing of levels and padding masks.

torchvision detectors run ``images = self.transform(images, targets)`` (normalise, resize, pad into an
``ImageList``), then ``self.backbone(images.tensors)``. The teacher must see exactly the student's batch,
so its own transform is never run (in train mode it may draw the size from the global RNG): only
``teacher.backbone(student_imagelist.tensors)``, under no_grad, in eval mode.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchvision.models.detection.image_list import ImageList

from bcd_lightning.models.teacher import TeacherLoadError, load_checkpoint_file


def has_mask_head(detector: nn.Module) -> bool:
    """Whether a torchvision detector has RoI mask heads (Mask R-CNN)."""
    heads = getattr(detector, "roi_heads", None)
    return heads is not None and getattr(heads, "mask_predictor", None) is not None


@dataclass
class MaskRoIs:
    """The student's positive RoIs of one training step (the ones its mask loss trains on) with both
    models' mask-head outputs on them: ``logits`` ``[N, 28, 28]`` of each RoI's assigned class channel,
    ``features`` ``[N, C, 14, 14]`` the mask head's last conv output (the RoIAlign'ed FPN features after
    the head's convs). The student's carry their graph; the teacher's have none."""

    student_logits: Tensor
    teacher_logits: Tensor
    student_features: Tensor
    teacher_features: Tensor
    labels: Tensor


class FeatureTap:
    """Forward hooks on ``detector.transform`` and ``detector.backbone`` keeping the last batch's
    ``ImageList``, transformed targets and FPN levels (with their graph: the losses backpropagate into
    the student). With ``rois=True`` (Mask R-CNN) also the mask branch's inputs and outputs of the training
    forward: a pre-hook on ``roi_heads.mask_roi_pool`` captures the positive proposals it receives, forward
    hooks the mask head's features and the predictor's logits."""

    def __init__(self, detector: nn.Module, rois: bool = False) -> None:
        self.image_list: ImageList | None = None
        self.targets: list[dict[str, Tensor]] | None = None
        self.features: OrderedDict[str, Tensor] | None = None
        self.proposals: list[Tensor] | None = None
        self.mask_features: Tensor | None = None
        self.mask_logits: Tensor | None = None
        self.rois = bool(rois)
        self._handles: list[RemovableHandle] = [
            detector.get_submodule("transform").register_forward_hook(self._on_transform),
            detector.get_submodule("backbone").register_forward_hook(self._on_backbone),
        ]
        if rois:
            if not has_mask_head(detector):
                raise ValueError("FeatureTap(rois=True) needs a detector with mask heads (arch mask_rcnn)")
            heads = detector.get_submodule("roi_heads")
            self._handles += [
                heads.get_submodule("mask_roi_pool").register_forward_pre_hook(self._on_mask_pool),
                heads.get_submodule("mask_head").register_forward_hook(self._on_mask_head),
                heads.get_submodule("mask_predictor").register_forward_hook(self._on_mask_predictor),
            ]

    def _on_transform(self, module: nn.Module, args: tuple, output: tuple) -> None:
        self.image_list, self.targets = output[0], output[1]

    def _on_backbone(self, module: nn.Module, args: tuple, output: Mapping[str, Tensor]) -> None:
        self.features = OrderedDict(output)

    def _on_mask_pool(self, module: nn.Module, args: tuple) -> None:
        self.proposals = list(args[1])  # (features, proposals, image_shapes)

    def _on_mask_head(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.mask_features = output

    def _on_mask_predictor(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.mask_logits = output

    def clear(self) -> None:
        self.image_list, self.targets, self.features = None, None, None
        self.proposals, self.mask_features, self.mask_logits = None, None, None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class FrozenDetector(nn.Module):
    """A detector teacher that cannot drift: eval-locked (``train(True)`` is ignored, so BatchNorm
    statistics never move), no parameter requires grad, loaded strictly, and only its backbone(+FPN) is
    run during distillation (:meth:`backbone_features`)."""

    def __init__(self, model: nn.Module, checkpoint: str | Path | None = None) -> None:
        super().__init__()
        self.model = model
        if checkpoint is not None:
            self.load_strict(checkpoint)
        self.model.requires_grad_(False)
        super().train(False)

    def load_strict(self, checkpoint: str | Path) -> None:
        raw = load_checkpoint_file(
            checkpoint, "Detection teacher checkpoint", "Train one with `make train-detection`."
        )
        state = raw.get("state_dict", raw) if isinstance(raw, dict) else {}
        if any(k.startswith("model.") for k in state):
            state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        own = self.model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
        if missing or unexpected or mismatched:
            raise TeacherLoadError(
                f"Detection teacher checkpoint {checkpoint} does not match detection.teacher: "
                f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                f"{len(mismatched)} shape mismatches {mismatched[:3]}."
            )
        self.model.load_state_dict(state, strict=True)

    def train(self, mode: bool = True) -> FrozenDetector:
        return super().train(False)

    def backbone_features(self, tensors: Tensor) -> OrderedDict[str, Tensor]:
        """The teacher's FPN levels for the student's padded batch tensor, no graph."""
        with torch.no_grad():
            return OrderedDict(self.model.get_submodule("backbone")(tensors))

    def mask_outputs(
        self,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> tuple[Tensor, Tensor]:
        """The teacher's mask head on given RoIs (the student's proposals) of its own FPN levels, no graph:
        ``(features [N, C, 14, 14], logits [N, K, 28, 28])``."""
        heads = self.model.get_submodule("roi_heads")
        with torch.no_grad():
            pooled = heads.get_submodule("mask_roi_pool")(dict(features), list(proposals), list(image_sizes))
            feats = heads.get_submodule("mask_head")(pooled)
            return feats, heads.get_submodule("mask_predictor")(feats)

    def forward(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Full detection forward (eval): used once to score the teacher, never inside a training step."""
        with torch.no_grad():
            return self.model(list(images))


def backbone_channels(detector: nn.Module) -> int:
    """Width of a torchvision detector's backbone levels (``BackboneWithFPN.out_channels``)."""
    backbone = detector.get_submodule("backbone")
    channels = getattr(backbone, "out_channels", None)
    if not isinstance(channels, int):
        raise TypeError(
            f"detector backbone {type(backbone).__name__} has no int out_channels (an FPN backbone)"
        )
    return channels


def level_stride(input_size: int, level_size: int) -> int:
    """The stride of a level: ``input / level`` rounded to a power of two (odd sizes make ``ceil``
    pooling leave e.g. 800 / 13 = 61.5 for the stride-64 level)."""
    return 2 ** round(math.log2(input_size / level_size))


@dataclass
class Levels:
    """Feature levels of one model on one batch, finest first, with their strides and valid masks.

    ``valid[i]`` is ``[B, h, w]`` bool: False on the padding that ``ImageList`` added to the right and
    bottom of each image (a level position is valid when its top-left input pixel is inside the image).
    """

    features: list[Tensor]
    strides: list[int]
    valid: list[Tensor]

    def at(self, stride: int) -> tuple[Tensor, Tensor]:
        i = self.strides.index(stride)
        return self.features[i], self.valid[i]


def valid_mask(image_sizes: Sequence[tuple[int, int]], level: Tensor, stride: int) -> Tensor:
    h, w = level.shape[-2:]
    ys = torch.arange(h, device=level.device) * stride
    xs = torch.arange(w, device=level.device) * stride
    sizes = torch.tensor([list(s) for s in image_sizes], device=level.device)
    return (ys[None, :, None] < sizes[:, 0, None, None]) & (xs[None, None, :] < sizes[:, 1, None, None])


def by_stride(features: Mapping[str, Tensor], image_list: ImageList) -> dict[int, Tensor]:
    """``stride -> level``; when several levels share a stride (MobileNetV3-FPN returns two stride-32
    levels) the last one, the deepest, represents it. Keys are never used to pair models."""
    height = image_list.tensors.shape[-2]
    out: dict[int, Tensor] = {}
    for feat in features.values():
        out[level_stride(height, feat.shape[-2])] = feat
    return out


def paired_levels(
    student: Mapping[str, Tensor],
    teacher: Mapping[str, Tensor],
    image_list: ImageList,
    strides: Sequence[int] | None = None,
) -> tuple[Levels, Levels]:
    """Student and teacher :class:`Levels` on the strides both have (or ``strides``, each required)."""
    s, t = by_stride(student, image_list), by_stride(teacher, image_list)
    common = sorted(set(s) & set(t))
    if strides is not None:
        missing = [x for x in strides if x not in common]
        if missing:
            raise ValueError(
                f"levels: strides {missing} are not produced by both models (student {sorted(s)}, "
                f"teacher {sorted(t)})"
            )
        common = sorted(int(x) for x in strides)
    if not common:
        raise ValueError(f"levels: student strides {sorted(s)} and teacher strides {sorted(t)} share none")
    sizes = list(image_list.image_sizes)

    def levels(by: dict[int, Tensor]) -> Levels:
        feats = [by[x] for x in common]
        return Levels(
            feats, list(common), [valid_mask(sizes, f, x) for f, x in zip(feats, common, strict=True)]
        )

    return levels(s), levels(t)


def positive_labels(
    detector: nn.Module, proposals: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]
) -> Tensor:
    """The class label of each positive proposal (concatenated over images), by the detector's own
    proposal-to-ground-truth matching: the labels its mask loss selects the logit channel with."""
    heads = detector.get_submodule("roi_heads")
    gt_boxes = [t["boxes"] for t in targets]
    gt_labels = [t["labels"] for t in targets]
    _, labels = heads.assign_targets_to_proposals(list(proposals), gt_boxes, gt_labels)  # type: ignore[operator]
    return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)


def mask_rois(
    tap: FeatureTap, student: nn.Module, teacher: FrozenDetector, teacher_levels: Mapping[str, Tensor]
) -> MaskRoIs:
    """Both models' mask-head outputs on the student's positive RoIs of the step ``tap`` captured."""
    if tap.proposals is None or tap.mask_logits is None or tap.mask_features is None or tap.targets is None:
        raise RuntimeError("mask_rois: the student's training forward did not run its mask branch")
    assert tap.image_list is not None
    labels = positive_labels(student, tap.proposals, tap.targets)
    t_feats, t_logits = teacher.mask_outputs(teacher_levels, tap.proposals, tap.image_list.image_sizes)
    index = torch.arange(labels.numel(), device=labels.device)
    return MaskRoIs(
        student_logits=tap.mask_logits[index, labels],
        teacher_logits=t_logits[index, labels],
        student_features=tap.mask_features,
        teacher_features=t_feats,
        labels=labels,
    )
