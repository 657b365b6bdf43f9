"""Lightning callbacks of the framework."""

from bcd_lightning.callbacks.confusion import ConfusionMatrixPlot
from bcd_lightning.callbacks.instance_panels import InstancePanels
from bcd_lightning.callbacks.last_checkpoint import LastCheckpoint
from bcd_lightning.callbacks.panels import ValidationPanels
from bcd_lightning.callbacks.teacher_guard import TeacherGuard, state_digest

__all__ = [
    "ConfusionMatrixPlot",
    "InstancePanels",
    "LastCheckpoint",
    "TeacherGuard",
    "ValidationPanels",
    "state_digest",
]
