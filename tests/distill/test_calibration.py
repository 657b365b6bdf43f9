"""BCD's transfer rule: calibrate scales a term to ratio x CE over the first steps, then freezes; and the
bcd preset composes the single-term presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bcd_lightning.distill import LogitKD
from bcd_lightning.models.outputs import SegOutput


def _batch(seed: int) -> tuple[SegOutput, SegOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 3, 4, 4, generator=g)
    t = 3 * torch.randn(2, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (2, 4, 4), generator=g)
    y[0, 0, 0] = 255
    return SegOutput(logits=s), SegOutput(logits=t), y


def _kd(s: SegOutput, t: SegOutput, y: torch.Tensor, tau: float) -> float:
    """Independent pixel KD: tau^2 * mean over valid pixels of KL(T || S)."""
    p = F.softmax(t.logits / tau, 1)
    kl = (p * (p.log() - F.log_softmax(s.logits / tau, 1))).sum(1)
    valid = y != 255
    return float(tau**2 * kl[valid].mean())


def test_factor_is_ratio_times_ce_over_raw_running_sums_then_frozen() -> None:
    loss = LogitKD(tau=2.0, calibrate={"steps": 2, "ratio": 0.5}).train()
    ce_sum = raw_sum = 0.0
    for step in range(4):
        s, t, y = _batch(step)
        raw = _kd(s, t, y, 2.0)
        if step < 2:  # calibration steps: running ratio
            ce_sum += float(F.cross_entropy(s.logits, y, ignore_index=255))
            raw_sum += raw
        factor = 0.5 * ce_sum / raw_sum
        got = loss(s, t, y)
        assert got.item() == pytest.approx(factor * raw, rel=1e-5)
    assert int(loss.calibration.calls) == 2
    state = loss.state_dict()  # the factor resumes with the run
    assert {"calibration.factor", "calibration.calls"} <= set(state)


def test_no_update_outside_training_and_plain_loss_without_calibrate() -> None:
    s, t, y = _batch(0)
    loss = LogitKD(calibrate={"steps": 5, "ratio": 1.0}).eval()
    assert loss(s, t, y).item() == pytest.approx(_kd(s, t, y, 1.0), rel=1e-5)  # factor still 1
    assert int(loss.calibration.calls) == 0
    assert getattr(LogitKD(), "calibration", None) is None
    with pytest.raises(ValueError, match="calibrate"):
        LogitKD(calibrate={"steps": 0})
    with pytest.raises(ValueError, match="unknown"):
        LogitKD(calibrate={"step": 3})


def test_gradient_is_the_scaled_gradient() -> None:
    s, t, y = _batch(1)
    s.logits.requires_grad_(True)
    loss = LogitKD(calibrate={"steps": 1, "ratio": 0.25}).train()
    value = loss(s, t, y)
    value.backward()
    g_cal = s.logits.grad.clone()
    s.logits.grad = None
    LogitKD()(s, t, y).backward()
    factor = float(loss.calibration.factor)
    assert torch.allclose(g_cal, factor * s.logits.grad, rtol=1e-5)


def test_bcd_preset_is_the_single_term_presets_plus_bkd_and_the_rule(make_cfg) -> None:
    bcd = OmegaConf.to_container(make_cfg("experiment=embedded/bcd").distill)
    assert bcd["name"] == "bcd" and set(bcd["losses"]) == {"kd", "boundary", "bkd", "context"}
    for single in ("kd", "boundary", "context"):
        alone = OmegaConf.to_container(make_cfg(f"distill={single}").distill)["losses"][single]["loss"]
        composed = dict(bcd["losses"][single]["loss"])
        assert composed.pop("calibrate") == {"steps": 25, "ratio": 0.25}
        alone.pop("calibrate", None)
        assert composed == alone  # one definition of each loss block
    # What the hand-written preset declared, apart from the intended change (weights -> calibrate rule).
    assert bcd["losses"]["bkd"]["loss"] == {
        "_target_": "bcd_lightning.distill.BoundaryWeightedKD",
        "stages": [1, 2, 3, 4],
        "tau": 4.0,
        "dilation": 1,
        "calibrate": {"steps": 25, "ratio": 0.25},
    }
    assert bcd["losses"]["boundary"]["loss"]["stages"] == [1, 2, 3, 4]
    assert bcd["losses"]["context"]["loss"]["stride"] == 8
    assert all(term["weight"] == 1.0 for term in bcd["losses"].values())
    assert math.isclose(sum(t["loss"]["calibrate"]["ratio"] for t in bcd["losses"].values()), 1.0)
    for term in bcd["losses"].values():
        assert instantiate(term["loss"]).calibration is not None
