"""Distillation losses as plug-ins (``distill.losses`` in the config)."""

from bcd_lightning.distill.base import DistillLoss
from bcd_lightning.distill.boundary import BoundaryDistillation, BoundaryWeightedKD
from bcd_lightning.distill.context import ContextDistillation
from bcd_lightning.distill.kd import LogitKD

__all__ = ["BoundaryDistillation", "BoundaryWeightedKD", "ContextDistillation", "DistillLoss", "LogitKD"]
