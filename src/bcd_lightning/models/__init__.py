"""Segmentation models: any smp architecture, and the frozen teacher."""

from bcd_lightning.models.outputs import SegOutput
from bcd_lightning.models.seg_model import SegModel, count_parameters
from bcd_lightning.models.teacher import FrozenTeacher, TeacherLoadError

__all__ = ["FrozenTeacher", "SegModel", "SegOutput", "TeacherLoadError", "count_parameters"]
