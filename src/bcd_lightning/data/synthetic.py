"""Procedural, seeded segmentation data: the embedded default dataset.

Every sample is rendered from its own ``torch.Generator`` seeded from ``(seed, index)``, so the data are
exactly reproducible whatever the access order, the number of workers or the cache, and the labels are exact.

Scene, back to front:

* background: a smooth random colour field plus fine noise;
* irregular blobs (polar-radius shapes with random harmonics) of two classes whose colours come from the
  *same* distribution, so only texture tells them apart: ``blob_a`` carries one oriented grating, ``blob_b``
  a plaid of two crossed gratings of similar frequency. Telling them apart needs local context and capacity,
  which is what should separate a large teacher from a tiny student;
* thin, tapering (~3 px to ~1 px), branching "vessels" drawn over everything. Short stretches of each vessel
  are occluded in the image while the label stays continuous, so recovering them needs context along the
  structure; thin structures and boundaries are where boundary/context distillation should help;
* a slight blur and additive noise; the image is then quantised to 8 bits, like a real image.

Guarantee: every sample contains all four classes, each on at least ``min_class_pixels(h, w)`` pixels
(the scene is redrawn from the same generator until it does, which keeps it deterministic).
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from bcd_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD

CLASS_NAMES: tuple[str, ...] = ("background", "blob_a", "blob_b", "vessel")
# RGB colours for visualising masks, one per class.
PALETTE: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (230, 159, 0), (86, 180, 233), (213, 94, 0))

BACKGROUND, BLOB_A, BLOB_B, VESSEL = range(4)
MIN_IMAGE_SIZE = 32
_MAX_ATTEMPTS = 50
# A pixel this much further than a vessel point's radius from every drawn point is untouched by the vessel
# even after the blur (coverage reaches radius + 0.5, the 5x5 blur another 2*sqrt(2)): the occlusion mask
# (debug) only reports such pixels, so "the image shows what is under the vessel" holds exactly there.
_OCCLUSION_MARGIN = 3.5


def min_class_pixels(height: int, width: int) -> int:
    """The per-class pixel count that every sample is guaranteed to reach (0.2% of the image, at least 8)."""
    return max(8, int(0.002 * height * width))


@dataclass
class _Rendered:
    image: Tensor  # uint8 [3, H, W]
    mask: Tensor  # uint8 [H, W]
    occlusion: Tensor | None = None  # bool [H, W]: vessel in the label, nothing of it in the image
    without_vessels: Tensor | None = None  # uint8 [3, H, W]: same scene, blur and noise, no vessels


def _uniform(g: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(*shape, generator=g)


@functools.lru_cache(maxsize=64)
def _cubic_upsampler(n_out: int, n_in: int) -> Tensor:
    """[n_out, n_in] matrix of 1-D bicubic interpolation (bicubic is separable, and two small matmuls are
    much cheaper than F.interpolate on every sample)."""
    eye = torch.eye(n_in).view(n_in, 1, n_in, 1)
    m = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=True)
    return m.view(n_in, n_out).T.contiguous()


def _smooth_noise(g: torch.Generator, channels: int, h: int, w: int, cells: int) -> Tensor:
    """Zero-mean, unit-ish-std noise that varies over ``cells`` periods across the image: [C, H, W]."""
    grid = torch.randn(channels, cells + 1, cells + 1, generator=g)
    return _cubic_upsampler(h, cells + 1) @ grid @ _cubic_upsampler(w, cells + 1).T


def _blobs(g: torch.Generator, yy: Tensor, xx: Tensor) -> tuple[Tensor, Tensor]:
    """Random polar-radius blobs. Returns (inside [B, H, W] bool, class [B] long), painted in order."""
    h, w = yy.shape
    size = min(h, w)
    n = int(torch.randint(3, 7, (1,), generator=g))
    # At least one blob of each class; the painting order is shuffled so neither class is always on top.
    classes = torch.cat(
        [torch.tensor([BLOB_A, BLOB_B]), torch.randint(BLOB_A, BLOB_B + 1, (n - 2,), generator=g)]
    )
    classes = classes[torch.randperm(n, generator=g)]
    cy = _uniform(g, 0.1, 0.9, n) * h
    cx = _uniform(g, 0.1, 0.9, n) * w
    r0 = _uniform(g, 0.08, 0.17, n) * size
    k = torch.arange(2, 7, dtype=torch.float32)  # harmonics 2..6 give irregular but smooth outlines
    amp = _uniform(g, 0.0, 1.0, n, len(k)) * (0.35 / k)
    phase = _uniform(g, 0.0, 2 * math.pi, n, len(k))
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    # The radius is a function of the angle only: tabulate it and look it up (cos over [n, k, H, W] is slow).
    bins = 720
    angles = torch.arange(bins, dtype=torch.float32) * (2 * math.pi / bins) - math.pi
    wobble = (amp[:, :, None] * torch.cos(k[None, :, None] * angles + phase[..., None])).sum(1)  # [n, bins]
    radius_table = r0[:, None] * (1.0 + wobble)
    theta_bin = ((torch.atan2(dy, dx) + math.pi) * (bins / (2 * math.pi))).long().clamp_(0, bins - 1)
    radius = torch.gather(radius_table, 1, theta_bin.view(n, -1)).view(n, h, w)
    inside = dx.square() + dy.square() < radius.square()
    return inside, classes


def _texture(g: torch.Generator, cls: int, yy: Tensor, xx: Tensor) -> Tensor:
    """Zero-mean luminance texture [H, W] with unit amplitude; the only cue separating the blob classes."""
    period = float(_uniform(g, 5.0, 8.0, 1))
    angle = float(_uniform(g, 0.0, math.pi, 1))
    phase = _uniform(g, 0.0, 2 * math.pi, 2)
    freq = 2 * math.pi / period
    u = (xx * math.cos(angle) + yy * math.sin(angle)) * freq
    if cls == BLOB_A:  # one oriented grating: stripes
        return torch.sin(u + phase[0])
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) * freq
    # Plaid (dots): same frequency, amplitude scaled to the same standard deviation as the stripes.
    return math.sqrt(2.0) * torch.sin(u + phase[0]) * torch.sin(v + phase[1])


def _grow(
    g: torch.Generator, start: Tensor, heading: Tensor, r_start: Tensor, length: Tensor, step: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Grow K smooth random-walk paths sampled every ``step`` px.

    Returns points [K, N, 2] (y, x), headings [K, N], radii [K, N] (tapering to ~0.6 px at the tip),
    arc length [K, N] and valid [K, N] (points beyond each path's length are invalid).
    """
    k = start.shape[0]
    n = max(2, math.ceil(float(length.max()) / step) + 1)
    # Curvature as white noise -> heading is a random walk -> smooth (C1) curves.
    turn = torch.randn(k, n, generator=g) * (0.08 * math.sqrt(step))
    turn[:, 0] = 0.0
    head = heading[:, None] + torch.cumsum(turn, dim=1)
    delta = torch.stack([torch.sin(head), torch.cos(head)], dim=-1) * step
    delta[:, 0] = 0.0
    pts = start[:, None, :] + torch.cumsum(delta, dim=1)
    s = torch.arange(n, dtype=torch.float32)[None] * step
    frac = (s / length[:, None]).clamp(max=1.0)
    radius = r_start[:, None] + (0.6 - r_start[:, None]) * frac
    return pts, head, radius, s.expand(k, n), s <= length[:, None]


