"""Tensor morphology shared by the boundary and connectivity metrics.

Everything works on label maps ``[..., H, W]`` on any device, with no per-class loop where it can be avoided:

* a square (Chebyshev) window reduction in O(log k) elementwise ops per axis (doubling), used for
  erosion/dilation of any radius and for bitwise-OR "which classes are near" maps;
* class-agnostic boundary bands: a pixel lies in the inner band of its own class mask iff its window is not
  uniform, so one min/max pass over the label map gives the bands of *all* classes at once;
* exact connected-component labelling by hook-and-compress (label propagation + pointer jumping).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Label reserved for "belongs to no class" (ignored pixels); class ids are >= 0.
NO_CLASS = -1
# Label used to pad the image frame when the border must count as background.
_BORDER = -2

_Op = Callable[[Tensor, Tensor], Tensor]

# One offset per undirected neighbour pair (the other direction is the pair seen from the other pixel).
HALF_OFFSETS_4 = ((0, 1), (1, 0))
HALF_OFFSETS_8 = (*HALF_OFFSETS_4, (1, 1), (1, -1))


def sliding_reduce_1d(x: Tensor, k: int, dim: int, op: _Op) -> Tensor:
    """``out[i] = op(x[i], ..., x[i + k - 1])`` along ``dim`` ("valid" windows: length n - k + 1).

    ``op`` must be associative and idempotent (max, min, bitwise or): windows of size 2^j are built by
    doubling and the last step combines two overlapping ones, so the cost is O(log k), not O(k) like
    ``max_pool`` with a wide kernel.
    """
    if k < 1 or k > x.size(dim):
        raise ValueError(f"window {k} does not fit in size {x.size(dim)}")
    out, w = x, 1
    while 2 * w <= k:
        n = out.size(dim)
        out = op(out.narrow(dim, 0, n - w), out.narrow(dim, w, n - w))
        w *= 2
    if w < k:
        n, s = out.size(dim), k - w
        out = op(out.narrow(dim, 0, n - s), out.narrow(dim, s, n - s))
    return out


def window_reduce(x: Tensor, radius: int, op: _Op, pad_value: int | float) -> Tensor:
    """Reduce ``x [..., H, W]`` over the (2r+1)² square around each pixel; outside the image is ``pad_value``."""
    if radius == 0:
        return x
    xp = F.pad(x, (radius, radius, radius, radius), value=pad_value)
    k = 2 * radius + 1
    return sliding_reduce_1d(sliding_reduce_1d(xp, k, -1, op), k, -2, op)


def _extreme(dtype: torch.dtype, high: bool) -> int | float:
    info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
    return info.max if high else info.min


def erode(mask: Tensor, radius: int, border_is_background: bool = True) -> Tensor:
    """Binary erosion by a (2r+1)² square, i.e. ``r`` iterations of a 3×3 erosion.

    With ``border_is_background`` the image is padded with zeros, as ``mask_to_boundary`` of Cheng et al.
    does (so mask pixels within ``r`` of the frame are eroded); otherwise the frame is neutral.
    """
    m = mask.to(torch.uint8)
    return window_reduce(m, radius, torch.minimum, 0 if border_is_background else 1).bool()


def dilate(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation by a (2r+1)² square (Chebyshev distance <= r); nothing outside the image."""
    return window_reduce(mask.to(torch.uint8), radius, torch.maximum, 0).bool()


def boundary_band(labels: Tensor, radius: int, border_is_boundary: bool) -> Tensor:
    """Pixels whose (2r+1)² window is not uniform in ``labels`` (integer map, ``NO_CLASS`` allowed).

    For a pixel of class c this is exactly ``M_c - erode(M_c, r)`` with ``M_c = labels == c``: the inner band
    of width r of every class mask at once. ``radius=1`` gives 8-neighbour contour pixels. With
    ``border_is_boundary`` the frame is padded with a label no pixel has, so pixels within r of it are in the
    band; otherwise the frame is padded with the reduction's neutral element and is ignored.
    Pixels labelled ``NO_CLASS`` are returned too; callers mask them out.
    """
    if border_is_boundary:
        hi = window_reduce(labels, radius, torch.maximum, _BORDER)
        lo = window_reduce(labels, radius, torch.minimum, _BORDER)
    else:
        hi = window_reduce(labels, radius, torch.maximum, _extreme(labels.dtype, high=False))
        lo = window_reduce(labels, radius, torch.minimum, _extreme(labels.dtype, high=True))
    return hi != lo


def class_bits(labels: Tensor, where: Tensor, first_class: int, num_bits: int = 63) -> Tensor:
    """int64 map with bit ``c - first_class`` set where ``where`` and ``labels == c``, c in [first, first+bits).

    Lets a single bitwise-OR window pass answer "which classes occur near this pixel" for up to 63 classes,
    instead of dilating one one-hot plane per class.
    """
    shift = labels.long() - first_class
    keep = where & (shift >= 0) & (shift < num_bits)
    one = torch.ones((), dtype=torch.long, device=labels.device)
    return torch.where(keep, torch.bitwise_left_shift(one, shift.clamp(0, num_bits - 1)), 0)


def has_class_bit(bits: Tensor, labels: Tensor, first_class: int, num_bits: int = 63) -> Tensor:
    """``bits`` has the bit of ``labels`` set (False for labels outside [first, first+bits))."""
    shift = labels.long() - first_class
    inside = (shift >= 0) & (shift < num_bits)
    return inside & (torch.bitwise_right_shift(bits, shift.clamp(0, num_bits - 1)) & 1).bool()


