"""Tensor morphology shared by the boundary and connectivity metrics.

Everything works on label maps ``[..., H, W]`` on any device, with no per-class loop where it can be avoided:

* a square (Chebyshev) window reduction in O(log k) elementwise ops per axis (doubling), used for
  erosion/dilation of any radius and for bitwise-OR "which classes are near" maps;
* class-agnostic boundary bands: a pixel lies in the inner band of its own class mask iff its window is not
  uniform, so one min/max pass over the label map gives the bands of *all* classes at once;
* exact connected-component counting: union-find (hook-and-compress) over horizontal runs.
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
    """A padding value no label reaches. F.pad passes it through a double: int64's own limits round to
    2^63 and overflow, so int64 uses ±2^62 (exact in a double, far above any label)."""
    if dtype == torch.int64:
        return 2**62 if high else -(2**62)
    info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
    return info.max if high else info.min


def boundary_band(labels: Tensor, radius: int, border_is_boundary: bool) -> Tensor:
    """Pixels whose (2r+1)² window is not uniform in ``labels`` (integer map, ``NO_CLASS`` allowed).

    For a pixel of class c this is exactly ``M_c - erode(M_c, r)`` (binary erosion by a (2r+1)² square) with ``M_c = labels == c``: the inner band
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


# Integer dtypes for per-class bit maps and how many classes each holds (sign bits left unused).
_BIT_WORDS = ((torch.uint8, 8), (torch.int16, 15), (torch.int32, 31), (torch.int64, 63))


def bit_word(num_classes: int) -> tuple[torch.dtype, int]:
    """Smallest integer dtype holding one bit per class (int64 words of 63 classes beyond that)."""
    return next(((dt, n) for dt, n in _BIT_WORDS if num_classes <= n), _BIT_WORDS[-1])


def class_bits(labels: Tensor, where: Tensor, first_class: int, dtype: torch.dtype, num_bits: int) -> Tensor:
    """Map with bit ``c - first_class`` set where ``where`` and ``labels == c``, c in [first, first+bits).

    Lets a single bitwise-OR window pass answer "which classes occur near this pixel" for a whole word of
    classes, instead of dilating one one-hot plane per class.
    """
    shift = labels.to(dtype) - first_class if first_class else labels.to(dtype)
    keep = where & (shift >= 0) & (shift < num_bits)
    one = torch.ones((), dtype=dtype, device=labels.device)
    return torch.where(keep, torch.bitwise_left_shift(one, shift.clamp(0, num_bits - 1)), 0)


def has_class_bit(bits: Tensor, labels: Tensor, first_class: int, num_bits: int) -> Tensor:
    """``bits`` has the bit of ``labels`` set (False for labels outside [first, first+bits))."""
    shift = labels.to(bits.dtype) - first_class if first_class else labels.to(bits.dtype)
    inside = (shift >= 0) & (shift < num_bits)
    return inside & (torch.bitwise_right_shift(bits, shift.clamp(0, num_bits - 1)) & 1).bool()


def masked_bincount(labels: Tensor, where: Tensor, num_classes: int) -> Tensor:
    """Per-class count of the pixels in ``where`` (``labels`` in [0, K) there); no boolean indexing, which
    costs more than the count itself (nonzero + gather)."""
    idx = torch.where(where, labels, num_classes).reshape(-1)
    return torch.bincount(idx, minlength=num_classes + 1)[:num_classes]


