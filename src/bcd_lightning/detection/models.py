"""torchvision FPN detectors by config, from scratch (no download), with trainable BatchNorm.

torchvision's high-level builders (``fasterrcnn_resnet50_fpn`` ...) download weights by default and
their backbone helpers (``resnet_fpn_backbone``, ``mobilenet_backbone``) default to FrozenBatchNorm
with few trainable layers and a fixed 256-channel FPN, which is wrong from scratch and heavy on CPU. So
the backbone is built here from the classification network (``weights=None``, ``nn.BatchNorm2d``, every
layer trainable) and torchvision's public ``BackboneWithFPN``, and the detector class is instantiated
directly with the sampling sizes and anchors of the config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

ARCHS = ("faster_rcnn", "mask_rcnn", "retinanet", "fcos")
#: Two-stage archs: an RPN and RoI heads on FPN levels "0".."3" + "pool" (no P6/P7).
TWO_STAGE = ("faster_rcnn", "mask_rcnn")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v3_small", "mobilenet_v3_large")


@dataclass
class DetectorConfig:
    """One detector. ``num_classes`` counts the background (torchvision's convention: labels 1..K).

    ``returned_layers``: backbone stages fed to the FPN (ResNet: 1..4 = strides 4..32; MobileNetV3: the
    stage indices of torchvision's extractor); ``None``: ResNet [1, 2, 3, 4] (Faster R-CNN) or [2, 3, 4]
    (RetinaNet/FCOS, + P6/P7), MobileNetV3 its last two stages. ``anchor_base``: the anchor size of the
    finest FPN level, doubled per level (COCO: 32). ``min_size``/``max_size``: the detector's resize.
    The sampling sizes are torchvision's defaults unless set (smaller ones make CPU steps ~6x cheaper).
    """

    arch: str = "faster_rcnn"
    backbone: str = "resnet18"
    num_classes: int = 3
    fpn_channels: int = 256
    returned_layers: list[int] | None = None
    anchor_base: int = 32
    min_size: int = 800
    max_size: int = 1333
    width_mult: float = 1.0  # MobileNetV3 only
    #: torchvision weights name of the classification backbone (e.g. ``IMAGENET1K_V1``, a download, as the
    #: peers' COCO protocol uses); ``None`` (default): from scratch, nothing downloaded.
    backbone_weights: str | None = None
    detections_per_img: int = 100
    rpn_batch_size_per_image: int = 256
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    #: Two-stage archs: width of the box head's two fully connected layers (torchvision: 1024; its first
    #: layer, C·7·7 × width, is most of a small detector's step on CPU).
    box_representation_size: int = 1024
    #: Mask R-CNN only: widths of the mask head's 3x3 convs on the 14x14 RoI features (torchvision's
    #: default four 256-wide layers; the embedded presets use two narrow ones) and of its upsampling layer.
    mask_head_layers: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    mask_dim_reduced: int = 256
    extra: dict = field(default_factory=dict)  # passed to the detector class as keyword arguments

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"detector arch={self.arch!r} is not one of {ARCHS}")
        if self.backbone not in RESNETS + MOBILENETS:
            raise ValueError(f"detector backbone={self.backbone!r} is not one of {RESNETS + MOBILENETS}")
        if self.arch == "fcos" and self.fpn_channels % 32:
            raise ValueError(
                f"detector fpn_channels={self.fpn_channels}: FCOS's GroupNorm(32) needs a multiple of 32"
            )
        if self.box_representation_size < 1:
            raise ValueError(f"detector box_representation_size={self.box_representation_size} must be >= 1")
        if not self.mask_head_layers or min(self.mask_head_layers) < 1 or self.mask_dim_reduced < 1:
            raise ValueError(
                f"detector mask_head_layers={self.mask_head_layers} / mask_dim_reduced={self.mask_dim_reduced}: "
                "need at least one layer, every width >= 1"
            )
        if self.num_classes < 2:
            raise ValueError(f"detector num_classes={self.num_classes} must count the background (>= 2)")


def _resnet_body(cfg: DetectorConfig, p6p7: bool) -> BackboneWithFPN:
    # weights=None (default): no download; nn.BatchNorm2d: trainable statistics (torchvision's FPN helpers default
    # to FrozenBatchNorm2d, which freezes the random init from scratch); every layer keeps requires_grad.
    net = getattr(tvm, cfg.backbone)(weights=cfg.backbone_weights, norm_layer=nn.BatchNorm2d)
    layers = cfg.returned_layers or ([2, 3, 4] if p6p7 else [1, 2, 3, 4])
    if min(layers) < 1 or max(layers) > 4:
        raise ValueError(f"detector returned_layers={layers}: ResNet stages are 1..4")
    widths = {1: net.layer1, 2: net.layer2, 3: net.layer3, 4: net.layer4}
    in_channels = [_out_channels(widths[k]) for k in layers]
    extra = LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels) if p6p7 else LastLevelMaxPool()
    return BackboneWithFPN(
        net, {f"layer{k}": str(i) for i, k in enumerate(layers)}, in_channels, cfg.fpn_channels, extra
    )


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    bn = last.get_submodule("bn3" if hasattr(last, "bn3") else "bn2")  # Bottleneck / BasicBlock
    assert isinstance(bn, nn.BatchNorm2d)  # the bodies are built with norm_layer=nn.BatchNorm2d
    return bn.num_features


def _mobilenet_body(cfg: DetectorConfig, p6p7: bool) -> BackboneWithFPN:
    net = getattr(tvm, cfg.backbone)(
        weights=cfg.backbone_weights, norm_layer=nn.BatchNorm2d, width_mult=cfg.width_mult
    )
    features = net.features
    # Same stage bookkeeping as torchvision's _mobilenet_extractor: the strided blocks start the stages.
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    layers = cfg.returned_layers or [len(stages) - 2, len(stages) - 1]
    if min(layers) < 0 or max(layers) >= len(stages):
        raise ValueError(f"detector returned_layers={layers}: {cfg.backbone} stages are 0..{len(stages) - 1}")
    in_channels = [features[stages[k]].out_channels for k in layers]
    extra = LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels) if p6p7 else LastLevelMaxPool()
    return BackboneWithFPN(
        features, {str(stages[k]): str(i) for i, k in enumerate(layers)}, in_channels, cfg.fpn_channels, extra
    )


def build_backbone(cfg: DetectorConfig) -> BackboneWithFPN:
    p6p7 = cfg.arch not in TWO_STAGE
    return _resnet_body(cfg, p6p7) if cfg.backbone in RESNETS else _mobilenet_body(cfg, p6p7)


def _num_levels(backbone: nn.Module) -> int:
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        n = len(backbone(torch.zeros(1, 3, 64, 64)))
        backbone.train(was)
    return n


def _anchors(cfg: DetectorConfig, levels: int, scales: Sequence[float]) -> AnchorGenerator:
    sizes = tuple(tuple(round(cfg.anchor_base * 2**i * s) for s in scales) for i in range(levels))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels)


def build_detector(cfg: DetectorConfig | Mapping[str, Any]) -> nn.Module:
    """A torchvision detector in train mode: ``model(images, targets)`` gives losses, eval gives boxes."""
    if not isinstance(cfg, DetectorConfig):
        cfg = DetectorConfig(**dict(cfg))
    backbone = build_backbone(cfg)
    levels = _num_levels(backbone)
    common: dict[str, Any] = dict(min_size=cfg.min_size, max_size=cfg.max_size, **dict(cfg.extra))
    if cfg.arch in TWO_STAGE:
        model = (MaskRCNN if cfg.arch == "mask_rcnn" else FasterRCNN)(
            backbone,
            num_classes=cfg.num_classes,
            rpn_anchor_generator=_anchors(cfg, levels, (1.0,)),
            rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
            box_batch_size_per_image=cfg.box_batch_size_per_image,
            box_detections_per_img=cfg.detections_per_img,
            **common,
        )
        # Heads replaced after construction: torchvision takes a custom predictor only with num_classes=None.
        heads = model.roi_heads
        if cfg.box_representation_size != 1024:
            pool = heads.box_roi_pool
            assert isinstance(pool, MultiScaleRoIAlign)  # torchvision's default, 7x7
            h, w = pool.output_size
            pooled = backbone.out_channels * int(h) * int(w)
            heads.box_head = TwoMLPHead(pooled, cfg.box_representation_size)
            heads.box_predictor = FastRCNNPredictor(cfg.box_representation_size, cfg.num_classes)
        if cfg.arch == "mask_rcnn":
            layers = [int(x) for x in cfg.mask_head_layers]
            heads.mask_head = MaskRCNNHeads(backbone.out_channels, layers, 1)
            heads.mask_predictor = MaskRCNNPredictor(layers[-1], cfg.mask_dim_reduced, cfg.num_classes)
        return model
    if cfg.arch == "retinanet":
        return RetinaNet(
            backbone,
            num_classes=cfg.num_classes,
            anchor_generator=_anchors(cfg, levels, (1.0, 2 ** (1 / 3), 2 ** (2 / 3))),
            detections_per_img=cfg.detections_per_img,
            **common,
        )
    # FCOS: one anchor per location whose size is the level's stride scale (torchvision's convention).
    sizes = tuple((cfg.anchor_base // 4 * 2**i,) for i in range(levels))
    return FCOS(
        backbone,
        num_classes=cfg.num_classes,
        anchor_generator=AnchorGenerator(sizes, ((1.0,),) * levels),
        detections_per_img=cfg.detections_per_img,
        **common,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
