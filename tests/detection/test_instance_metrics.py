"""Instance metrics: Boundary AP against an independent numpy boundary IoU, connectivity of hand-built masks,
box / mask AP against torchmetrics, DDP (gloo, 2 processes) == one process, empty inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import Tensor
from torch.multiprocessing.spawn import spawn

from bcd_lightning.detection.instance_metrics import INSTANCE_SUMMARY_KEYS, InstanceMetrics
from bcd_lightning.detection.metrics import DetectionMetrics, metrics_for

THRESHOLDS = np.linspace(0.5, 0.95, 10)


def box_of(mask: Tensor) -> list[float]:
    ys, xs = mask.nonzero(as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


def pred(
    masks: list[Tensor], scores: list[float], labels: list[int], size: tuple[int, int]
) -> dict[str, Tensor]:
    return {
        "boxes": torch.tensor([box_of(m) for m in masks], dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.stack(masks).float()[:, None] if masks else torch.zeros(0, 1, *size),
    }


def target(masks: list[Tensor], labels: list[int], size: tuple[int, int], crowd: list[int] | None = None):
    return {
        "boxes": torch.tensor([box_of(m) for m in masks], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "iscrowd": torch.tensor(crowd or [0] * len(masks), dtype=torch.int64),
        "masks": torch.stack(masks).to(torch.uint8) if masks else torch.zeros(0, *size, dtype=torch.uint8),
    }


def rect(size: tuple[int, int], y: int, x: int, h: int, w: int) -> Tensor:
    m = torch.zeros(size, dtype=torch.bool)
    m[y : y + h, x : x + w] = True
    return m


# --- (a) Boundary AP ---------------------------------------------------------------------------------------
def np_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Mask minus its erosion by a (2d+1)² square, outside the image counting as background (what d
    iterations of a 3x3 erosion on a zero-padded mask give, Cheng et al. 2021)."""
    h, w = mask.shape
    padded = np.pad(mask, d)
    eroded = np.ones_like(mask)
    for dy in range(2 * d + 1):
        for dx in range(2 * d + 1):
            eroded &= padded[dy : dy + h, dx : dx + w]
    return mask & ~eroded


def np_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_numpy_boundary_reference_by_hand() -> None:
    # 40x40 square, band d = 3: 40² - 34² = 444 pixels. Shifted right by 1: the top/bottom bands (6 rows)
    # overlap on 39 columns, the 34 middle rows on 4 columns: 234 + 136 = 370; IoU = 370 / (2 * 444 - 370).
    g = np.zeros((100, 100), dtype=bool)
    g[30:70, 30:70] = True
    p = np.roll(g, 1, axis=1)
    assert np_boundary(g, 3).sum() == 444
    assert np_iou(np_boundary(g, 3), np_boundary(p, 3)) == pytest.approx(370 / 518)
    # Shifted by 2: 6 * 38 + 34 * 2 = 296 shared, IoU 296 / 592 = 0.5 exactly.
    assert np_iou(np_boundary(g, 3), np_boundary(np.roll(g, 2, axis=1), 3)) == 0.5


@pytest.mark.parametrize(("size", "side", "y0", "x0", "dy", "dx"), [
    ((100, 100), 40, 20, 15, 0, 1), ((100, 100), 40, 20, 15, 0, 2), ((100, 100), 40, 20, 15, 0, 3),
    ((100, 100), 40, 20, 15, 0, 4),
    ((100, 100), 40, 0, 0, 0, 1),  # at the image corner: the frame counts as boundary (0.71, else 0.5)
    ((120, 80), 50, 20, 15, 1, 1),  # not square (d from the true diagonal), shifted diagonally
    ((200, 200), 90, 20, 15, 0, 1), ((200, 200), 90, 20, 15, 1, 1),  # d = 6: a wider band
])  # fmt: skip
def test_boundary_ap_of_a_shifted_square(
    size: tuple[int, int], side: int, y0: int, x0: int, dy: int, dx: int
) -> None:
    g, p = rect(size, y0, x0, side, side), rect(size, y0 + dy, x0 + dx, side, side)
    d = max(1, round(0.02 * float(np.hypot(*size))))
    gn, pn = g.numpy(), p.numpy()
    mask_iou = np_iou(gn, pn)
    boundary_iou = min(mask_iou, np_iou(np_boundary(gn, d), np_boundary(pn, d)))
    # One prediction, one object: AP@t is 1 on a hit (IoU >= t, COCO's rule), 0 otherwise. Shift 2 ties at
    # exactly 0.5 (296 / 592, exact in floats too); no other case lies within float noise of a threshold.
    assert boundary_iou == 0.5 or np.abs(THRESHOLDS - boundary_iou).min() > 1e-3
    hits = boundary_iou >= THRESHOLDS
    mask_hits = mask_iou >= THRESHOLDS

    m = InstanceMetrics(["a"])
    m.update([pred([p], [0.9], [1], size)], [target([g], [1], size)])
    summary, per_class = m.compute()
    assert summary["boundary_map"] == pytest.approx(hits.mean())
    assert summary["boundary_map_50"] == float(hits[0])
    assert summary["boundary_map_75"] == float(hits[5])
    assert summary["mask_map"] == pytest.approx(mask_hits.mean())
    assert per_class == {"a": pytest.approx(mask_hits.mean())}


