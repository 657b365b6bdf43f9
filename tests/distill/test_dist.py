"""DIST: values against np.corrcoef (an independent Pearson), ignored pixels, zero at equality, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from baseline_support import rand
from hydra.utils import instantiate

from bcd_lightning.distill.dist import DIST
from bcd_lightning.models.outputs import SegOutput


def np_probs(z: np.ndarray, tau: float) -> np.ndarray:
    e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def dist_reference(s: np.ndarray, t: np.ndarray, tau: float, beta: float, gamma: float, valid=None) -> float:
    """Pixels of the batch as rows; inter: corrcoef per pixel row over classes; intra: per class column."""
    k = s.shape[1]
    ps = np_probs(s, tau).transpose(0, 2, 3, 1).reshape(-1, k)
    pt = np_probs(t, tau).transpose(0, 2, 3, 1).reshape(-1, k)
    if valid is not None:
        keep = valid.reshape(-1)
        ps, pt = ps[keep], pt[keep]
    inter = np.mean([np.corrcoef(ps[p], pt[p])[0, 1] for p in range(len(ps))])
    intra = np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(k)])
    return beta * tau**2 * (1 - inter) + gamma * tau**2 * (1 - intra)


@pytest.mark.parametrize(("tau", "beta", "gamma"), [(1.0, 1.0, 1.0), (2.0, 0.5, 2.0)])
def test_dist_matches_corrcoef(tau: float, beta: float, gamma: float) -> None:
    s, t = rand(2, 5, 3, 4, seed=1), rand(2, 5, 3, 4, seed=2)
    target = torch.zeros(2, 3, 4, dtype=torch.long)
    value = DIST(tau, beta, gamma)(SegOutput(logits=s), SegOutput(logits=t), target)
    assert value.item() == pytest.approx(dist_reference(s.numpy(), t.numpy(), tau, beta, gamma), rel=1e-6)


def test_dist_leaves_ignored_pixels_out_of_both_relations() -> None:
    s, t = rand(2, 4, 3, 3, seed=3), rand(2, 4, 3, 3, seed=4)
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    target[0, 0, :] = 255
    target[1, 2, 1] = 255
    valid = (target != 255).numpy()
    value = DIST()(SegOutput(logits=s), SegOutput(logits=t), target)
    expected = dist_reference(s.numpy(), t.numpy(), 1.0, 1.0, 1.0, valid)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # The ignored pixels' logits do not matter at all.
    s2 = s.clone()
    s2[0, :, 0, :] = 100.0 * rand(4, 3, seed=5)
    again = DIST()(SegOutput(logits=s2), SegOutput(logits=t), target)
    assert again.item() == pytest.approx(value.item(), rel=1e-12)
    all_ignored = torch.full_like(target, 255)
    assert DIST()(SegOutput(logits=s), SegOutput(logits=t), all_ignored).item() == 0.0


def test_dist_is_zero_at_equality_and_detaches_the_teacher() -> None:
    x = rand(2, 4, 3, 3, seed=6)
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    assert DIST()(SegOutput(logits=x), SegOutput(logits=x.clone()), target).item() == pytest.approx(
        0, abs=1e-6
    )
    s = rand(2, 4, 3, 3, seed=7, dtype=torch.float32).requires_grad_(True)
    t = rand(2, 4, 3, 3, seed=8, dtype=torch.float32).requires_grad_(True)
    DIST()(SegOutput(logits=s), SegOutput(logits=t), target).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert t.grad is None


def test_dist_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match="tau"):
        DIST(tau=0)
    with pytest.raises(ValueError, match="beta"):
        DIST(beta=-1)


def test_dist_preset_is_the_reference_setting(make_cfg) -> None:
    cfg = make_cfg("experiment=embedded/kd", "distill=dist")
    assert cfg.distill.name == "dist" and list(cfg.distill.losses) == ["dist"]
    loss = instantiate(cfg.distill.losses.dist.loss)
    assert isinstance(loss, DIST) and (loss.tau, loss.beta, loss.gamma) == (1.0, 1.0, 1.0)
    assert cfg.distill.losses.dist.weight == 1.0
