"""Joint transforms: image and mask stay aligned, mask labels are never interpolated, padding is ignore."""

from __future__ import annotations

import random

import pytest
import torch

from bcd_lightning.data import EvalTransform, TrainTransform

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# One saturated colour per class, far from each other and from the mean colour used for padding.
COLOURS = torch.tensor([[255, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 0]], dtype=torch.uint8)


def checkerboard(h: int = 96, w: int = 128, block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask of 8x8 blocks whose class is (bx + 2·by) mod 4 (not mirror-symmetric, so a flip of only
    one of image/mask is visible) and an image painting each block in its class colour."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    mask = ((xx // block) + 2 * (yy // block)) % 4
    image = COLOURS[mask].permute(2, 0, 1).contiguous()
    return image, mask


def denormalise(image: torch.Tensor) -> torch.Tensor:
    return (image * STD + MEAN) * 255.0


def classify_pixels(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest class colour per pixel, whether the pixel is a pure colour, i.e. not an edge blend)."""
    rgb = denormalise(image).permute(1, 2, 0)  # [H, W, 3]
    dist = (rgb[..., None, :] - COLOURS.float()).norm(dim=-1)  # [H, W, 4]
    best, cls = dist.min(-1)
    return cls, best < 20.0


@pytest.mark.parametrize("seed", range(12))
def test_checkerboard_stays_aligned(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    image, mask = checkerboard()
    t = TrainTransform(crop_size=[64, 80], scale_range=[0.5, 2.0], hflip=0.5, ignore_index=255)
    out_image, out_mask = t(image, mask)
    assert out_image.shape == (3, 64, 80) and out_mask.shape == (64, 80)
    cls, pure = classify_pixels(out_image)
    labelled = out_mask != 255
    # Every pure-coloured pixel carries exactly its colour's label; blends exist only at block edges.
    assert torch.equal(cls[pure & labelled], out_mask[pure & labelled])
    assert (pure & labelled).sum() > 0.6 * labelled.sum()
    # Padded (ignore) pixels are the mean colour in the image: 0 after normalisation.
    assert out_image[:, ~labelled].abs().max() < 0.02 if (~labelled).any() else True


def test_flip_moves_image_and_mask_together() -> None:
    image, mask = checkerboard(32, 32)
    t = TrainTransform(crop_size=None, scale_range=None, hflip=1.0)
    out_image, out_mask = t(image, mask)
    assert torch.equal(out_mask, mask.flip(-1))
    cls, pure = classify_pixels(out_image)
    assert pure.all() and torch.equal(cls, mask.flip(-1))


@pytest.mark.parametrize("seed", range(4))
def test_mask_labels_are_never_interpolated(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    values = torch.tensor([3, 7, 200])
    mask = values[torch.randint(0, 3, (50, 70))]
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    t = TrainTransform(crop_size=90, scale_range=[0.37, 1.9], hflip=0.5, color_jitter=0.4, hue=0.1)
    _, out_mask = t(image, mask)
    # Bilinear resizing would create in-between values (e.g. 5 between 3 and 7).
    assert set(out_mask.unique().tolist()) <= {3, 7, 200, 255}
    assert out_mask.dtype == torch.int64


def test_crop_pads_small_images_with_ignore() -> None:
    image = torch.full((3, 20, 30), 10, dtype=torch.uint8)
    mask = torch.ones(20, 30, dtype=torch.int64)
    out_image, out_mask = TrainTransform(crop_size=[40, 50], scale_range=None, hflip=0.0)(image, mask)
    assert out_mask.shape == (40, 50)
    assert int((out_mask == 1).sum()) == 20 * 30 and int((out_mask == 255).sum()) == 40 * 50 - 20 * 30
    padded = out_mask == 255
    assert out_image[:, padded].abs().max() < 0.02  # mean colour
    expected = (10 / 255.0 - MEAN) / STD  # the original pixels, normalised
    assert torch.allclose(out_image[:, ~padded].view(3, -1), expected.view(3, 1).expand(3, 600), atol=1e-5)


def test_eval_transform_is_normalisation_and_stride_padding_only() -> None:
    image = torch.randint(0, 256, (3, 33, 64), dtype=torch.uint8)
    mask = torch.randint(0, 5, (33, 64))
    out_image, out_mask = EvalTransform(pad_to_multiple=32, ignore_index=99)(image, mask)
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
    assert torch.equal(out_mask[:33], mask) and (out_mask[33:] == 99).all()
    assert torch.allclose(out_image[:, :33], (image.float() / 255.0 - MEAN) / STD, atol=1e-6)
    same_image, same_mask = EvalTransform(pad_to_multiple=1)(image, mask)
    assert same_image.shape == (3, 33, 64) and torch.equal(same_mask, mask)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_size": [0, 4]}, "crop_size"),
        ({"crop_size": [1, 2, 3]}, "crop_size"),
        ({"scale_range": [2.0, 1.0]}, "scale_range"),
        ({"hflip": 1.5}, "hflip"),
        ({"hue": 0.7}, "hue"),
    ],
)
def test_bad_transform_options_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainTransform(**kwargs)