def test_boundary_ap_of_shift_1_by_hand() -> None:
    # IoU min(39/41, 370/518 = 0.714): hits at 0.50 .. 0.70 (5 of 10 thresholds).
    size = (100, 100)
    m = InstanceMetrics(["a"])
    m.update(
        [pred([rect(size, 30, 31, 40, 40)], [0.9], [1], size)],
        [target([rect(size, 30, 30, 40, 40)], [1], size)],
    )
    summary, _ = m.compute()
    assert (summary["boundary_map"], summary["boundary_map_50"], summary["boundary_map_75"]) == (
        pytest.approx(0.5),
        1.0,
        0.0,
    )


def test_boundary_dilation_ratio_is_used() -> None:
    # With ratio 0.2 on 100x100, d = 28: the 40x40 square's band is almost all of it, so Boundary AP ~ mask AP.
    size = (100, 100)
    g, p = rect(size, 30, 30, 40, 40), rect(size, 30, 32, 40, 40)
    m = InstanceMetrics(["a"], boundary_dilation_ratio=0.2)
    m.update([pred([p], [0.9], [1], size)], [target([g], [1], size)])
    summary, _ = m.compute()
    gn, pn = g.numpy(), p.numpy()
    expected = min(np_iou(gn, pn), np_iou(np_boundary(gn, 28), np_boundary(pn, 28))) >= THRESHOLDS
    assert summary["boundary_map"] == pytest.approx(expected.mean())
    assert summary["boundary_map"] > 0.5  # at the default ratio the same pair scores 0.1


# --- (b) connectivity --------------------------------------------------------------------------------------
SIZE = (64, 64)
SQUARE = rect(SIZE, 10, 10, 20, 20)


def conn(preds: list[tuple[Tensor, float]], gts: list[Tensor]) -> tuple[float, float]:
    m = InstanceMetrics(["a"])
    m.update(
        [pred([p for p, _ in preds], [s for _, s in preds], [1] * len(preds), SIZE)],
        [target(gts, [1] * len(gts), SIZE)],
    )
    summary, _ = m.compute()
    return summary["conn_error"], summary["broken_rate"]


def cut_columns(mask: Tensor, x: int, width: int) -> Tensor:
    out = mask.clone()
    out[:, x : x + width] = False
    return out


def test_split_prediction_is_broken_unsplit_is_not() -> None:
    split = cut_columns(SQUARE, 19, 2)  # two 9- and 9-pixel-wide halves, IoU 360 / 400 with the square
    assert conn([(split, 0.9)], [SQUARE]) == (1.0, 1.0)
    assert conn([(SQUARE, 0.9)], [SQUARE]) == (0.0, 0.0)


def test_diagonal_cut_is_one_component_under_8_connectivity() -> None:
    # Removing the anti-diagonal leaves two triangles touching corner to corner: one 8-connected component.
    cut = SQUARE.clone()
    for i in range(20):
        cut[10 + i, 29 - i] = False
    assert conn([(cut, 0.9)], [SQUARE]) == (0.0, 0.0)


