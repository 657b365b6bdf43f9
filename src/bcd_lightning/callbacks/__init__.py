"""Lightning callbacks of the framework."""

from bcd_lightning.callbacks.teacher_guard import TeacherGuard, state_digest

__all__ = ["TeacherGuard", "state_digest"]
