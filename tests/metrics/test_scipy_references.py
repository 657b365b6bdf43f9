"""Every metric against references built on scipy.ndimage (iterated binary erosion, chessboard distance
transform, connected-component labelling: different algorithms from the implementation's windowed
min/max over label maps and run-based union-find), hand-made cases (shifted square, broken line,
all-ignore image) and state merging (two halves merged == one update)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics import Metric

from bcd_lightning.metrics import BoundaryFScore, BoundaryIoU, ConnectivityError, SegmentationIoU, SegMetrics

IGNORE = 255
K = 4
SQUARE = np.ones((3, 3), dtype=bool)


def random_batch(seed: int, b: int = 4, h: int = 40, w: int = 52) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocky random GT (3×3 cells), a prediction with 15% of pixels changed, 5% ignored GT pixels."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, (b, -(-h // 3), -(-w // 3)), generator=g).repeat_interleave(3, 1)
    target = target.repeat_interleave(3, 2)[:, :h, :w].contiguous()
    pred = target.clone()
    flip = torch.rand(target.shape, generator=g) < 0.15
    pred[flip] = torch.randint(0, K, (int(flip.sum()),), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.05] = IGNORE
    return pred, target


def masks(pred: torch.Tensor, target: torch.Tensor, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-c masks of one image, ignored pixels in neither."""
    valid = (target != IGNORE).numpy()
    return (pred.numpy() == c) & valid, (target.numpy() == c) & valid


def nan_ratio(num: list[float], den: list[float]) -> list[float]:
    return [n / d if d else math.nan for n, d in zip(num, den, strict=True)]


def ref_iou(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    inter, union = [0] * K, [0] * K
    for p, t in zip(pred, target, strict=True):
        for c in range(K):
            pm, gm = masks(p, t, c)
            inter[c] += int((pm & gm).sum())
            union[c] += int((pm | gm).sum())
    return nan_ratio(inter, union)


def inner_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Cheng et al.: mask minus its erosion, the outside of the image counting as background."""
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, structure=SQUARE, iterations=d, border_value=0)


def ref_boundary_iou(pred: torch.Tensor, target: torch.Tensor, d: int) -> list[float]:
    inter, union = [0] * K, [0] * K
    for p, t in zip(pred, target, strict=True):
        for c in range(K):
            pb, gb = (inner_band(m, d) for m in masks(p, t, c))
            inter[c] += int((pb & gb).sum())
            union[c] += int((pb | gb).sum())
    return nan_ratio(inter, union)


def contour(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with an 8-neighbour outside the mask; the image frame is not a contour."""
    return mask & ~ndimage.binary_erosion(mask, structure=SQUARE, border_value=1)


def matched(src: np.ndarray, dst: np.ndarray, tol: int) -> int:
    """Pixels of ``src`` within chessboard distance ``tol`` of a pixel of ``dst``."""
    if not dst.any():
        return 0
    distance = ndimage.distance_transform_cdt(~dst, metric="chessboard")
    return int((src & (distance <= tol)).sum())


def ref_boundary_f1(pred: torch.Tensor, target: torch.Tensor, tol: int) -> list[float]:
    mp, np_, mg, ng = ([0] * K for _ in range(4))
    for p, t in zip(pred, target, strict=True):
        for c in range(K):
            pc, gc = (contour(m) for m in masks(p, t, c))
            mp[c] += matched(pc, gc, tol)
            np_[c] += int(pc.sum())
            mg[c] += matched(gc, pc, tol)
            ng[c] += int(gc.sum())
    out = []
    for c in range(K):
        if np_[c] == 0 and ng[c] == 0:
            out.append(math.nan)
            continue
        precision = mp[c] / np_[c] if np_[c] else 0.0
        recall = mg[c] / ng[c] if ng[c] else 0.0
        out.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return out


def ref_connectivity(pred: torch.Tensor, target: torch.Tensor) -> tuple[list[int], list[int]]:
    err, pairs = [0] * K, [0] * K
    for p, t in zip(pred, target, strict=True):
        for c in range(K):
            n_pred, n_gt = (ndimage.label(m, structure=SQUARE)[1] for m in masks(p, t, c))
            if n_pred or n_gt:
                err[c] += abs(n_pred - n_gt)
                pairs[c] += 1
    return err, pairs


def close(got: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.double), equal_nan=True)


# ----------------------------------------------------------------------------------- random masks vs scipy


@pytest.mark.parametrize("seed", [0, 1])
def test_iou_matches_reference(seed: int) -> None:
    pred, target = random_batch(seed)
    m = SegmentationIoU(K)
    m.update(pred, target)
    close(m.per_class(), ref_iou(pred, target))


@pytest.mark.parametrize("d", [1, 2, 4])
def test_boundary_iou_matches_scipy_erosion(d: int) -> None:
    pred, target = random_batch(10 + d)
    m = BoundaryIoU(K, dilation_pixels=d)
    m.update(pred, target)
    close(m.per_class(), ref_boundary_iou(pred, target, d))