def test_connectivity_is_relative_to_the_matched_ground_truth() -> None:
    gt_two = cut_columns(SQUARE, 19, 2)  # an object occluded by a thin structure: two components
    assert conn([(gt_two, 0.9)], [gt_two]) == (0.0, 0.0)
    assert conn([(SQUARE, 0.9)], [gt_two]) == (1.0, 0.0)  # merged: wrong count, not broken
    three = cut_columns(gt_two, 13, 2)
    assert conn([(three, 0.9)], [gt_two]) == (1.0, 1.0)


def test_only_confident_matched_predictions_count() -> None:
    split = cut_columns(SQUARE, 19, 2)
    assert conn([(split, 0.3)], [SQUARE]) == (0.0, 0.0)  # below the 0.5 score: no pair
    far = rect(SIZE, 40, 40, 20, 20)
    assert conn([(cut_columns(far, 49, 2), 0.9)], [SQUARE]) == (0.0, 0.0)  # IoU 0: no pair
    # Each object is matched once, by score: the unsplit 0.9 one takes it; the split 0.8 one is unmatched.
    assert conn([(split, 0.8), (SQUARE, 0.9)], [SQUARE]) == (0.0, 0.0)
    assert conn([(split, 0.9), (SQUARE, 0.8)], [SQUARE]) == (1.0, 1.0)
    # Two objects, one broken, one not: mean over the pairs.
    other = rect(SIZE, 40, 40, 20, 20)
    assert conn([(split, 0.9), (other, 0.9)], [SQUARE, other]) == (0.5, 0.5)


def test_crowd_targets_are_not_matched() -> None:
    m = InstanceMetrics(["a"])
    m.update([pred([cut_columns(SQUARE, 19, 2)], [0.9], [1], SIZE)], [target([SQUARE], [1], SIZE, crowd=[1])])
    summary, _ = m.compute()
    assert (summary["conn_error"], summary["broken_rate"]) == (0.0, 0.0)
    assert summary["mask_map"] == -1.0  # only a crowd object: AP undefined, the detection ignored