def _splat(pts: Tensor, radius: Tensor, h: int, w: int, window: int = 3) -> Tensor:
    """max over points of (radius - distance) at each pixel centre, -inf far away: [H, W].

    Points are dense (<= 0.5 px apart) so this approximates the distance to the polyline. Only a
    (2 * window + 1)^2 patch per point is touched, which keeps rendering cheap: values are exact wherever
    they exceed radius - (window - 0.5), so window=3 covers every pixel a vessel (radius <= 1.7) draws on.
    """
    out = torch.full((h * w,), -math.inf)
    if pts.numel() == 0:
        return out.view(h, w)
    offs = torch.arange(-window, window + 1, dtype=torch.float32)
    oy, ox = torch.meshgrid(offs, offs, indexing="ij")
    py = pts[:, 0:1].round() + oy.reshape(1, -1)  # [P, (2 * window + 1)^2] pixel rows
    px = pts[:, 1:2].round() + ox.reshape(1, -1)
    val = radius[:, None] - torch.sqrt((py - pts[:, 0:1]).square() + (px - pts[:, 1:2]).square())
    ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    # Off-image window pixels go to pixel 0 with -inf, which leaves it unchanged (no boolean indexing).
    idx = torch.where(ok, py * w + px, 0.0).long().view(-1)
    out.scatter_reduce_(0, idx, torch.where(ok, val, -math.inf).view(-1), reduce="amax")
    return out.view(h, w)


