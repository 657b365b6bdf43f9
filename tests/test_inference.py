"""Whole-image / sliding-window inference and test-time augmentation against models whose exact behaviour
under translation, padding and flipping is known."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bcd_lightning.inference import (
    InferenceConfig,
    forward_padded,
    predict_scores,
    slide_inference,
    window_starts,
)
from bcd_lightning.utils.config_check import ConfigError
from support import compose_config


class Pixelwise(nn.Module):
    """A 1×1 convolution: each output pixel depends on its input pixel only (translation-equivariant,
    unaffected by padding). Like ``SegModel`` it refuses inputs not divisible by its output stride."""

    def __init__(self, classes: int = 4, output_stride: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        assert h % self.output_stride == 0 and w % self.output_stride == 0, (h, w)
        return self.conv(x)


class MirrorSymmetric(nn.Module):
    """3×3 convolutions whose kernels are left-right symmetric: ``f(flip(x)) == flip(f(x))``."""

    output_stride = 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)))


class LocalRow(nn.Module):
    """Logits = input + the row index *inside the window*: reveals how windows are averaged."""

    output_stride = 1

    def forward(self, x: Tensor) -> Tensor:
        rows = torch.arange(x.size(-2), dtype=x.dtype).view(1, 1, -1, 1)
        return x + rows


def test_window_starts_by_hand() -> None:
    assert window_starts(100, 40, 30) == [0, 30, 60]  # 60 + 40 = 100: exact fit
    assert window_starts(100, 40, 25) == [0, 25, 50, 60]  # last window moved back to end at 100
    assert window_starts(100, 40, 40) == [0, 40, 60]
    assert window_starts(40, 40, 10) == [0]
    assert window_starts(30, 40, 10) == [0]  # smaller than the window: padded, one window


def test_window_covering_image_equals_whole_exactly_on_a_real_model() -> None:
    from bcd_lightning.builders import build_model

    cfg = compose_config(["paths.output_dir=unused"])
    model = build_model(cfg.student).eval()
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        whole = model(image).logits
    for stride in ((64, 96), (16, 16)):  # the stride is irrelevant when one window covers the image
        cfg_slide = InferenceConfig(mode="slide", window=(64, 96), stride=stride)
        assert torch.equal(predict_scores(model, image, cfg_slide), whole)
    assert torch.equal(predict_scores(model, image, InferenceConfig()), whole)


@pytest.mark.parametrize(
    ("size", "window", "stride"),
    [
        ((70, 90), (32, 32), (20, 20)),  # overlapping, sizes not multiples of anything
        ((64, 96), (32, 64), (16, 32)),
        ((50, 40), (64, 64), (32, 32)),  # image smaller than the window: padded
        ((100, 50), (64, 96), (32, 64)),  # taller than the window, narrower than it
    ],
)
def test_overlapping_windows_on_translation_equivariant_model_equal_whole(size, window, stride) -> None:
    model = Pixelwise()
    image = torch.randn(2, 3, *size)
    expected = model.conv(image)  # the 1×1 conv on the unpadded image: the ground truth
    with torch.no_grad():
        got = slide_inference(model, image, window, stride)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_overlapping_logits_are_averaged() -> None:
    image = torch.zeros(1, 1, 10, 3)
    got = slide_inference(LocalRow(), image, (4, 3), (3, 3))
    # Windows start at rows 0, 3, 6 (window_starts(10, 4, 3)): pixel y gets the mean of y - start over the
    # windows that contain it.
    starts = [0, 3, 6]
    expected = [
        sum(y - s for s in starts if s <= y < s + 4) / sum(s <= y < s + 4 for s in starts) for y in range(10)
    ]
    torch.testing.assert_close(got[0, 0, :, 0], torch.tensor(expected), rtol=0, atol=1e-6)
    assert expected[3] == 1.5 and expected[9] == 3  # row 3 in windows 0 and 3; row 9 only in window 6


def test_cityscapes_size_full_resolution() -> None:
    model = Pixelwise(classes=3)
    image = torch.randn(1, 3, 1024, 2048)
    expected = model.conv(image)
    slide = InferenceConfig(mode="slide", window=(512, 1024), stride=(341, 683))
    torch.testing.assert_close(predict_scores(model, image, slide), expected, rtol=0, atol=1e-6)
    odd = torch.randn(1, 3, 1000, 1900)  # not a multiple of the output stride: padded, then cropped
    torch.testing.assert_close(predict_scores(model, odd), model.conv(odd), rtol=0, atol=1e-6)


def test_forward_padded_pads_to_the_output_stride_and_crops() -> None:
    model = Pixelwise(output_stride=16)
    image = torch.randn(1, 3, 20, 37)
    got = forward_padded(model, image)
    assert got.shape == (1, 4, 20, 37)
    torch.testing.assert_close(got, model.conv(image), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_tta_on_flip_equivariant_model_equals_no_tta(mode: str) -> None:
    model = MirrorSymmetric()
    # Width 32, window 16, stride 8: window columns 0, 8, 16 are their own mirror image (a layout that is
    # not, e.g. width 30, makes sliding inference itself not flip-equivariant near the window edges).
    image = torch.randn(2, 3, 24, 32)
    window = {"window": (16, 16), "stride": (8, 8)} if mode == "slide" else {}
    base = InferenceConfig(mode=mode, **window)
    flipped = InferenceConfig(mode=mode, flip=True, **window)
    with torch.no_grad():
        assert torch.allclose(model(image.flip(-1)), model(image).flip(-1), atol=1e-6)  # the premise
        expected = predict_scores(model, image, base).softmax(1)  # no TTA: logits; TTA: probabilities
    torch.testing.assert_close(predict_scores(model, image, flipped), expected, rtol=0, atol=1e-6)


def test_flip_tta_on_an_asymmetric_model_averages_the_unflipped_view() -> None:
    image = torch.randn(1, 3, 8, 8)
    bias = torch.arange(3.0).view(1, 3, 1, 1) * torch.arange(8.0).view(1, 1, 1, -1)

    def skewed(x: Tensor) -> Tensor:  # class c gains c × column: flipping changes the prediction
        return x + bias

    flipped = predict_scores(skewed, image, InferenceConfig(flip=True))
    # The flipped view's logits, flipped back: flip(flip(x) + bias) = x + flip(bias).
    expected = (skewed(image).softmax(1) + (image + bias.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(flipped, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(flipped, skewed(image).softmax(1), atol=1e-3)


def test_multiscale_tta_on_constant_image_equals_single_scale() -> None:
    model = Pixelwise()
    image = torch.randn(1, 3, 1, 1).expand(2, 3, 64, 96).contiguous()  # constant per image
    expected = model.conv(image).softmax(1)
    for mode in ("whole", "slide"):
        cfg = InferenceConfig(
            mode=mode, window=(64, 64), stride=(32, 32), scales=(0.5, 0.75, 1.0, 1.5), flip=True
        )
        got = predict_scores(model, image, cfg)  # 0.75 × 64 = 48: padded to the output stride
        assert got.shape == (2, 4, 64, 96)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_tta_scores_are_probabilities() -> None:
    image = torch.randn(1, 3, 32, 32)
    scores = predict_scores(MirrorSymmetric(), image, InferenceConfig(scales=(0.5, 1.0)))
    torch.testing.assert_close(scores.sum(1), torch.ones(1, 32, 32), rtol=0, atol=1e-6)
    assert scores.min() >= 0


def test_config_defaults_and_normalisation() -> None:
    cfg = InferenceConfig.from_config({"mode": "slide", "window": [512, 1024], "stride": None})
    assert cfg.window == (512, 1024) and cfg.stride == (342, 683)  # 2/3 of the window, rounded up
    assert InferenceConfig.from_config({"mode": "slide", "window": 64}).window == (64, 64)
    assert InferenceConfig.from_config(None) == InferenceConfig()
    assert InferenceConfig(scales=[1.0, 2]).scales == (1.0, 2.0)
    assert InferenceConfig(flip=True, scales=(1.0, 2.0)).num_views == 4
    assert InferenceConfig(mode="whole", window=(8, 8)).stride is None  # whole ignores the stride


@pytest.mark.parametrize(
    ("node", "pattern"),
    [
        ({"mode": "sliding"}, r"inference\.mode='sliding' must be one of \['whole', 'slide'\]"),
        ({"mode": "slide"}, r"inference\.mode=slide needs inference\.window"),
        (
            {"mode": "slide", "window": [64, 64], "stride": [65, 32]},
            r"inference\.stride=\[65, 32\] is larger",
        ),
        ({"mode": "slide", "window": [64, 0]}, r"inference\.window=\[64, 0\] must be \[height, width\]"),
        ({"mode": "slide", "window": [64, 64, 3]}, r"inference\.window"),
        ({"window": "64"}, r"inference\.window='64'"),
        ({"stride": [1.5, 2]}, r"inference\.stride"),
        ({"scales": []}, r"inference\.scales=\[\] must be a non-empty list"),
        ({"scales": [1.0, -0.5]}, r"inference\.scales"),
        ({"flip": "yes"}, r"inference\.flip='yes' must be true or false"),
        ({"strid": [1, 1]}, r"Unknown key 'inference\.strid'\. Did you mean 'stride'\?"),
    ],
)
def test_bad_config_names_the_key(node: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        InferenceConfig.from_config(node)


def test_eval_yaml_inference_section_parses() -> None:
    from bcd_lightning.builders import plain

    cfg = compose_config(["ckpt_path=x.ckpt", "paths.output_dir=x"], "eval")
    assert InferenceConfig.from_config(plain(cfg.inference)) == InferenceConfig()
    slide = compose_config(
        ["ckpt_path=x.ckpt", "paths.output_dir=x", "inference.mode=slide", "inference.window=[32,48]"], "eval"
    )
    assert InferenceConfig.from_config(plain(slide.inference)).stride == (22, 32)
