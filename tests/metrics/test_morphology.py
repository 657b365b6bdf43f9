"""Shared morphology helpers against plain references (max_pool, iterated 3×3 erosion, BFS flood fill)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from bcd_lightning.metrics.morphology import (
    NO_CLASS,
    boundary_band,
    count_components,
    label_components,
    sliding_reduce_1d,
    window_reduce,
)

BfsCounts = Callable[[torch.Tensor, int, int], list[int]]


def erode(mask: torch.Tensor, radius: int, border_is_background: bool = True) -> torch.Tensor:
    """Binary erosion by a (2r+1)² square (r iterations of a 3×3 erosion); zero-padded frame with
    ``border_is_background`` (as ``mask_to_boundary`` of Cheng et al.), else a neutral frame."""
    m = mask.to(torch.uint8)
    return window_reduce(m, radius, torch.minimum, 0 if border_is_background else 1).bool()


def spiral(h: int, w: int) -> torch.Tensor:
    """1-pixel-wide rectangular spiral with 1-pixel gaps between its arms: one long path."""
    img = torch.zeros(h, w, dtype=torch.int32)
    legs = [w - 1, h - 1, w - 1]
    hh, ww = h - 3, w - 3
    while hh > 0 or ww > 0:
        legs += [hh, ww]
        hh, ww = hh - 2, ww - 2
    y = x = 0
    img[0, 0] = 1
    for i, length in enumerate(legs):
        if length <= 0:
            break
        dy, dx = ((0, 1), (1, 0), (0, -1), (-1, 0))[i % 4]
        y2, x2 = y + dy * length, x + dx * length
        img[min(y, y2) : max(y, y2) + 1, min(x, x2) : max(x, x2) + 1] = 1
        y, x = y2, x2
    return img


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13])
def test_sliding_max_matches_max_pool(k: int) -> None:
    x = torch.randn(2, 3, 17, 23)
    got = sliding_reduce_1d(sliding_reduce_1d(x, k, -1, torch.maximum), k, -2, torch.maximum)
    torch.testing.assert_close(got, F.max_pool2d(x, k, stride=1), rtol=0, atol=0)


def test_window_reduce_or_and_padding() -> None:
    x = torch.zeros(1, 5, 5, dtype=torch.long)
    x[0, 2, 2] = 0b101
    x[0, 0, 4] = 0b010
    out = window_reduce(x, 1, torch.bitwise_or, 0)
    assert out[0, 1, 1] == 0b101 and out[0, 1, 3] == 0b111 and out[0, 4, 4] == 0
    assert out.shape == x.shape


def test_erode_equals_iterated_3x3_with_zero_border() -> None:
    torch.manual_seed(0)
    mask = torch.rand(3, 20, 24) > 0.25
    for d in (1, 2, 4):
        ref = mask.float().unsqueeze(1)
        for _ in range(d):  # cv2.erode on a zero-padded mask, one 3×3 step at a time
            ref = -F.max_pool2d(-F.pad(ref, (1, 1, 1, 1), value=0.0), 3, stride=1)
        assert torch.equal(erode(mask, d), ref.squeeze(1).bool())


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64])
@pytest.mark.parametrize("border", [True, False])
def test_boundary_band_is_mask_minus_erosion_for_every_class(border: bool, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (2, 8, 9), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    labels = labels.to(dtype)  # int64 once overflowed F.pad's fill value (the dtype's own limit)
    labels[torch.rand(labels.shape, generator=g) < 0.05] = NO_CLASS
    for d in (1, 2, 3):
        band = boundary_band(labels, d, border_is_boundary=border)
        for c in range(3):
            mask = labels == c
            assert torch.equal(band & mask, mask & ~erode(mask, d, border_is_background=border))


def test_component_patterns() -> None:
    diag = torch.zeros(1, 8, 8, dtype=torch.int32)
    diag[0, 1:4, 1:4] = 1
    diag[0, 4:7, 4:7] = 1  # touches the first square only at a corner
    assert count_components(diag, 2, 8)[0, 1] == 1
    assert count_components(diag, 2, 4)[0, 1] == 2

    dots = torch.zeros(1, 9, 9, dtype=torch.int32)
    dots[0, ::2, ::2] = 1  # 25 isolated dots, also separated under 8-connectivity
    assert count_components(dots, 2, 8)[0].tolist() == [1, 25]
    assert count_components(dots, 2, 4)[0].tolist() == [1, 25]

    snake = spiral(64, 96)[None]
    assert count_components(snake, 2, 4)[0, 1] == 1
    assert count_components(snake, 2, 8)[0, 1] == 1
    assert count_components(snake, 2, 4)[0, 0] == 1  # the gap between the arms is one spiral too


def test_long_spiral_is_one_component_and_fast() -> None:
    snake = spiral(256, 256)[None]  # path of ~33k pixels: plain label propagation would need ~33k rounds
    assert count_components(snake, 2, 8)[0, 1] == 1


def test_no_class_pixels_split_and_are_not_counted() -> None:
    lab = torch.zeros(1, 5, 9, dtype=torch.int32)
    lab[0, :, 4] = NO_CLASS
    assert count_components(lab, 1, 8)[0, 0] == 2
    ids = label_components(lab, 8)[0]
    assert ids[0, 0] == ids[4, 3] and ids[0, 0] != ids[0, 5] and ids[0, 4] != ids[0, 0]


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("shape", [(19, 23), (1, 17), (13, 1), (2, 2)])
def test_components_match_bfs_on_random_maps(
    connectivity: int, shape: tuple[int, int], bfs_component_counts: BfsCounts
) -> None:
    g = torch.Generator().manual_seed(connectivity)
    for density in (0.3, 0.5, 0.7):
        for block in (1, 3):  # pixel noise, and blocky regions with long runs
            h, w = (-(-shape[0] // block), -(-shape[1] // block))
            labels = (torch.rand(4, h, w, generator=g) < density).int()
            labels[torch.rand(labels.shape, generator=g) < 0.1] = 2
            labels[torch.rand(labels.shape, generator=g) < 0.05] = NO_CLASS
            labels = labels.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, : shape[0], : shape[1]]
            counts = count_components(labels.contiguous(), 3, connectivity)
            for i in range(labels.size(0)):
                assert counts[i].tolist() == bfs_component_counts(labels[i], 3, connectivity)