def _vessels(g: torch.Generator, h: int, w: int, image_window: int = 3) -> tuple[Tensor, Tensor]:
    """Branching vessel trees. Returns (label field, image field): max(radius - distance) [H, W] over all
    points and over non-occluded points only (exact down to -(image_window - 0.5) - radius)."""
    size = min(h, w)
    step = 0.5
    n_trees = int(torch.randint(2, 4, (1,), generator=g))
    start = torch.stack([_uniform(g, 0.15, 0.85, n_trees) * h, _uniform(g, 0.15, 0.85, n_trees) * w], dim=1)
    # Point the trunk roughly at the image centre so that most of it stays inside the image.
    heading = torch.atan2(h / 2 - start[:, 0], w / 2 - start[:, 1]) + _uniform(g, -0.8, 0.8, n_trees)
    length = _uniform(g, 0.55, 0.9, n_trees) * size
    levels = [_grow(g, start, heading, _uniform(g, 1.3, 1.7, n_trees), length, step)]

    # Two levels of branches, each spawned at a random point of a parent path, thinner than it there.
    for n_per, len_frac in ((2, (0.3, 0.6)), (1, (0.3, 0.6))):
        pts, head, radius, s, valid = levels[-1]
        parents = pts.shape[0]
        m = parents * n_per
        parent = torch.arange(parents).repeat_interleave(n_per)
        lengths = valid.sum(1).float()[parent]
        at = (_uniform(g, 0.15, 0.7, m) * lengths).long()
        side = torch.where(torch.rand(m, generator=g) < 0.5, -1.0, 1.0)
        b_start = pts[parent, at]
        b_head = head[parent, at] + side * _uniform(g, 0.5, 1.1, m)
        b_r = (radius[parent, at] * 0.8).clamp(min=0.7)
        b_len = _uniform(g, *len_frac, m) * (lengths - at.float()) * step + 4.0
        levels.append(_grow(g, b_start, b_head, b_r, b_len, step))

    all_pts, all_r, visible = [], [], []
    for pts, _, radius, s, valid in levels:
        # Occlusion gaps: up to two per path, 6-13 px long, never at the very root of a path.
        k = pts.shape[0]
        path_len = (valid.sum(1).float() * step)[:, None]
        centre = _uniform(g, 0.2, 0.9, k, 2) * path_len
        half = _uniform(g, 3.0, 6.5, k, 2)
        on = torch.rand(k, 2, generator=g) < 0.6
        gap = ((s[:, :, None] - centre[:, None]).abs() < half[:, None]) & on[:, None]
        all_pts.append(pts[valid])
        all_r.append(radius[valid])
        visible.append((~gap.any(-1))[valid])
    pts, rad, vis = torch.cat(all_pts), torch.cat(all_r), torch.cat(visible)
    return _splat(pts, rad, h, w), _splat(pts[vis], rad[vis], h, w, image_window)