def label_components(labels: Tensor, connectivity: int = 8) -> Tensor:
    """Connected components of equal-label regions of ``labels [N, H, W]`` (``NO_CLASS`` pixels excluded).

    Returns ``[N, H, W]`` int64 where every pixel holds the flat index (within its image) of its component's
    representative, the component's largest pixel index; ``NO_CLASS`` pixels are their own singleton.
    Exact: hook-and-compress iterates until no same-label neighbours disagree. Each round hooks every tree
    root to the largest root seen across an edge, then pointer-jumps to full compression, so long thin
    shapes (snakes, spirals) take O(log) rounds rather than one round per pixel of path length.
    """
    if labels.dim() != 3:
        raise ValueError(f"label_components expects [N, H, W], got {tuple(labels.shape)}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    n, h, w = labels.shape
    # Each undirected neighbour pair once: pixel windows a and b = a shifted by (dy, dx), plus where the pair
    # is *not* joined (precomputed once; the pair is visited in both directions each round).
    edges = []
    for dy, dx in HALF_OFFSETS_8 if connectivity == 8 else HALF_OFFSETS_4:
        a = (slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
        b = (slice(dy, h), slice(max(0, dx), w - max(0, -dx)))
        la, lb = labels[:, a[0], a[1]], labels[:, b[0], b[1]]
        edges.append((a, b, (la != lb) | (la == NO_CLASS)))

    parent = torch.arange(h * w, device=labels.device).expand(n, -1).contiguous()
    while True:
        grid = parent.view(n, h, w)
        best = grid.clone()
        for a, b, cut in edges:
            pair_max = torch.maximum(grid[:, a[0], a[1]], grid[:, b[0], b[1]]).masked_fill_(cut, 0)
            for win in (a, b):
                region = best[:, win[0], win[1]]
                torch.maximum(region, pair_max, out=region)
        best = best.view(n, -1)
        if torch.equal(best, parent):  # every pixel already agrees with all same-label neighbours
            return grid
        # Hook: each root adopts the largest label seen from any pixel of its tree (indices stay within
        # the component and only grow, so there are no cycles).
        parent.scatter_reduce_(1, parent.clone(), best, reduce="amax")
        while True:  # compress: pointer jumping until every pixel points at a root
            jumped = parent.gather(1, parent)
            if torch.equal(jumped, parent):
                break
            parent = jumped


def count_components(labels: Tensor, num_classes: int, connectivity: int = 8) -> Tensor:
    """``[N, num_classes]`` int64: number of connected components of each class in each image."""
    n = labels.size(0)
    rep = label_components(labels, connectivity).view(n, -1)
    flat = labels.reshape(n, -1)
    is_root = (rep == torch.arange(rep.size(1), device=rep.device)) & (flat != NO_CLASS)
    img = torch.arange(n, device=labels.device).unsqueeze(1).expand_as(flat)
    idx = img[is_root] * num_classes + flat[is_root].long()
    return torch.bincount(idx, minlength=n * num_classes).view(n, num_classes)


def soft_erode(x: Tensor) -> Tensor:
    """clDice soft erosion (Shit et al. 2021): min over the 4-neighbour cross, frame neutral."""
    p1 = -F.max_pool2d(-x, (3, 1), (1, 1), (1, 0))
    p2 = -F.max_pool2d(-x, (1, 3), (1, 1), (0, 1))
    return torch.minimum(p1, p2)


def soft_dilate(x: Tensor) -> Tensor:
    return F.max_pool2d(x, (3, 3), (1, 1), (1, 1))


def soft_skeleton(x: Tensor, max_iter: int | None = None) -> Tensor:
    """Soft skeleton of ``x [N, C, H, W]`` in [0, 1] by iterated soft opening (Shit et al. 2021).

    For binary masks the skeleton is binary. Iterates until the eroded mask is empty (so the skeleton is
    complete whatever the object thickness) or ``max_iter`` rounds.
    """
    skel = F.relu(x - soft_dilate(soft_erode(x)))
    limit = max_iter if max_iter is not None else max(x.shape[-2:])
    for _ in range(limit):
        eroded = soft_erode(x)
        if torch.equal(eroded, x) or not bool(eroded.any()):  # nothing left to peel (a full-frame mask
            break  # never erodes: the frame is neutral)
        x = eroded
        delta = F.relu(x - soft_dilate(soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def segmentation_labels(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None, name: str
) -> tuple[Tensor, Tensor]:
    """Validate a metric's ``update`` inputs and return int32 label maps ``(pred, gt)``, both ``[B, H, W]``.

    ``preds`` is ``[B, H, W]`` class indices or ``[B, K, H, W]`` scores. Pixels where ``target ==
    ignore_index`` become ``NO_CLASS`` in *both* maps, so they belong to no class for pred and GT alike.
    """
    if preds.dim() == target.dim() + 1:
        preds = preds.argmax(1)
    if preds.shape != target.shape or target.dim() != 3:
        raise ValueError(f"{name}: preds {tuple(preds.shape)} vs target {tuple(target.shape)}, need [B, H, W]")
    if preds.is_floating_point():
        raise ValueError(f"{name}: [B, H, W] preds must be class indices, got {preds.dtype}")
    ignored = target == ignore_index if ignore_index is not None else torch.zeros_like(target, dtype=torch.bool)
    for what, x in (("target", target[~ignored]), ("preds", preds)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(
                f"{name}: {what} values {sorted(set(x.unique().tolist()))} outside [0, {num_classes})"
                + (f" and not ignore_index={ignore_index}" if what == "target" else "")
            )
    gt = torch.where(ignored, NO_CLASS, target.int())
    pred = torch.where(ignored, NO_CLASS, preds.int())
    return pred, gt
