"""ConnectivityError (Betti-0) and clDice: hand-computed cases and a flood-fill reference."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from bcd_lightning.metrics import ConnectivityError
from bcd_lightning.metrics.morphology import NO_CLASS

IGNORE = 255


def two_blobs_vs_one() -> tuple[torch.Tensor, torch.Tensor]:
    """Image 0: GT has two class-1 blobs, pred merges them and adds a class-2 blob. Image 1: background."""
    target = torch.zeros(2, 12, 12, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    target[0, 2:5, 7:10] = 1
    pred = target.clone()
    pred[0, 2:5, 5:7] = 1
    pred[0, 8:10, 8:10] = 2
    return pred, target


def test_hand_computed_errors() -> None:
    pred, target = two_blobs_vs_one()
    m = ConnectivityError(3)
    m.update(pred, target)
    # Pairs: image 0 classes 0/1/2 with errors 0, |1-2|, |1-0|; image 1 class 0 only, error 0.
    assert m.error_sum.tolist() == [0, 1, 1] and m.pairs.tolist() == [2, 1, 1]
    assert m.compute().item() == pytest.approx(2 / 4)
    torch.testing.assert_close(m.per_class(), torch.tensor([0.0, 1.0, 1.0]))


def test_perfect_prediction_and_absent_class_is_nan() -> None:
    _, target = two_blobs_vs_one()
    m = ConnectivityError(4)
    m.update(target, target)
    assert m.compute().item() == 0
    assert m.per_class()[:2].tolist() == [0, 0] and m.per_class()[2:].isnan().all()


def test_connectivity_4_vs_8() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 1:4, 1:4] = 1
    target[0, 4:7, 4:7] = 1  # corner contact
    pred = target.clone()
    pred[0, 3, 4] = 1  # a bridge: one component under both
    assert ConnectivityError(2, connectivity=8)(pred, target).item() == 0
    assert ConnectivityError(2, connectivity=4)(pred, target).item() == pytest.approx(1 / 2)


def test_ignored_pixels_split_both_maps_alike() -> None:
    target = torch.zeros(1, 6, 12, dtype=torch.long)
    target[0, 2:4, 1:11] = 1
    target[0, :, 6] = IGNORE  # cuts the bar and the background in two, in GT...
    pred = torch.zeros_like(target)
    pred[0, 2:4, 1:11] = 1  # ...and in the prediction, whatever it says there
    m = ConnectivityError(2)
    m.update(pred, target)
    assert m.error_sum.tolist() == [0, 0] and m.pairs.tolist() == [1, 1]


BfsCounts = Callable[[torch.Tensor, int, int], list[int]]


def ref_errors(
    bfs: BfsCounts, pred: torch.Tensor, target: torch.Tensor, k: int, connectivity: int
) -> tuple[list, list]:
    err, pairs = [0] * k, [0] * k
    for p, t in zip(pred, target, strict=True):
        ignored = t == IGNORE
        cp = bfs(torch.where(ignored, NO_CLASS, p), k, connectivity)
        cg = bfs(torch.where(ignored, NO_CLASS, t), k, connectivity)
        for c in range(k):
            if cp[c] or cg[c]:
                err[c] += abs(cp[c] - cg[c])
                pairs[c] += 1
    return err, pairs


def random_batch(seed: int, b: int = 4, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (b, 9, 10), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    pred = target.clone()
    flip = torch.rand(target.shape, generator=g) < 0.15
    pred[flip] = torch.randint(0, k, (int(flip.sum()),), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.05] = IGNORE
    return pred, target


@pytest.mark.parametrize("connectivity", [4, 8])
def test_matches_flood_fill_reference(connectivity: int, bfs_component_counts: BfsCounts) -> None:
    pred, target = random_batch(connectivity)
    m = ConnectivityError(4, connectivity=connectivity)
    m.update(pred, target)
    err, pairs = ref_errors(bfs_component_counts, pred, target, 4, connectivity)
    assert m.error_sum.tolist() == err and m.pairs.tolist() == pairs
    assert m.compute().item() == pytest.approx(sum(err) / sum(pairs))


def test_state_merge_and_order_independence() -> None:
    pred, target = random_batch(3, b=6)
    whole, rank0, rank1 = (ConnectivityError(4) for _ in range(3))
    whole.update(pred, target)
    rank0.update(pred[3:], target[3:])
    rank1.update(pred[:3], target[:3])
    for name, value in rank1.metric_state.items():  # what dist_reduce_fx="sum" does across ranks
        getattr(rank0, name).add_(value)
    assert all(v.dtype == torch.long for v in rank0.metric_state.values())
    for name, value in whole.metric_state.items():
        assert torch.equal(getattr(rank0, name), value), name


def test_scores_input_and_output_types() -> None:
    pred, target = random_batch(5)
    scores = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    m = ConnectivityError(4)
    m.update(scores, target)
    out = m.compute()
    assert out.dim() == 0 and out.dtype == torch.float32 and out.device == target.device
    ref = ConnectivityError(4)
    ref.update(pred, target)
    assert out.item() == ref.compute().item()