def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    x = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-x.square() / (2 * sigma**2))
    k = k / k.sum()
    c = img.shape[0]
    out = F.pad(img[None], (2, 2, 2, 2), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    out = F.conv2d(out, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return out[0]


def _to_uint8(img: Tensor) -> Tensor:
    return (img.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _render_once(
    g: torch.Generator, yy: Tensor, xx: Tensor, debug: bool, texture: float = 1.0, noise: float = 1.0
) -> _Rendered:
    h, w = yy.shape
    # Background: base colour + low-frequency colour field + a fainter mid-frequency one.
    base = _uniform(g, 0.35, 0.7, 3, 1, 1)
    img = (
        base + 0.10 * _smooth_noise(g, 3, h, w, 3) + 0.04 * _smooth_noise(g, 1, h, w, max(4, min(h, w) // 12))
    )

    inside, classes = _blobs(g, yy, xx)
    n = inside.shape[0]
    # Painted in order: the visible blob at a pixel is the last one covering it (0 = none).
    top = (inside * torch.arange(1, n + 1, dtype=torch.uint8)[:, None, None]).amax(0).long()
    shade = 0.10 * _smooth_noise(g, 3, h, w, 2)  # shared slow colour variation inside blobs
    layer = torch.zeros(3, h, w)
    for b in range(n):
        cls = int(classes[b])
        # Colour offset from one distribution for both classes: it shows the outline, not the class.
        tint = torch.randn(3, 1, 1, generator=g) * 0.07
        amp = float(_uniform(g, 0.10, 0.16, 1))
        layer = torch.where(top == b + 1, tint + texture * amp * _texture(g, cls, yy, xx), layer)
    img = torch.where(top > 0, base + shade + layer, img)
    mask = torch.cat([torch.tensor([BACKGROUND]), classes]).to(torch.uint8)[top]

    # Fine per-pixel noise before the blur (image grain), additive sensor noise after it.
    img = img + torch.randn(3, h, w, generator=g) * (0.03 * noise)
    # Debug needs the image field exact out to the occlusion margin; the drawn image is the same either way.
    label_field, image_field = _vessels(g, h, w, image_window=6 if debug else 3)
    coverage = (image_field + 0.5).clamp(0.0, 1.0)  # anti-aliased: ~fraction of the pixel covered
    opacity = float(_uniform(g, 0.6, 0.9, 1))
    colour = torch.tensor([0.25, 0.08, 0.08]) + _uniform(g, -0.05, 0.05, 3)
    alpha = coverage * opacity
    under = img
    img = img * (1 - alpha) + colour[:, None, None] * alpha
    mask = torch.where(label_field > 0, VESSEL, mask).to(torch.uint8)

    sigma = float(_uniform(g, 0.5, 0.8, 1))
    sensor = torch.randn(3, h, w, generator=g) * (noise * float(_uniform(g, 0.015, 0.035, 1)))
    out = _Rendered(_to_uint8(_gaussian_blur(img, sigma) + sensor), mask)
    if debug:
        out.occlusion = (label_field > 0) & (image_field < -_OCCLUSION_MARGIN)
        out.without_vessels = _to_uint8(_gaussian_blur(under, sigma) + sensor)
    return out


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch ops on one intra-op thread. Rendering is ~150 small ops on <= 100k-element tensors: threads
    only add synchronisation, and on a busy machine each parallel op can stall for a scheduler time slice
    (measured: ~8 ms per 128x128 sample on one thread vs ~800 ms on two threads of a loaded 2-core box)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _render(
    g: torch.Generator, yy: Tensor, xx: Tensor, debug: bool = False, texture: float = 1.0, noise: float = 1.0
) -> _Rendered:
    h, w = yy.shape
    need = min_class_pixels(h, w)
    with _single_threaded():
        for _ in range(_MAX_ATTEMPTS):
            out = _render_once(g, yy, xx, debug, texture, noise)
            if int(torch.bincount(out.mask.flatten().long(), minlength=4).min()) >= need:
                return out
    raise RuntimeError(f"could not draw a {h}x{w} sample containing every class in {_MAX_ATTEMPTS} attempts")


class SyntheticSegmentation(Dataset):
    """Procedural 4-class segmentation data (background, blob_a, blob_b, vessel); see the module docstring.

    Args:
        num_samples: dataset length.
        image_size: ``size`` or ``(height, width)``, each >= 32.
        seed: sample ``i`` depends only on ``(seed, i)``.
        normalize: ImageNet-normalise the image (as pretrained encoders expect); otherwise it is in [0, 1].
        texture: contrast of the blob textures (1: the embedded data; lower: the two blob classes are
            harder to tell apart). A difficulty knob for variant benchmarks.
        noise: scale of the image grain and sensor noise (1: the embedded data).
        cache: keep rendered samples (8-bit image and mask, 64 KB at 128x128) in memory, filled lazily, so
            epochs after the first cost nothing. With worker processes each worker fills its own copy; call
            :meth:`fill_cache` before creating the loader to render once and share the cache copy-on-write.

    Items are ``{"image": float32 [3, H, W], "mask": int64 [H, W]}``.
    """

    #: Sample ``i`` is the same tensor every time (no random augmentation): the teacher-output cache
    #: may store the teacher's outputs per index (see :mod:`bcd_lightning.teacher_cache`).
    deterministic: bool = True
    num_classes: int = len(CLASS_NAMES)
    class_names: tuple[str, ...] = CLASS_NAMES
    ignore_index: int = 255  # never present in these masks; kept for interface parity with real datasets

    def __init__(
        self,
        num_samples: int,
        image_size: int | tuple[int, int] = 128,
        seed: int = 0,
        normalize: bool = True,
        cache: bool = True,
        texture: float = 1.0,
        noise: float = 1.0,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if isinstance(image_size, int) and not isinstance(image_size, bool):
            size = (image_size, image_size)
        elif (
            isinstance(image_size, Sequence)
            and not isinstance(image_size, str)
            and len(image_size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)
        ):
            size = (int(image_size[0]), int(image_size[1]))
        else:
            raise ValueError(
                f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}"
            )
        if min(size) < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE} in each dimension, got {image_size!r}")
        for name, value in (("texture", texture), ("noise", noise)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.texture, self.noise = float(texture), float(noise)
        self.num_samples = num_samples
        self.image_size: tuple[int, int] = size
        self.seed = int(seed)
        self.normalize = normalize
        self.cache = cache
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}
        yy, xx = torch.meshgrid(
            torch.arange(size[0], dtype=torch.float32),
            torch.arange(size[1], dtype=torch.float32),
            indexing="ij",
        )
        self._yy, self._xx = yy, xx
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.num_samples

    def _check_index(self, index: int) -> int:
        i = operator.index(index)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(
                f"index {index} out of range for SyntheticSegmentation of length {self.num_samples}"
            )
        return i

    def _generator(self, index: int) -> torch.Generator:
        # A large odd multiplier keeps (seed, index) pairs from colliding for any realistic dataset size.
        return torch.Generator().manual_seed((self.seed * 1_000_003 + index) % (2**63))

    def _get(self, index: int) -> tuple[Tensor, Tensor]:
        i = self._check_index(index)
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        out = _render(self._generator(i), self._yy, self._xx, texture=self.texture, noise=self.noise)
        if self.cache:
            self._cache[i] = (out.image, out.mask)
        return out.image, out.mask

    def render_raw(self, index: int) -> tuple[Tensor, Tensor]:
        """(image float32 [3, H, W] in [0, 1], mask int64 [H, W]) for visualisation."""
        with _single_threaded():
            image, mask = self._get(index)
            return image.float() / 255.0, mask.long()

    def debug_sample(self, index: int) -> dict[str, Tensor]:
        """Re-render sample ``index`` with its hidden layers (never cached).

        ``image`` and ``image_without_vessels`` are [0, 1] float [3, H, W]: the same scene, blur and noise
        with and without the vessels drawn. ``occlusion`` is a bool [H, W] mask of vessel-labelled pixels
        inside an occlusion gap, far enough from any drawn vessel that the image there shows exactly what is
        under it.
        """
        with _single_threaded():
            g = self._generator(self._check_index(index))
            out = _render(g, self._yy, self._xx, debug=True, texture=self.texture, noise=self.noise)
            assert out.occlusion is not None and out.without_vessels is not None
            return {
                "image": out.image.float() / 255.0,
                "mask": out.mask.long(),
                "occlusion": out.occlusion,
                "image_without_vessels": out.without_vessels.float() / 255.0,
            }

    def fill_cache(self) -> None:
        """Render every sample now (no-op without ``cache``)."""
        if self.cache:
            for i in range(self.num_samples):
                self._get(i)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        with _single_threaded():
            image, mask = self.render_raw(index)
            if self.normalize:
                image = (image - self._mean) / self._std
            return {"image": image, "mask": mask}

    def cache_identity(self) -> dict[str, object]:
        """Everything that decides the samples' content (a teacher-output cache key ingredient)."""
        return {
            "class": "SyntheticSegmentation",
            "num_samples": self.num_samples,
            "image_size": list(self.image_size),
            "seed": self.seed,
            "normalize": self.normalize,
            **(
                {"texture": self.texture, "noise": self.noise}
                if (self.texture, self.noise) != (1.0, 1.0)
                else {}
            ),
        }

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"SyntheticSegmentation(num_samples={self.num_samples}, image_size=({h}, {w}), seed={self.seed})"
        )
