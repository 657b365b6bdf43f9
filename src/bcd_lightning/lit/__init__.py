"""LightningModules: supervised segmentation and distillation."""

from bcd_lightning.lit.distillation import DistillationModule, LossTerm, TeacherQualityError
from bcd_lightning.lit.optim import SchedulerConfig
from bcd_lightning.lit.segmentation import SegmentationModule

__all__ = [
    "DistillationModule",
    "LossTerm",
    "SchedulerConfig",
    "SegmentationModule",
    "TeacherQualityError",
]
