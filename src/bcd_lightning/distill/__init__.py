"""Distillation losses as plug-ins (``distill.losses`` in the config)."""

from bcd_lightning.distill.base import DistillLoss
from bcd_lightning.distill.boundary import BoundaryDistillation, BoundaryWeightedKD
from bcd_lightning.distill.cirkd import CrossImageRelationDistillation
from bcd_lightning.distill.context import ContextDistillation
from bcd_lightning.distill.cwd import ChannelWiseDistillation
from bcd_lightning.distill.ifvd import IntraClassVariationDistillation
from bcd_lightning.distill.kd import LogitKD
from bcd_lightning.distill.schedules import WeightSchedule
from bcd_lightning.distill.skd import PairwiseSimilarityDistillation

__all__ = [
    "BoundaryDistillation",
    "BoundaryWeightedKD",
    "ChannelWiseDistillation",
    "ContextDistillation",
    "CrossImageRelationDistillation",
    "DistillLoss",
    "IntraClassVariationDistillation",
    "LogitKD",
    "PairwiseSimilarityDistillation",
    "WeightSchedule",
]