def _union_runs(labels: Tensor, connectivity: int) -> tuple[Tensor, Tensor, Tensor]:
    """Union-find over the horizontal runs of ``labels [N, H, W]``.

    Nodes are maximal horizontal runs of one label (usually far fewer than pixels); edges join runs of the
    same label that touch across consecutive rows (vertically, or also diagonally for 8-connectivity), one
    edge per overlap segment rather than per pixel pair. Hook-and-compress then runs on those small arrays:
    each round hooks both roots of every edge to the larger of the two, and pointer-jumps until every node
    points at a root; it stops when no edge joins two different roots, so it is exact, and long thin shapes
    (snakes, spirals) take a few rounds, not one per pixel of path length. Labels only grow and roots only
    hook to larger roots, so there are no cycles.

    Returns per-pixel run ids (flat, int64), the run forest ``parent`` (roots: ``parent[r] == r``) and the
    flat pixel index where each run starts.
    """
    w = labels.size(-1)
    start = torch.ones_like(labels, dtype=torch.bool)
    start[:, :, 1:] = labels[:, :, 1:] != labels[:, :, :-1]
    run_id = start.view(-1).cumsum(0).sub_(1)
    run_starts = start.view(-1).nonzero().squeeze(1)

    us, vs = [], []
    vertical = None
    for dx in (0, -1, 1) if connectivity == 8 else (0,):
        ca, cb = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
        a = labels[:, :-1, ca]
        joined = (a == labels[:, 1:, cb]) & (a != NO_CLASS)
        if vertical is None:
            vertical = joined
        else:  # a diagonal pair is implied by a vertical one beside it, unless the runs touch by a corner only
            joined &= ~vertical[:, :, :-1] & ~vertical[:, :, 1:]
        # The pair one pixel left joins the same two runs when it is joined too and within the run.
        redundant = joined[:, :, :-1] & ~start[:, :-1, ca][:, :, 1:]
        keep = torch.zeros_like(start)
        keep[:, :-1, ca] = joined
        keep[:, :-1, ca][:, :, 1:] &= ~redundant
        pos = keep.view(-1).nonzero().squeeze(1)
        us.append(run_id[pos])
        vs.append(run_id[pos + (w + dx)])
    u, v = torch.cat(us), torch.cat(vs)

    parent = torch.arange(run_starts.numel(), device=labels.device)
    while True:
        pu, pv = parent[u], parent[v]
        if torch.equal(pu, pv):
            return run_id, parent, run_starts
        top = torch.maximum(pu, pv)
        parent.scatter_reduce_(0, pu, top, reduce="amax")
        parent.scatter_reduce_(0, pv, top, reduce="amax")
        while True:  # compress
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped


def _check_components_args(labels: Tensor, connectivity: int) -> None:
    if labels.dim() != 3:
        raise ValueError(f"expected labels [N, H, W], got {tuple(labels.shape)}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def label_components(labels: Tensor, connectivity: int = 8) -> Tensor:
    """Component id (int64, unique over the whole batch) of every pixel of ``labels [N, H, W]``: connected
    regions of one label, ``NO_CLASS`` pixels included as regions of their own (callers drop them). The
    detection dataset splits its class masks into instances with it."""
    _check_components_args(labels, connectivity)
    run_id, parent, _ = _union_runs(labels, connectivity)
    return parent[run_id].view(labels.shape)


def count_components(labels: Tensor, num_classes: int, connectivity: int = 8) -> Tensor:
    """``[N, num_classes]`` int64: number of connected components of each class in each image."""
    _check_components_args(labels, connectivity)
    n, h, w = labels.shape
    _, parent, run_starts = _union_runs(labels, connectivity)
    run_label = labels.reshape(-1)[run_starts]
    is_root = (parent == torch.arange(parent.numel(), device=parent.device)) & (run_label != NO_CLASS)
    return masked_bincount(run_starts // (h * w) * num_classes + run_label, is_root, n * num_classes).view(
        n, num_classes
    )


def segmentation_labels(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None, name: str
) -> tuple[Tensor, Tensor]:
    """Validate a metric's ``update`` inputs and return label maps ``(pred, gt)``, both ``[B, H, W]``, in the
    smallest signed dtype that holds the classes (int8 up to 127: the window ops are bandwidth-bound).

    ``preds`` is ``[B, H, W]`` class indices or ``[B, K, H, W]`` scores. Pixels where ``target ==
    ignore_index`` become ``NO_CLASS`` in *both* maps, so they belong to no class for pred and GT alike.
    """
    if preds.dim() == target.dim() + 1:
        preds = preds.argmax(1)
    if preds.shape != target.shape or target.dim() != 3:
        raise ValueError(
            f"{name}: preds {tuple(preds.shape)} vs target {tuple(target.shape)}, need [B, H, W]"
        )
    if preds.is_floating_point():
        raise ValueError(f"{name}: [B, H, W] preds must be class indices, got {preds.dtype}")
    ignored = (
        target == ignore_index if ignore_index is not None else torch.zeros_like(target, dtype=torch.bool)
    )
    # Elementwise range checks: boolean indexing (nonzero) would cost more than the metric itself.
    for what, x, bad in (
        ("target", target, ~ignored & ((target < 0) | (target >= num_classes))),
        ("preds", preds, (preds < 0) | (preds >= num_classes)),
    ):
        if bool(bad.any()):
            raise ValueError(
                f"{name}: {what} values {sorted(set(x[bad].unique().tolist()))} outside [0, {num_classes})"
                + (f" and not ignore_index={ignore_index}" if what == "target" else "")
            )
    dtype = torch.int8 if num_classes <= 127 else torch.int16 if num_classes <= 32767 else torch.int32
    gt = torch.where(ignored, NO_CLASS, target.to(dtype))
    pred = torch.where(ignored, NO_CLASS, preds.to(dtype))
    return pred, gt
