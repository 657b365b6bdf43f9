"""Loss-weight schedules: hand-computed weights at given steps, validation, config plumbing."""

from __future__ import annotations

import pytest

from bcd_lightning.builders import distill_terms
from bcd_lightning.distill.schedules import WeightSchedule, as_schedule, scheduled_weight
from bcd_lightning.utils.config_check import ConfigError
from support import compose_config


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # weight 2.0 at steps 0, 1, 5, 9, 10, 49, 50, 1000
        ({"kind": "constant"}, [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]),
        ({"kind": "linear_warmup", "warmup_steps": 10}, [0.0, 0.2, 1.0, 1.8, 2.0, 2.0, 2.0, 2.0]),
        ({"kind": "stop", "stop_step": 50}, [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0]),
        (
            {"kind": "linear_warmup", "warmup_steps": 10, "stop_step": 50},
            [0.0, 0.2, 1.0, 1.8, 2.0, 2.0, 0.0, 0.0],
        ),
        ({"kind": "stop", "stop_step": 0}, [0.0] * 8),
    ],
)
def test_weights_at_steps(schedule: dict, expected: list[float]) -> None:
    steps = [0, 1, 5, 9, 10, 49, 50, 1000]
    got = [scheduled_weight(2.0, as_schedule(schedule), s) for s in steps]
    assert got == pytest.approx(expected, abs=1e-12)


def test_missing_schedule_is_constant() -> None:
    assert as_schedule(None) == WeightSchedule()
    assert scheduled_weight(3.0, as_schedule(None), 10**6) == 3.0


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"kind": "cosine"}, "kind must be one of"),
        ({"kind": "linear_warmup"}, "warmup_steps >= 1"),
        ({"kind": "linear_warmup", "warmup_steps": 0}, "warmup_steps >= 1"),
        ({"kind": "stop"}, "stop_step"),
        ({"kind": "constant", "stop_step": 5}, "kind=stop"),
        ({"kind": "constant", "warmup_steps": 5}, "linear_warmup"),
        ({"kind": "stop", "stop_step": -1}, "integer >= 0"),
        ({"kind": "stop", "stop_step": 2.5}, "integer >= 0"),
        ({"kind": "constant", "warmup": 5}, "unknown key"),
    ],
)
def test_bad_schedules_are_named(schedule: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_schedule(schedule)


def test_schedule_in_config_reaches_the_loss_term() -> None:
    cfg = compose_config(
        [
            "paths.output_dir=unused",
            "distill=cwd",
            "distill.losses.cwd.schedule={kind: linear_warmup, warmup_steps: 4, stop_step: 8}",
        ]
    )
    term = distill_terms(cfg)["cwd"]
    assert term.schedule == WeightSchedule("linear_warmup", 4, 8)
    bad = compose_config(["paths.output_dir=unused", "distill=cwd", "distill.losses.cwd.schedule.kind=warm"])
    with pytest.raises(ConfigError, match=r"distill\.losses\.cwd\.schedule\.kind"):
        distill_terms(bad)