# --- (c) against torchmetrics ------------------------------------------------------------------------------
def random_case(seed: int, n_images: int = 4) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Rectangles of 2 classes on 48x64 images; predictions jittered, sometimes split, plus false positives."""
    g = torch.Generator().manual_seed(seed)
    size = (48, 64)

    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=g))

    preds, targets = [], []
    for _ in range(n_images):
        gm, gl, gc, pm, ps, pl = [], [], [], [], [], []
        for k in range(ri(0, 4)):
            h, w = ri(6, 20), ri(6, 24)
            y, x = ri(0, size[0] - h), ri(0, size[1] - w)
            gm.append(rect(size, y, x, h, w))
            gl.append(ri(1, 3))
            gc.append(1 if k == 2 else 0)
            if ri(0, 4):  # detected, jittered by up to 3 px, split by a 2-px gap one time in three
                p = rect(size, y + ri(-3, 4), x + ri(-3, 4), h + ri(-2, 3), w + ri(-2, 3))
                if not ri(0, 3):
                    p = cut_columns(p, x + w // 2, 2)
                if p.any():
                    pm.append(p)
                    ps.append(float(torch.rand(1, generator=g)) * 0.6 + 0.4)
                    pl.append(gl[-1] if ri(0, 5) else 3 - gl[-1])
        for _ in range(ri(0, 3)):  # false positives
            h, w = ri(4, 16), ri(4, 16)
            pm.append(rect(size, ri(0, size[0] - h), ri(0, size[1] - w), h, w))
            ps.append(float(torch.rand(1, generator=g)))
            pl.append(ri(1, 3))
        preds.append(pred(pm, ps, pl, size))
        targets.append(target(gm, gl, size, gc))
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_and_mask_ap_agree_with_torchmetrics(seed: int) -> None:
    from torchmetrics.detection import MeanAveragePrecision

    preds, targets = random_case(seed, n_images=6)
    ref = MeanAveragePrecision(iou_type=("bbox", "segm"), class_metrics=True, backend="faster_coco_eval")
    ref.update(
        [
            {**{k: p[k] for k in ("boxes", "scores", "labels")}, "masks": p["masks"][:, 0] > 0.5}
            for p in preds
        ],
        [{**{k: t[k] for k in ("boxes", "labels", "iscrowd")}, "masks": t["masks"].bool()} for t in targets],
    )
    expected = ref.compute()
    m = InstanceMetrics(["a", "b"])
    m.update(preds, targets)
    summary, per_class = m.compute()
    assert set(summary) == set(INSTANCE_SUMMARY_KEYS)
    assert 0 < summary["mask_map"] < 1  # a non-trivial case
    for key in ("map", "map_50", "map_75"):
        assert summary[key] == pytest.approx(float(expected["bbox_" + key]), abs=1e-6), key
        assert summary["mask_" + key] == pytest.approx(float(expected["segm_" + key]), abs=1e-6), key
    ref_per_class = dict(
        zip(expected["classes"].tolist(), expected["segm_map_per_class"].tolist(), strict=True)
    )
    assert per_class == {n: pytest.approx(ref_per_class[i + 1], abs=1e-6) for i, n in enumerate("ab")}
    # Boundary IoU <= mask IoU for every pair, so Boundary AP cannot exceed mask AP.
    assert summary["boundary_map"] <= summary["mask_map"] + 1e-9


# --- (d) DDP -----------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, store: str, result_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        preds, targets = random_case(7, n_images=5)
        results = {}
        for name, cut in (("3+2", 3), ("5+0", 5)):  # unequal shares; one rank without any image
            sl = slice(0, cut) if rank == 0 else slice(cut, None)
            m = InstanceMetrics(["a", "b"])
            m.update(preds[sl], targets[sl])
            results[name] = m.compute()
        if rank == 0:
            torch.save(results, Path(result_dir) / "ddp.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters: 10-25 s on a shared 2-core machine
def test_ddp_two_processes_equal_one_process(tmp_path: Path) -> None:
    spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = torch.load(tmp_path / "ddp.pt", weights_only=False)
    preds, targets = random_case(7, n_images=5)
    m = InstanceMetrics(["a", "b"])
    m.update(preds, targets)
    summary, per_class = m.compute()
    assert summary["conn_error"] > 0 and summary["mask_map"] > 0  # the case exercises both kinds of state
    for name, (ddp_summary, ddp_per_class) in results.items():
        assert ddp_summary == pytest.approx(summary, abs=1e-12), name
        assert ddp_per_class == pytest.approx(per_class, abs=1e-12), name


# --- (e) empty inputs, reset, factory, bad input ----------------------------------------------------------
def test_image_without_predictions_and_image_without_objects() -> None:
    m = InstanceMetrics(["a", "b"])
    m.update(
        [pred([], [], [], SIZE), pred([SQUARE], [0.9], [1], SIZE)],
        [target([SQUARE], [1], SIZE), target([], [], SIZE)],
    )
    summary, per_class = m.compute()
    # One object, never detected; the only detection is on the empty image: a false positive. AP 0.
    assert summary == {**dict.fromkeys(INSTANCE_SUMMARY_KEYS, 0.0)}
    assert per_class == {"a": 0.0}


def test_nothing_at_all_is_undefined_not_a_crash() -> None:
    m = InstanceMetrics(["a"])
    m.update([pred([], [], [], SIZE)], [target([], [], SIZE)])
    summary, per_class = m.compute()
    assert summary == {
        **dict.fromkeys(INSTANCE_SUMMARY_KEYS[:9], -1.0),
        "conn_error": 0.0,
        "broken_rate": 0.0,
    }
    assert per_class == {}


def test_reset_forgets_the_images() -> None:
    m = InstanceMetrics(["a"])
    m.update([pred([cut_columns(SQUARE, 19, 2)], [0.9], [1], SIZE)], [target([SQUARE], [1], SIZE)])
    assert m.compute()[0]["broken_rate"] == 1.0
    m.reset()
    m.update([pred([SQUARE], [0.9], [1], SIZE)], [target([SQUARE], [1], SIZE)])
    summary, _ = m.compute()
    assert (summary["mask_map"], summary["broken_rate"]) == (1.0, 0.0)


def test_labels_outside_the_classes_are_one_clear_error() -> None:
    m = InstanceMetrics(["a"])
    with pytest.raises(ValueError, match=r"prediction labels \[2\] outside 1..1"):
        m.update([pred([SQUARE], [0.9], [2], SIZE)], [target([SQUARE], [1], SIZE)])


def test_metrics_for_picks_the_metric_of_the_task() -> None:
    assert type(metrics_for(["a"], masks=False)) is DetectionMetrics
    assert type(metrics_for(["a"], masks=True)) is InstanceMetrics
