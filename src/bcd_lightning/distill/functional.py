"""Pure tensor functions behind every distillation loss (no state, no configuration).

Conventions: student tensors carry gradients, teacher tensors are constants; every reduction is stated
in the docstring and in ``docs/method.md``. Softmax / log-softmax run in fp32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bcd_lightning.distill._tensor import no_autocast, normalize_channels, upcast


def masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``values`` over ``valid`` positions (all when ``valid`` is None); 0 if none is valid."""
    if valid is None:
        return values.mean()
    valid = valid.to(values.dtype)
    # max(count, 1) keeps an all-ignored batch at 0 with a graph instead of NaN.
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def pixel_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Per-pixel ``KL(softmax(z_T/τ) ‖ softmax(z_S/τ))`` over the class axis, ``[B, H, W]``, fp32.

    The teacher logits are detached (a constant target), like every other loss's teacher input.
    """
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)


def pixel_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: float = 1.0,
    valid_mask: Tensor | None = None,
) -> Tensor:
    """Pixel logit KD: ``τ² · mean_{valid p} KL(T_p ‖ S_p)`` (CIRKD's reduction: mean over pixels).

    Args:
        student_logits, teacher_logits: ``[B, K, H, W]``; the teacher is resized to the student if needed.
        tau: temperature τ.
        valid_mask: ``[B, H, W]`` bool, False at ignored pixels.
    """
    if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
        teacher_logits = F.interpolate(
            teacher_logits, size=student_logits.shape[-2:], mode="bilinear", align_corners=False
        )
    return tau**2 * masked_mean(pixel_kl(student_logits, teacher_logits, tau), valid_mask)


# --------------------------------------------------------------------------------------------------------
# Boundary and Context Distillation (BCD). Equations: docs/method.md. Teacher inputs are detached here so a
# loss can never push gradients into the teacher, whatever the caller did.
# --------------------------------------------------------------------------------------------------------

#: Automatic chunk size for the context loss: one ``[B, chunk, N]`` work block holds at most this many
#: elements (16 MiB of fp32); the loss keeps four such blocks, 64 MiB, whatever N is.
CHUNK_ELEMENTS = 4 * 2**20
#: Preferred block on CPU (4 MiB of fp32): small enough to stay in cache (see :func:`auto_chunk_size`).
CPU_CACHE_ELEMENTS = 2**20
BOUNDARY_VARIANTS = ("mse", "l1", "kl")


def _resize_map(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize of a ``[B, H, W]`` map (no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def boundary_map(feature: Tensor, dilation: int = 1) -> Tensor:
    """Boundary strength ``b(p) = 1 - mean_δ max(f(p)·f(p+δ), 0)`` in ``[0, 1]``, shape ``[B, H, W]``.

    ``f`` is the feature normalised over channels, ``δ`` the 8 neighbour offsets scaled by ``dilation``;
    borders use replicate padding. 0 inside a uniform region, 3/8 along a straight interface between
    orthogonal features, 1 for an isolated pixel. O(8·C·H·W) time and memory, fp32.
    """
    if feature.dim() != 4:
        raise ValueError(f"boundary_map: feature must be [B, C, H, W], got shape {tuple(feature.shape)}")
    if int(dilation) != dilation or dilation < 1:
        raise ValueError(f"boundary_map: dilation must be an integer >= 1, got {dilation!r}")
    d = int(dilation)
    with no_autocast(feature):
        h, w = feature.shape[-2:]
        # Replicate-pad once; the cosine of a pair (q, q+δ) serves both q (offset +δ) and q+δ (offset -δ),
        # so 4 products over the padded grid cover all 8 neighbours (half the work of 8 shifts).
        x = F.pad(normalize_channels(upcast(feature), dim=1), (d, d, d, d), mode="replicate")

        def cos(y0: int, y1: int, x0: int, x1: int, dy: int, dx: int) -> Tensor:
            # max(x(q)·x(q+δ), 0) for q in rows y0:y1, cols x0:x1 of the padded grid.
            a = x[:, :, y0:y1, x0:x1]
            b = x[:, :, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
            return (a * b).sum(1).clamp_min(0.0)

        right = cos(d, d + h, 0, w + d, 0, d)  # pairs along x
        down = cos(0, h + d, d, d + w, d, 0)  # pairs along y
        diag = cos(0, h + d, 0, w + d, d, d)  # pairs along (d, d)
        anti = cos(0, h + d, d, w + 2 * d, d, -d)  # pairs along (d, -d)
        # Pixel p sits at p + (d, d) in the padded grid: one slice picks its +δ pair, the other its -δ pair.
        affinity = (
            right[:, :, d:]
            + right[:, :, :w]
            + down[:, d:]
            + down[:, :h]
            + diag[:, d:, d:]
            + diag[:, :h, :w]
            + anti[:, d:, :w]
            + anti[:, :h, d:]
        )
        return 1.0 - affinity / 8.0


def _check_stage_weights(stage_weights: Sequence[float] | None, n: int, where: str) -> list[float]:
    if stage_weights is None:
        return [1.0 / n] * n  # average over stages: the scale does not grow with the number of stages
    weights = [float(w) for w in stage_weights]
    if len(weights) != n:
        raise ValueError(f"{where}: stage_weights has {len(weights)} entries for {n} stages: {weights}")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"{where}: stage_weights must be >= 0 with at least one > 0, got {weights}")
    return weights


def boundary_distillation(
    student_stages: Sequence[Tensor],
    teacher_stages: Sequence[Tensor],
    stage_weights: Sequence[float] | None = None,
    variant: str = "mse",
    dilation: int = 1,
    tau: float = 0.1,
) -> Tensor:
    """Boundary distillation ``Σ_l w_l · D(b_l^S, b_l^T)`` over paired stage features.

    ``b`` is :func:`boundary_map`; student maps are resized (bilinear) to the teacher map's size.
    ``D`` per variant: ``"mse"`` mean over pixels and batch of ``(b^S - b^T)²``; ``"l1"`` mean of
    ``|b^S - b^T|``; ``"kl"`` ``τ² · mean_batch KL(softmax(b^T/τ) ‖ softmax(b^S/τ))`` with the softmax
    over the H·W positions of each map. ``stage_weights=None`` gives ``w_l = 1/L``. Teacher inputs are
    treated as constants (detached); a ``[B, H, W]`` teacher entry is taken as its boundary map.
    """
    if variant not in BOUNDARY_VARIANTS:
        raise ValueError(
            f"boundary_distillation: variant must be one of {BOUNDARY_VARIANTS}, got {variant!r}"
        )
    if tau <= 0:
        raise ValueError(f"boundary_distillation: tau must be > 0, got {tau}")
    if len(student_stages) != len(teacher_stages) or not student_stages:
        raise ValueError(
            "boundary_distillation: need the same non-zero number of student and teacher stages, got "
            f"{len(student_stages)} and {len(teacher_stages)}"
        )
    weights = _check_stage_weights(stage_weights, len(student_stages), "boundary_distillation")
    total: Tensor | None = None
    for w, fs, ft in zip(weights, student_stages, teacher_stages, strict=True):
        # A [B, H, W] teacher entry is its boundary map already (precomputed, e.g. teacher-output cache).
        b_t = upcast(ft.detach()) if ft.dim() == 3 else boundary_map(ft.detach(), dilation)
        b_s = _resize_map(boundary_map(fs, dilation), b_t.shape[-2:])
        with no_autocast(b_s):
            if variant == "mse":
                term = (b_s - b_t).square().mean()
            elif variant == "l1":
                term = (b_s - b_t).abs().mean()
            else:
                log_q = F.log_softmax(b_s.flatten(1) / tau, dim=1)
                log_p = F.log_softmax(b_t.flatten(1) / tau, dim=1)
                term = tau**2 * (log_p.exp() * (log_p - log_q)).sum(1).mean()
        total = w * term if total is None else total + w * term
    assert total is not None
    return total


def fused_boundary_map(
    stages: Sequence[Tensor], size: tuple[int, int] | torch.Size, dilation: int = 1
) -> Tensor:
    """Mean over stages of the boundary maps, each resized (bilinear) to ``size``: ``[B, *size]`` in [0, 1].

    Each entry is a ``[B, C, H, W]`` feature (its :func:`boundary_map` is taken) or an already computed
    ``[B, H, W]`` map.
    """
    if not stages:
        raise ValueError("fused_boundary_map: need at least one stage")
    maps = [s if s.dim() == 3 else boundary_map(s, dilation) for s in stages]
    return torch.stack([_resize_map(upcast(m), size) for m in maps]).mean(0)


def boundary_weighted_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    weight_map: Tensor,
    tau: float = 1.0,
    valid_mask: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Boundary-weighted pixel KD: ``τ² · Σ_p w_p·v_p·KL_p / max(Σ_p w_p·v_p, eps)``, summed over the batch.

    ``KL_p`` is :func:`pixel_kl` at temperature τ, ``w`` the weight map ``[B, h, w]`` (resized bilinearly to
    the logits, detached), ``v`` the valid mask ``[B, H, W]`` (False at ignored pixels, which contribute
    nothing). The teacher logits are resized to the student's if needed and detached.
    """
    if tau <= 0:
        raise ValueError(f"boundary_weighted_kd: tau must be > 0, got {tau}")
    teacher_logits = teacher_logits.detach()
    with no_autocast(student_logits):
        if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
            teacher_logits = F.interpolate(
                teacher_logits.float(), size=student_logits.shape[-2:], mode="bilinear", align_corners=False
            )
        kl = pixel_kl(student_logits, teacher_logits, tau)
        w = _resize_map(upcast(weight_map.detach()), kl.shape[-2:]).to(kl.dtype)
        if valid_mask is not None:
            # where(), not a product: a non-finite KL at an ignored pixel must not leak in.
            w = torch.where(valid_mask, w, torch.zeros_like(w))
            kl = torch.where(valid_mask, kl, torch.zeros_like(kl))
        return tau**2 * (w * kl).sum() / w.sum().clamp_min(eps)


def avg_pool_relation_nodes(
    student_feat: Tensor, teacher_feat: Tensor, pool: int = 1, grid: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Student and teacher relation nodes ``[B, N, C]``, unit-norm rows, on one common ``h×w`` grid.

    Both maps are average-pooled with kernel = stride = ``pool`` (partial windows at the border kept),
    then resized to ``grid`` (default: the pooled teacher size): area pooling when shrinking, bilinear
    otherwise. The teacher is detached.
    """
    if int(pool) != pool or pool < 1:
        raise ValueError(f"relation loss: pool must be an integer >= 1, got {pool!r}")
    if student_feat.dim() != 4 or teacher_feat.dim() != 4:
        raise ValueError(
            "relation loss: features must be [B, C, H, W], got "
            f"{tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}"
        )
    if student_feat.shape[0] != teacher_feat.shape[0]:
        raise ValueError(
            f"relation loss: batch sizes differ ({student_feat.shape[0]} vs {teacher_feat.shape[0]})"
        )
    s, t = upcast(student_feat), upcast(teacher_feat.detach())
    if pool > 1:
        s = F.avg_pool2d(s, int(pool), int(pool), ceil_mode=True)
        t = F.avg_pool2d(t, int(pool), int(pool), ceil_mode=True)
    size = (int(t.shape[-2]), int(t.shape[-1])) if grid is None else (int(grid[0]), int(grid[1]))
    if min(size) < 1:
        raise ValueError(f"relation loss: grid must be positive, got {size}")

    def to_grid(x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
            return F.adaptive_avg_pool2d(x, size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    # Normalise in the [B, C, h, w] layout (a fast broadcast), then view as [B, N, C]: bmm takes the
    # transposed operand as it is.
    s = normalize_channels(to_grid(s), dim=1)
    t = normalize_channels(to_grid(t), dim=1)
    return s.flatten(2).transpose(1, 2), t.flatten(2).transpose(1, 2)


def auto_chunk_size(batch: int, nodes: int, channels: int = 0, device: torch.device | str = "cpu") -> int:
    """Rows per chunk of the context loss: a ``[batch, chunk, nodes]`` block never exceeds
    :data:`CHUNK_ELEMENTS` (16 MiB of fp32).

    On CPU the block aims at :data:`CPU_CACHE_ELEMENTS` (4 MiB, cache-friendly for the ~12 elementwise
    passes per block) but keeps at least ``channels`` rows, below which the rank-``chunk`` gradient updates
    of the ``[B, N, C]`` gradient dominate. On GPUs the largest block amortises kernel launches.
    """
    per_row = max(1, batch * nodes)
    cap = max(1, CHUNK_ELEMENTS // per_row)
    rows = cap if torch.device(device).type != "cpu" else max(1, CPU_CACHE_ELEMENTS // per_row, channels)
    return max(1, min(nodes, cap, rows))


class _ChunkedRelationKL(torch.autograd.Function):
    """``τ²/(B·N) · Σ_{b,i} KL(R_i^T ‖ R_i^S)`` over row chunks; O(B·chunk·N) memory.

    The gradient is exact and computed in the same pass as the loss: for logits ``a = s sᵀ/τ`` the
    gradient w.r.t. ``a_ij`` is ``c·(R^S_ij - R^T_ij)`` with ``c = τ²/(B·N)``, so
    ``∂L/∂s = c·(G + Gᵀ) s / τ`` with ``G = R^S - R^T``, accumulated chunk by chunk. This needs no N×N
    storage and, unlike recomputing the chunks in ``backward``, no second pass over the matmuls (the
    FLOPs of forward + backward equal the naive version's). ``backward`` only scales the stored gradient.
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, tau: float, chunk: int, need_grad: bool) -> Tensor:
        b, n, _ = s.shape
        scale = tau**2 / (b * n)
        s_t, t_t = s.transpose(1, 2), t.transpose(1, 2)
        grad = s.new_zeros(s.shape) if need_grad else None  # contiguous: baddbmm_ writes into row slices
        total = s.new_zeros(())
        # Rows are unit vectors (or 0), so |logit| <= 1/τ: for τ >= 1/64 exp can neither overflow nor
        # underflow in fp32 and the usual max-shift (two more passes over each block) is skipped.
        shift = tau < 1 / 64
        # Four [B, chunk, N] work blocks, allocated once: freeing and re-allocating them per chunk makes
        # glibc hand the pages back to the OS and fault them in again (a large slowdown on CPU).
        work = s.new_empty(4, b * chunk * n)
        for r0 in range(0, n, chunk):
            r1 = min(r0 + chunk, n)
            a_t, p, a_s, e_s = (work[k, : b * (r1 - r0) * n].view(b, r1 - r0, n) for k in range(4))
            # 1/τ is applied to the small [B, chunk, C] rows.
            torch.bmm(t[:, r0:r1] / tau, t_t, out=a_t)
            if shift:
                a_t -= a_t.amax(-1, keepdim=True)
            torch.exp(a_t, out=p)
            z_t = p.sum(-1, keepdim=True)
            p /= z_t
            torch.bmm(s[:, r0:r1] / tau, s_t, out=a_s)
            if shift:
                a_s -= a_s.amax(-1, keepdim=True)
            torch.exp(a_s, out=e_s)
            z_s = e_s.sum(-1, keepdim=True)
            # KL_i = Σ_j p_ij (a^T_ij - a^S_ij) + log z^S_i - log z^T_i, because Σ_j p_ij = 1 (a per-row
            # shift of either logit cancels with its z).
            total += torch.vdot(a_t.sub_(a_s).view(-1), p.view(-1)) + (z_s.log() - z_t.log()).sum()
            if grad is not None:
                g = e_s.div_(z_s).sub_(p)  # R^S - R^T for the rows of this chunk
                grad[:, r0:r1].baddbmm_(g, s, alpha=scale / tau)
                grad.baddbmm_(g.transpose(1, 2), s[:, r0:r1], alpha=scale / tau)
        del work
        if grad is not None and grad.stride() != s.stride():
            # Hand the gradient back in the layout of s (a [B, C, N] view): a channels-last gradient
            # would make the pooling backward and the leaf accumulation much slower.
            grad = torch.empty_like(s).copy_(grad)
        ctx.save_for_backward(grad)
        return total * scale

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        # The base signature; the work is in a once_differentiable function (the decorator's typing
        # makes ``ctx`` positional-only, which the override check rejects on the method itself).
        return _chunked_relation_kl_backward(ctx, *grad_outputs)


@torch.autograd.function.once_differentiable
def _chunked_relation_kl_backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None]:
    """Backward of :class:`_ChunkedRelationKL`: the stored gradient times ``grad_out`` (no double backward)."""
    (grad,) = ctx.saved_tensors
    return (None if grad is None else grad * grad_out), None, None, None, None


def self_relation_kl(
    student_feat: Tensor,
    teacher_feat: Tensor,
    tau: float = 1.0,
    pool: int = 1,
    chunk_size: int | None = None,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Context distillation: ``τ² · mean_{b,i} KL(R_i^T ‖ R_i^S)``, ``R_i = softmax_j(x_i·x_j / τ)``.

    Features ``[B, C, H, W]`` (student and teacher widths and sizes may differ) become N unit-norm nodes
    on a common grid (see ``pool`` / ``grid``: average-pool by ``pool``, then resize to ``grid``, default
    the pooled teacher grid). KL is summed over j, averaged over the N rows and the batch. Exact, fp32
    (also under autocast), computed in chunks of ``chunk_size`` rows (``None``: :func:`auto_chunk_size`)
    so peak memory is O(B·chunk·N), never O(N²). Teacher detached. Reference: :func:`self_relation_kl_naive`.
    """
    if tau <= 0:
        raise ValueError(f"self_relation_kl: tau must be > 0, got {tau}")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"self_relation_kl: chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    with no_autocast(student_feat):
        s, t = avg_pool_relation_nodes(student_feat, teacher_feat, pool, grid)
        b, n, _ = s.shape
        chunk = auto_chunk_size(b, n, s.shape[2], s.device) if chunk_size is None else min(int(chunk_size), n)
        need_grad = torch.is_grad_enabled() and s.requires_grad
        return _ChunkedRelationKL.apply(s, t, float(tau), chunk, need_grad)


def self_relation_kl_naive(
    student_feat: Tensor,
    teacher_feat: Tensor,
    tau: float = 1.0,
    pool: int = 1,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Reference for :func:`self_relation_kl` with full ``[B, N, N]`` matrices (O(N²) memory)."""
    with no_autocast(student_feat):
        s, t = avg_pool_relation_nodes(student_feat, teacher_feat, pool, grid)
        log_q = F.log_softmax(s @ s.transpose(1, 2) / tau, dim=-1)
        log_p = F.log_softmax(t @ t.transpose(1, 2) / tau, dim=-1)
        return tau**2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def cosine_relation_mse(
    student_feat: Tensor, teacher_feat: Tensor, pool: int = 1, grid: tuple[int, int] | None = None
) -> Tensor:
    """SKD-style relation MSE ``mean_b (1/N²) Σ_ij (A^S_ij - A^T_ij)²`` with ``A = X̂ X̂ᵀ`` (node cosines).

    Computed from channel Gram matrices, never an N×N matrix:
    ``Σ_ij (A^S - A^T)² = ||X̂_Sᵀ X̂_S||² + ||X̂_Tᵀ X̂_T||² - 2 ||X̂_Sᵀ X̂_T||²`` (C×C, C_S×C_T). Nodes as in
    :func:`self_relation_kl`. fp32; the teacher is detached. Reference: :func:`cosine_relation_mse_naive`.
    """
    with no_autocast(student_feat):
        s, t = avg_pool_relation_nodes(student_feat, teacher_feat, pool, grid)
        n = s.shape[1]
        s_t, t_t = s.transpose(1, 2), t.transpose(1, 2)
        sq = (
            (s_t @ s).square().sum((1, 2))
            + (t_t @ t).square().sum((1, 2))
            - 2 * (s_t @ t).square().sum((1, 2))
        )
        # Rounding can leave a tiny negative value when student == teacher; the true value is >= 0.
        return (sq.clamp_min(0.0) / n**2).mean()


def cosine_relation_mse_naive(
    student_feat: Tensor, teacher_feat: Tensor, pool: int = 1, grid: tuple[int, int] | None = None
) -> Tensor:
    """Reference for :func:`cosine_relation_mse` with full ``[B, N, N]`` cosine matrices."""
    with no_autocast(student_feat):
        s, t = avg_pool_relation_nodes(student_feat, teacher_feat, pool, grid)
        return (s @ s.transpose(1, 2) - t @ t.transpose(1, 2)).square().mean()
