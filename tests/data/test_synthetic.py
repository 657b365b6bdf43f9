"""Tests for the embedded procedural dataset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bcd_lightning.data.synthetic import CLASS_NAMES, PALETTE, SyntheticSegmentation

VESSEL = 3


def _components(fg: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of a bool [H, W] mask (0 = background), by flood fill."""
    h, w = fg.shape
    labels = torch.zeros(h, w, dtype=torch.long)
    todo = {(int(y), int(x)) for y, x in fg.nonzero()}
    n = 0
    while todo:
        n += 1
        stack = [todo.pop()]
        while stack:
            y, x = stack.pop()
            labels[y, x] = n
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if (y + dy, x + dx) in todo:
                        todo.remove((y + dy, x + dx))
                        stack.append((y + dy, x + dx))
    return labels


def _n_components(fg: torch.Tensor) -> int:
    return int(_components(fg).max())


def _dilate(m: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(m[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


def test_item_shapes_dtypes_and_ranges() -> None:
    threads = torch.get_num_threads()
    raw = SyntheticSegmentation(3, image_size=(48, 80), seed=0, normalize=False)
    norm = SyntheticSegmentation(3, image_size=(48, 80), seed=0, normalize=True)
    assert len(raw) == 3
    assert raw.num_classes == 4 and raw.ignore_index == 255
    assert raw.class_names == CLASS_NAMES == ("background", "blob_a", "blob_b", "vessel")
    for i in range(3):
        item = raw[i]
        assert set(item) == {"image", "mask"}
        image, mask = item["image"], item["mask"]
        assert image.shape == (3, 48, 80) and image.dtype == torch.float32
        assert mask.shape == (48, 80) and mask.dtype == torch.int64
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert image.std() > 0.02  # not a flat image
        assert set(mask.unique().tolist()) <= {0, 1, 2, 3}
        # normalize=True is exactly ImageNet normalisation of the [0, 1] image.
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        torch.testing.assert_close(norm[i]["image"], (image - mean) / std)
        assert torch.equal(norm[i]["mask"], mask)
        # render_raw gives the same un-normalised image for visualisation.
        raw_image, raw_mask = norm.render_raw(i)
        assert torch.equal(raw_image, image) and torch.equal(raw_mask, mask)
    # Rendering runs single-threaded internally but must leave the caller's torch thread count alone.
    assert torch.get_num_threads() == threads


def test_deterministic_per_seed_and_index_regardless_of_order_and_cache() -> None:
    n = 6
    forward = SyntheticSegmentation(n, image_size=64, seed=7)
    first = [forward[i] for i in range(n)]
    again = [forward[i] for i in range(n)]  # from the cache
    fresh_reverse = SyntheticSegmentation(n, image_size=64, seed=7, cache=False)
    reverse = {i: fresh_reverse[i] for i in reversed(range(n))}
    # A longer dataset: sample i must not depend on the dataset length either.
    longer = SyntheticSegmentation(50, image_size=64, seed=7)
    for i in range(n):
        for other in (again[i], reverse[i], longer[i]):
            assert torch.equal(first[i]["image"], other["image"])
            assert torch.equal(first[i]["mask"], other["mask"])
    assert torch.equal(forward[-1]["mask"], first[n - 1]["mask"])


def test_worker_processes_give_the_same_samples() -> None:
    ds = SyntheticSegmentation(8, image_size=48, seed=3, cache=False)
    batches = list(DataLoader(ds, batch_size=4, num_workers=2, shuffle=False))
    images = torch.cat([b["image"] for b in batches])
    masks = torch.cat([b["mask"] for b in batches])
    for i in range(8):
        assert torch.equal(images[i], ds[i]["image"]) and torch.equal(masks[i], ds[i]["mask"])


def test_different_seeds_and_indices_differ() -> None:
    a = SyntheticSegmentation(4, image_size=64, seed=0)
    b = SyntheticSegmentation(4, image_size=64, seed=1)
    for i in range(4):
        assert not torch.equal(a[i]["image"], b[i]["image"])
        assert not torch.equal(a[i]["mask"], b[i]["mask"])
    assert not torch.equal(a[0]["mask"], a[1]["mask"])


@pytest.mark.parametrize("size", [32, (40, 72), 96])
def test_every_image_contains_every_class(size: int | tuple[int, int]) -> None:
    # Documented guarantee: each class covers >= max(8, 0.2% of the pixels) in every sample.
    ds = SyntheticSegmentation(8, image_size=size, seed=11, normalize=False)
    h, w = ds.image_size
    need = max(8, int(0.002 * h * w))
    totals = torch.zeros(4, dtype=torch.long)
    for i in range(len(ds)):
        counts = torch.bincount(ds[i]["mask"].flatten(), minlength=4)
        assert counts.numel() == 4
        assert (counts >= need).all(), f"sample {i}: class pixel counts {counts.tolist()}"
        totals += counts
    # Plenty of background, but the foreground classes are not negligible overall.
    frac = totals.float() / totals.sum()
    assert frac[0] > 0.4 and (frac[1:] > 0.02).all()


def test_vessels_are_thin() -> None:
    ds = SyntheticSegmentation(6, image_size=128, seed=2)
    for i in range(len(ds)):
        vessel = ds[i]["mask"] == VESSEL
        # Vessels are at most ~3-4 px wide: almost no vessel pixel has a fully-vessel 5x5 neighbourhood.
        core = -F.max_pool2d(-vessel[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0
        assert core.sum() <= 0.05 * vessel.sum()
        assert vessel.float().mean() < 0.15


def test_occlusion_gaps_keep_the_label_continuous() -> None:
    ds = SyntheticSegmentation(8, image_size=128, seed=5, normalize=False)
    gap_pixels = 0
    split_somewhere = False
    for i in range(len(ds)):
        d = ds.debug_sample(i)
        assert torch.equal(d["image"], ds[i]["image"]) and torch.equal(d["mask"], ds[i]["mask"])
        occ, vessel = d["occlusion"], d["mask"] == VESSEL
        assert occ.dtype == torch.bool and occ.shape == vessel.shape
        if not occ.any():
            continue
        gap_pixels += int(occ.sum())
        # Inside a gap the label is vessel ...
        assert vessel[occ].all()
        # ... but the image shows what is under the vessel, not the vessel,
        diff = (d["image"] - d["image_without_vessels"]).abs().amax(0)
        assert diff[occ].max() <= 1.0 / 255 + 1e-6
        # while where the vessel is drawn the image clearly differs from the scene without it.
        drawn = vessel & ~_dilate(_dilate(occ))
        assert diff[drawn].mean() > 0.05
        # Each gap is bridged: it touches vessel-labelled pixels that are drawn in the image.
        comps = _components(occ)
        for c in comps.unique()[1:]:
            assert (_dilate(comps == c) & vessel & ~occ).any()
        # Removing the gaps from the label disconnects vessels: without them the label would be broken.
        split_somewhere |= _n_components(vessel & ~occ) > _n_components(vessel)
    assert gap_pixels > 50
    assert split_somewhere


def test_cache_is_filled_lazily_and_optional() -> None:
    cached = SyntheticSegmentation(5, image_size=32, seed=0, cache=True)
    assert len(cached._cache) == 0
    cached[2]
    assert set(cached._cache) == {2}
    cached.fill_cache()
    assert set(cached._cache) == set(range(5))
    uncached = SyntheticSegmentation(5, image_size=32, seed=0, cache=False)
    uncached[2]
    uncached.fill_cache()
    assert len(uncached._cache) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_samples": 0},
        {"num_samples": -3},
        {"num_samples": 2.5},
        {"num_samples": 4, "image_size": 31},
        {"num_samples": 4, "image_size": (64, 16)},
        {"num_samples": 4, "image_size": (64,)},
        {"num_samples": 4, "image_size": "128"},
        {"num_samples": 4, "image_size": True},
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticSegmentation(**kwargs)


def test_index_out_of_range_raises_index_error() -> None:
    ds = SyntheticSegmentation(3, image_size=32)
    for bad in (3, 100, -4):
        with pytest.raises(IndexError):
            ds[bad]
    with pytest.raises(TypeError):
        ds[1.0]  # type: ignore[index]


def test_palette() -> None:
    assert len(PALETTE) == 4 and len(set(PALETTE)) == 4
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in PALETTE)
