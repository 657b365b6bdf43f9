"""Loss-weight schedules: the effective weight of a loss term as a pure function of the global step.

Configured next to ``weight`` in each ``distill.losses.<name>`` entry::

    schedule: {kind: linear_warmup, warmup_steps: 200, stop_step: null}

Because the weight depends on ``global_step`` only (no state), a resumed run continues with exactly the
weights an uninterrupted run would have used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEDULE_KINDS = ("constant", "linear_warmup", "stop")
SCHEDULE_KEYS = ("kind", "warmup_steps", "stop_step")


@dataclass(frozen=True)
class WeightSchedule:
    """How a loss weight ``w`` evolves with the optimizer step ``s`` (0-based ``global_step``).

    - ``constant``: ``w``.
    - ``linear_warmup``: ``w · min(1, s / warmup_steps)``: 0 at step 0, full from step ``warmup_steps`` on.
    - ``stop``: ``w`` before ``stop_step``.
    ``stop_step`` may be combined with ``linear_warmup`` too: the weight is 0 from step ``stop_step`` on.
    """

    kind: str = "constant"
    warmup_steps: int | None = None
    stop_step: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule.kind must be one of {list(SCHEDULE_KINDS)}, got {self.kind!r}")
        for key in ("warmup_steps", "stop_step"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"schedule.{key} must be null or an integer >= 0, got {value!r}")
        if self.kind == "linear_warmup" and not self.warmup_steps:
            raise ValueError("schedule.kind=linear_warmup needs schedule.warmup_steps >= 1")
        if self.kind != "linear_warmup" and self.warmup_steps is not None:
            raise ValueError(
                f"schedule.warmup_steps={self.warmup_steps} only applies to kind=linear_warmup "
                f"(kind is {self.kind!r})"
            )
        if self.kind == "stop" and self.stop_step is None:
            raise ValueError("schedule.kind=stop needs schedule.stop_step (the first step with weight 0)")
        if self.kind == "constant" and self.stop_step is not None:
            raise ValueError("schedule.stop_step needs kind=stop (or linear_warmup), not constant")

    def factor(self, step: int) -> float:
        """Multiplier in [0, 1] of the configured weight at ``step``."""
        if self.stop_step is not None and step >= self.stop_step:
            return 0.0
        if self.kind == "linear_warmup":
            assert self.warmup_steps
            return min(1.0, max(step, 0) / self.warmup_steps)
        return 1.0


def as_schedule(value: WeightSchedule | Mapping[str, Any] | None) -> WeightSchedule:
    """A :class:`WeightSchedule` from a config mapping (None: constant); unknown keys are an error."""
    if value is None:
        return WeightSchedule()
    if isinstance(value, WeightSchedule):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"schedule must be a mapping with keys {list(SCHEDULE_KEYS)}, got {value!r}")
    unknown = sorted(set(value) - set(SCHEDULE_KEYS))
    if unknown:
        raise ValueError(f"schedule has unknown key(s) {unknown}; valid keys: {list(SCHEDULE_KEYS)}")
    return WeightSchedule(**dict(value))


def scheduled_weight(weight: float, schedule: WeightSchedule, step: int) -> float:
    """The effective weight ``weight · schedule.factor(step)``."""
    return float(weight) * schedule.factor(step)
