"""BoundaryIoU and BoundaryFScore: hand-computed cases and brute-force distance-based references."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics import Metric

from bcd_lightning.metrics import BoundaryFScore, BoundaryIoU

IGNORE = 255


def square_image(shift: int = 0, size: int = 32) -> torch.Tensor:
    """[1, size, size]: class 1 on a 10×10 square at rows/cols 5..14 (cols shifted by ``shift``), else 0."""
    img = torch.zeros(1, size, size, dtype=torch.long)
    img[0, 5:15, 5 + shift : 15 + shift] = 1
    return img


def _chebyshev_window(y: int, x: int, r: int) -> list[tuple[int, int]]:
    return [(y + dy, x + dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def ref_inner_band(mask: list[list[bool]], d: int) -> set[tuple[int, int]]:
    """Mask pixels within Chebyshev distance d of a non-mask pixel, the outside of the image counting as
    non-mask (Cheng et al. pad with zeros before eroding)."""
    h, w = len(mask), len(mask[0])
    out = set()
    for y in range(h):
        for x in range(w):
            if mask[y][x] and any(
                not (0 <= v < h and 0 <= u < w) or not mask[v][u] for v, u in _chebyshev_window(y, x, d)
            ):
                out.add((y, x))
    return out


def ref_contour(mask: list[list[bool]]) -> set[tuple[int, int]]:
    """Mask pixels with an in-image 8-neighbour outside the mask."""
    h, w = len(mask), len(mask[0])
    return {
        (y, x)
        for y in range(h)
        for x in range(w)
        if mask[y][x]
        and any(0 <= v < h and 0 <= u < w and not mask[v][u] for v, u in _chebyshev_window(y, x, 1))
    }


def class_masks(pred: torch.Tensor, target: torch.Tensor, c: int) -> tuple[list, list]:
    valid = target != IGNORE
    return ((pred == c) & valid).tolist(), ((target == c) & valid).tolist()


def ref_boundary_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, d: int) -> list[float]:
    inter = [0] * num_classes
    union = [0] * num_classes
    for p, t in zip(pred, target, strict=True):
        for c in range(num_classes):
            pm, gm = class_masks(p, t, c)
            pb, gb = ref_inner_band(pm, d), ref_inner_band(gm, d)
            inter[c] += len(pb & gb)
            union[c] += len(pb | gb)
    return [i / u if u else math.nan for i, u in zip(inter, union, strict=True)]


def ref_boundary_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int, tol: int) -> list[float]:
    sums = [[0, 0, 0, 0] for _ in range(num_classes)]  # matched pred, pred, matched gt, gt
    for p, t in zip(pred, target, strict=True):
        for c in range(num_classes):
            pm, gm = class_masks(p, t, c)
            pc, gc = ref_contour(pm), ref_contour(gm)
            sums[c][0] += sum(any(q in gc for q in _chebyshev_window(*px, tol)) for px in pc)
            sums[c][1] += len(pc)
            sums[c][2] += sum(any(q in pc for q in _chebyshev_window(*px, tol)) for px in gc)
            sums[c][3] += len(gc)
    out = []
    for mp, np_, mg, ng in sums:
        if np_ == 0 and ng == 0:
            out.append(math.nan)
            continue
        prec, rec = (mp / np_ if np_ else 0.0), (mg / ng if ng else 0.0)
        out.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return out


def random_batch(
    seed: int, b: int = 3, k: int = 3, h: int = 14, w: int = 17
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Blocky maps (2×2 cells) so that regions are bigger than single pixels, plus ignored pixels.
    target = torch.randint(0, k, (b, h // 2 + 1, w // 2 + 1), generator=g).repeat_interleave(2, 1)
    target = target.repeat_interleave(2, 2)[:, :h, :w].contiguous()
    pred = target.clone()
    flip = torch.rand(target.shape, generator=g) < 0.2
    pred[flip] = torch.randint(0, k, (int(flip.sum()),), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.08] = IGNORE
    return pred, target


def assert_nan_close(got: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.double), equal_nan=True)


# ----------------------------------------------------------------------------------------- Boundary IoU


def test_biou_square_band_and_perfect_prediction() -> None:
    gt = square_image()
    m = BoundaryIoU(2, dilation_pixels=1)
    m.update(gt, gt)
    assert m.gt_band[1] == 36  # 10×10 minus its 8×8 interior
    assert m.gt_band[0] == 4 * 31 + 44  # image frame ring + ring around the square
    assert_nan_close(m.per_class(), [1.0, 1.0])
    assert m.compute().item() == 1.0


def test_biou_shifted_square_by_hand() -> None:
    m = BoundaryIoU(2, dilation_pixels=1)
    m.update(square_image(shift=1), square_image())
    # Bands overlap on the top and bottom rows except one column each: 2 × 9 = 18; union 36 + 36 - 18.
    assert m.intersection[1] == 18
    assert m.per_class()[1].item() == pytest.approx(18 / 54)


def test_biou_image_border_counts_as_boundary() -> None:
    m = BoundaryIoU(1, dilation_pixels=2)
    full = torch.zeros(1, 8, 8, dtype=torch.long)
    m.update(full, full)
    assert m.gt_band[0] == 64 - 16  # all but the central 4×4


def test_biou_dilation_from_ratio() -> None:
    m = BoundaryIoU(2)
    assert m.dilation(32, 32) == 1  # round(0.905), at least 1
    assert m.dilation(512, 1024) == round(0.02 * math.hypot(512, 1024)) == 23
    assert BoundaryIoU(2, dilation_pixels=5).dilation(512, 1024) == 5


@pytest.mark.parametrize("d", [1, 2, 3])
def test_biou_matches_bruteforce_reference(d: int) -> None:
    pred, target = random_batch(d)
    m = BoundaryIoU(3, dilation_pixels=d)
    m.update(pred, target)
    assert_nan_close(m.per_class(), ref_boundary_iou(pred, target, 3, d))


def test_biou_ignored_pixels_excluded() -> None:
    gt = square_image()
    gt[0, 5:15, 10:] = IGNORE  # right half of the square and everything right of it ignored
    pred = torch.ones_like(gt)  # wrong everywhere... but what is ignored must not matter
    pred[gt == 0] = 0
    m = BoundaryIoU(2, dilation_pixels=1)
    m.update(pred, gt)
    assert_nan_close(m.per_class(), [1.0, 1.0])
    assert_nan_close(m.per_class(), ref_boundary_iou(pred, gt, 2, 1))


# ----------------------------------------------------------------------------------------- Boundary F-score


def test_bf_square_by_hand() -> None:
    gt, pred = square_image(), square_image(shift=1)
    exact = BoundaryFScore(2, tolerance=0)
    exact.update(pred, gt)
    assert exact.total_gt.tolist() == [44, 36]  # background contour: ring outside the square; no frame
    assert exact.matched_pred[1] == 18
    assert exact.per_class()[1].item() == pytest.approx(0.5)
    loose = BoundaryFScore(2, tolerance=1)
    loose.update(pred, gt)
    assert_nan_close(loose.per_class(), [1.0, 1.0])


@pytest.mark.parametrize(("tol", "k"), [(0, 3), (1, 3), (2, 3), (1, 12), (1, 20), (2, 70)])
def test_bf_matches_bruteforce_reference(tol: int, k: int) -> None:
    # k picks the bit-map word: uint8, int16, int32, and two int64 words.
    pred, target = random_batch(10 + tol, k=k, h=14 if k < 20 else 24, w=17 if k < 20 else 30)
    m = BoundaryFScore(k, tolerance=tol)
    m.update(pred, target)
    assert_nan_close(m.per_class(), ref_boundary_f1(pred, target, k, tol))


def test_bf_undefined_and_one_sided_classes() -> None:
    gt = square_image()
    pred = torch.zeros_like(gt)  # class 1 missed; class 2 nowhere
    m = BoundaryFScore(3)
    m.update(pred, gt)
    f1 = m.per_class()
    assert f1[0] == 0 and f1[1] == 0 and f1[2].isnan()  # pred class 0 fills the image: no contour
    precision, recall = m.precision_recall()
    assert precision[1].isnan() and recall[1] == 0
    assert m.compute() == 0  # mean over the defined classes 0 and 1


def test_bf_many_classes_use_several_bit_words() -> None:
    k = 130  # > 2 × 63 classes
    target = torch.arange(k).repeat_interleave(2).view(1, 2, k)  # 1×2 blocks side by side
    m = BoundaryFScore(k, tolerance=0)
    m.update(target, target)
    assert_nan_close(m.per_class(), [1.0] * k)
    shifted = BoundaryFScore(k, tolerance=0)
    shifted.update(target.roll(1, -1), target)
    assert shifted.compute() < 1


# ----------------------------------------------------------------------------------------- shared behaviour


METRICS = [
    pytest.param(lambda: BoundaryIoU(3, dilation_pixels=2), id="biou"),
    pytest.param(lambda: BoundaryFScore(3, tolerance=1), id="bf"),
]


@pytest.mark.parametrize("make", METRICS)
def test_batched_equals_per_image_and_order_independent(make) -> None:
    pred, target = random_batch(7, b=4)
    whole, split = make(), make()
    whole.update(pred, target)
    for i in (3, 1, 0, 2):
        split.update(pred[i : i + 1], target[i : i + 1])
    assert_nan_close(split.per_class(), whole.per_class().tolist())


@pytest.mark.parametrize("make", METRICS)
def test_state_merge_simulates_ddp(make) -> None:
    pred, target = random_batch(8, b=4)
    whole, rank0, rank1 = make(), make(), make()
    whole.update(pred, target)
    rank0.update(pred[:2], target[:2])
    rank1.update(pred[2:], target[2:])
    states = rank0.metric_state
    for name, value in rank1.metric_state.items():  # what dist_reduce_fx="sum" does across ranks
        getattr(rank0, name).add_(value)
    assert all(v.dtype == torch.long for v in states.values())
    assert_nan_close(rank0.per_class(), whole.per_class().tolist())
    assert rank0.compute().item() == pytest.approx(whole.compute().item())


@pytest.mark.parametrize("make", METRICS)
def test_scores_input_dtype_and_device(make) -> None:
    pred, target = random_batch(9)
    scores = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() + 0.1 * torch.rand(3, 3, 14, 17)
    by_index, by_score = make(), make()
    by_index.update(pred, target)
    by_score.update(scores, target)
    out = by_score.compute()
    assert isinstance(by_score, Metric) and out.dim() == 0 and out.dtype == torch.float32
    assert out.device == target.device and by_score.per_class().shape == (3,)
    assert out.item() == pytest.approx(by_index.compute().item())


@pytest.mark.parametrize("make", METRICS)
def test_bad_inputs_raise(make) -> None:
    m = make()
    with pytest.raises(ValueError, match="outside"):
        m.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match="preds"):
        m.update(torch.zeros(1, 4, 5, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