def test_boundary_iou_default_dilation_is_two_percent_of_the_diagonal() -> None:
    pred, target = random_batch(3, h=120, w=160)  # diagonal 200 px: d = 4
    m = BoundaryIoU(K)
    m.update(pred, target)
    close(m.per_class(), ref_boundary_iou(pred, target, 4))


@pytest.mark.parametrize("tol", [0, 1, 2, 3])
def test_boundary_f_matches_scipy_distance_transform(tol: int) -> None:
    pred, target = random_batch(20 + tol)
    m = BoundaryFScore(K, tolerance=tol)
    m.update(pred, target)
    close(m.per_class(), ref_boundary_f1(pred, target, tol))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_connectivity_matches_scipy_label(seed: int) -> None:
    pred, target = random_batch(30 + seed)
    m = ConnectivityError(K)
    m.update(pred, target)
    err, pairs = ref_connectivity(pred, target)
    assert m.error_sum.tolist() == err and m.pairs.tolist() == pairs
    close(m.per_class(), nan_ratio(err, pairs))
    assert m.compute().item() == pytest.approx(sum(err) / sum(pairs))


# ----------------------------------------------------------------------------------- hand-made cases


def square(shift: int = 0) -> torch.Tensor:
    img = torch.zeros(1, 32, 32, dtype=torch.long)
    img[0, 5:15, 5 + shift : 15 + shift] = 1
    return img


def test_iou_and_connectivity_of_a_shifted_square() -> None:
    iou = SegmentationIoU(2)
    iou.update(square(shift=1), square())
    # Class 1: 90 shared pixels, union 110. Background: 1024 - 110 shared, union 1024 - 90.
    close(iou.per_class(), [914 / 934, 90 / 110])
    conn = ConnectivityError(2)
    conn.update(square(shift=1), square())
    assert conn.compute().item() == 0  # one square, one background region on both sides


def test_broken_line_component_counts() -> None:
    target = torch.zeros(1, 7, 30, dtype=torch.long)
    target[0, 3, 2:28] = 1  # one 26-pixel line
    pred = target.clone()
    pred[0, 3, [9, 18, 19]] = 0  # two gaps
    pred[0, 3, 24] = 0  # a third gap, bridged diagonally by the pixel above it
    pred[0, 2, 24] = 1
    # 8-connected pieces: cols 2-8 | 10-17 | 20-23 + (row 2, col 24) + 25-27 -> 3; under 4-connectivity
    # the diagonal bridge no longer joins: 2-8 | 10-17 | 20-23 | (2, 24) | 25-27 -> 5.
    line = pred[0].numpy() == 1
    assert ndimage.label(line, structure=SQUARE)[1] == 3 and ndimage.label(line)[1] == 5
    m = ConnectivityError(2)
    m.update(pred, target)
    assert m.error_sum.tolist() == [0, 2] and m.pairs.tolist() == [1, 1]  # background: one region both
    assert m.compute().item() == pytest.approx(1.0)
    four = ConnectivityError(2, connectivity=4)
    four.update(pred, target)
    assert four.error_sum.tolist() == [0, 4]


MAKERS: dict[str, Callable[[], Metric]] = {
    "iou": lambda: SegmentationIoU(K),
    "biou": lambda: BoundaryIoU(K, dilation_pixels=2),
    "bf": lambda: BoundaryFScore(K, tolerance=1),
    "conn": lambda: ConnectivityError(K),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_all_ignore_image_counts_nothing(name: str) -> None:
    pred, target = random_batch(40, b=3)
    blank = torch.full((1, *target.shape[1:]), IGNORE)
    alone = MAKERS[name]()
    alone.update(pred[:1], blank)
    assert all(int(v.sum()) == 0 for v in alone.metric_state.values())  # nothing was counted
    assert alone.per_class().isnan().all()
    mixed, plain = MAKERS[name](), MAKERS[name]()
    mixed.update(torch.cat([pred, pred[:1]]), torch.cat([target, blank]))
    plain.update(pred, target)
    for key, value in plain.metric_state.items():
        assert torch.equal(mixed.metric_state[key], value), key


@pytest.mark.parametrize("name", list(MAKERS))
def test_two_halves_merged_equal_one_update(name: str) -> None:
    pred, target = random_batch(50, b=6)
    whole, first, second = (MAKERS[name]() for _ in range(3))
    whole.update(pred, target)
    first.update(pred[:3], target[:3])
    second.update(pred[3:], target[3:])
    first.merge_state(second)  # torchmetrics' merge: the sum reduction of the states, as under DDP
    for key, value in whole.metric_state.items():
        assert torch.equal(first.metric_state[key], value), key
    close(first.per_class(), whole.per_class().tolist())
    assert first.compute().item() == pytest.approx(whole.compute().item())


def test_collection_halves_merged_equal_one_update() -> None:
    pred, target = random_batch(60, b=6)
    whole, first, second = SegMetrics(K), SegMetrics(K), SegMetrics(K)
    whole.update(pred, target)
    first.update(pred[:3], target[:3])
    second.update(pred[3:], target[3:])
    for name, metric in first.metrics.items():
        metric.merge_state(second.metrics[name])
    assert first.compute() == pytest.approx(whole.compute())
    assert first.compute()["mIoU"] == pytest.approx(np.nanmean(ref_iou(pred, target)))
