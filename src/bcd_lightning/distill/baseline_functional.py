"""Pure tensor functions of the baseline losses: CWD, SKD, IFVD, CIRKD (equations: docs/method.md).

Conventions as in :mod:`bcd_lightning.distill.functional`: student tensors carry gradients, teacher tensors
are detached here, math runs in fp32 (float64 stays float64) even under autocast, and every reduction is
stated in the docstring. Inputs are already aligned (same spatial size; same width where a loss needs it):
the loss modules do that (:class:`~bcd_lightning.distill.adapters.FeaturePairLoss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bcd_lightning.distill._tensor import no_autocast, normalize_channels, upcast

SIMILARITY_METHODS = ("auto", "gram", "naive")


def _check_pair(where: str, student: Tensor, teacher: Tensor, same_channels: bool) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(
            f"{where}: features must be [B, C, H, W], got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    s, t = student.shape, teacher.shape
    if s[0] != t[0] or s[-2:] != t[-2:] or (same_channels and s[1] != t[1]):
        what = "shapes" if same_channels else "batch and spatial sizes"
        raise ValueError(f"{where}: student and teacher {what} differ: {tuple(s)} vs {tuple(t)}")


# --- CWD ---------------------------------------------------------------------------------------------------


def channel_wise_divergence(
    student: Tensor, teacher: Tensor, tau: float = 4.0, channels: int | None = None
) -> Tensor:
    """Channel-wise distillation ``τ²/(B·C') · Σ_{b,c} KL(softmax(t_bc/τ) ‖ softmax(s_bc/τ))``.

    Each channel map ``[H, W]`` is turned into a distribution over its H·W positions by a softmax at
    temperature τ; KL is summed over positions, summed over batch and channels, divided by ``B·C'``
    (Shu et al. / CIRKD's reduction). ``C'`` is ``channels`` when given — the reference divides by the
    *student's* width read before its 1×1 adapter — else the width C of the inputs. No pixel is ignored:
    CWD reads no labels.

    Args:
        student, teacher: ``[B, C, H, W]`` of identical shape.
        tau: temperature τ > 0.
        channels: the divisor C' (the student's own width when an adapter widened it), default C.
    """
    if tau <= 0:
        raise ValueError(f"channel_wise_divergence: tau must be > 0, got {tau}")
    _check_pair("channel_wise_divergence", student, teacher, same_channels=True)
    with no_autocast(student):
        log_q = F.log_softmax(upcast(student).flatten(2) / tau, dim=-1)
        log_p = F.log_softmax(upcast(teacher.detach()).flatten(2) / tau, dim=-1)
        b, c = student.shape[:2]
        return tau**2 * (log_p.exp() * (log_p - log_q)).sum() / (b * (channels or c))


# --- nodes: max pooling (SKD) -----------------------------------------------------------------------


def max_pool_nodes(x: Tensor, pool: int | None = None, grid: Sequence[int] | None = None) -> Tensor:
    """Nodes of a relation loss: ``x`` max-pooled, ``[B, C, h, w]``.

    ``pool``: kernel = stride = ``pool`` (partial windows at the border kept, ``ceil_mode``);
    ``grid``: adaptive max pooling to exactly ``grid = (h, w)`` nodes; neither: every pixel is a node.
    """
    if pool is not None and grid is not None:
        raise ValueError(f"max_pool_nodes: set `pool` or `grid`, not both (got pool={pool}, grid={grid})")
    if pool is not None and pool > 1:
        return F.max_pool2d(x, int(pool), int(pool), ceil_mode=True)
    if grid is not None:
        h, w = (int(g) for g in grid)
        if h > x.shape[-2] or w > x.shape[-1]:
            raise ValueError(f"max_pool_nodes: grid {h}x{w} is finer than the feature {tuple(x.shape[-2:])}")
        return F.adaptive_max_pool2d(x, (h, w))
    return x


# --- SKD -----------------------------------------------------------------------------------------------------


def _similarity_mse_naive(s: Tensor, t: Tensor) -> Tensor:
    # s, t: [B, C, N] unit columns. A = F̂ᵀF̂ : [B, N, N].
    a_s = s.transpose(1, 2) @ s
    a_t = t.transpose(1, 2) @ t
    return (a_s - a_t).square().mean()


def _similarity_mse_gram(s: Tensor, t: Tensor) -> Tensor:
    # Σ_ij (A_S - A_T)² = ||F̂_S F̂_Sᵀ||² - 2 ||F̂_S F̂_Tᵀ||² + ||F̂_T F̂_Tᵀ||² (C×C matrices: never N×N).
    n = s.shape[-1]
    g_ss = s @ s.transpose(1, 2)
    g_st = s @ t.transpose(1, 2)
    g_tt = t @ t.transpose(1, 2)
    # The three sums are ~N² and cancel when S ≈ T: add them in float64 (C×C, cheap).
    sq = (
        g_ss.double().square().sum((1, 2))
        - 2 * g_st.double().square().sum((1, 2))
        + g_tt.double().square().sum((1, 2))
    )
    return (sq.clamp_min(0.0) / n**2).mean().to(s.dtype)


def pairwise_similarity_mse(student: Tensor, teacher: Tensor, method: str = "auto") -> Tensor:
    """SKD pairwise distillation ``(1/B) Σ_b (1/N²) Σ_ij (A^S_ij - A^T_ij)²``, ``A = F̂ᵀF̂``.

    ``F̂`` is the ``[C, N]`` node matrix of one image with each node (column) L2-normalised over channels
    (a zero node stays zero; the norm is not detached, as SKD's ``F.normalize``), so ``A_ij`` is the cosine of nodes i and j. Student and teacher may have
    different widths. ``method``: ``"naive"`` builds the ``[B, N, N]`` matrices; ``"gram"`` uses
    ``||A_S - A_T||_F² = ||F̂_S F̂_Sᵀ||² - 2||F̂_S F̂_Tᵀ||² + ||F̂_T F̂_Tᵀ||²`` with C×C Gram matrices
    (O(N·C²), no N×N); ``"auto"`` picks the cheaper. Same value and gradient either way.
    """
    if method not in SIMILARITY_METHODS:
        raise ValueError(
            f"pairwise_similarity_mse: method must be one of {SIMILARITY_METHODS}, got {method!r}"
        )
    _check_pair("pairwise_similarity_mse", student, teacher, same_channels=False)
    with no_autocast(student):
        s = normalize_channels(upcast(student), dim=1).flatten(2)
        t = normalize_channels(upcast(teacher.detach()), dim=1).flatten(2)
        if method == "auto":
            n, c_s, c_t = s.shape[-1], s.shape[1], t.shape[1]
            # FLOPs: naive N²·(C_S + C_T) vs Gram N·(C_S² + C_S·C_T + C_T²).
            method = "gram" if n * (c_s + c_t) > c_s**2 + c_s * c_t + c_t**2 else "naive"
        return _similarity_mse_gram(s, t) if method == "gram" else _similarity_mse_naive(s, t)


# --- IFVD ----------------------------------------------------------------------------------------------------


def downsample_labels(target: Tensor, size: Sequence[int]) -> Tensor:
    """``[B, H, W]`` labels to ``size`` by nearest neighbour (``F.interpolate`` "nearest": source index
    ``floor(i · H / h)``); ignore values are carried over like any label."""
    size = tuple(int(s) for s in size)
    if tuple(target.shape[-2:]) == size:
        return target
    return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()


def prototype_similarity(
    feature: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Cosine of each pixel's feature to its class prototype in its own image, and the valid mask.

    Prototype ``μ_bk = Σ_{p: y_p = k} f_bp / max(n_bk, 1)`` (masked mean over the valid pixels of class k in
    image b); ``sim_bp = cos(f_bp, μ_{b,y_p})`` with ``cos(u, v) = u·v / max(‖u‖·‖v‖, eps)``. Ignored pixels
    (label ``ignore_index`` or outside ``[0, K)``) get ``sim = 0`` and ``valid = False``.

    Args:
        feature: ``[B, C, h, w]``.
        labels: ``[B, h, w]`` integer labels at the feature's resolution.
    Returns:
        ``(sim [B, h, w], valid [B, h, w] bool)``.
    """
    if labels.shape != (feature.shape[0], *feature.shape[-2:]):
        raise ValueError(
            f"prototype_similarity: labels {tuple(labels.shape)} do not match feature {tuple(feature.shape)}"
        )
    with no_autocast(feature):
        f = upcast(feature).flatten(2)  # [B, C, N]
        y = labels.flatten(1)
        valid = (y != ignore_index) & (y >= 0) & (y < num_classes)
        bins = torch.where(valid, y, torch.full_like(y, num_classes))  # one spare bin collects ignored pixels
        onehot = F.one_hot(bins, num_classes + 1)[..., :num_classes].to(f.dtype)  # [B, N, K]
        sums = f @ onehot  # [B, C, K]
        protos = sums / onehot.sum(1, keepdim=True).clamp_min(1.0)
        # Each pixel's own prototype ([B, C, N]); ignored pixels pick bin 0 and are masked below.
        own = torch.gather(protos, 2, torch.where(valid, y, 0)[:, None].expand(-1, f.shape[1], -1))
        dot = (f * own).sum(1)
        norms = f.square().sum(1).sqrt() * own.square().sum(1).sqrt()
        sim = dot / norms.clamp_min(eps)
        sim = torch.where(valid, sim, torch.zeros_like(sim))
        return sim.view(labels.shape), valid.view(labels.shape)


def intra_class_variation_mse(
    student: Tensor, teacher: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255
) -> Tensor:
    """IFVD: ``Σ_{valid p} (sim^S_p - sim^T_p)² / max(#valid, 1)`` over the batch (the reference divides by
    every pixel, ignored ones included with a 0 difference; docs/method.md).

    ``sim`` is :func:`prototype_similarity` of each model's feature (prototypes from its own feature),
    ``labels`` are resized by nearest neighbour to the feature size (:func:`downsample_labels`). Student and
    teacher features share the spatial size; their widths may differ. An all-ignored batch gives 0.
    """
    _check_pair("intra_class_variation_mse", student, teacher, same_channels=False)
    labels = downsample_labels(labels, teacher.shape[-2:])
    sim_s, valid = prototype_similarity(student, labels, num_classes, ignore_index)
    sim_t, _ = prototype_similarity(teacher.detach(), labels, num_classes, ignore_index)
    with no_autocast(sim_s):
        sq = torch.where(valid, (sim_s - sim_t).square(), torch.zeros_like(sim_s))
        return sq.sum() / valid.sum().clamp_min(1).to(sq.dtype)


# --- CIRKD -----------------------------------------------------------------------------------------------------


def unit_nodes(feature: Tensor) -> Tensor:
    """``[B, N, C]`` nodes of the CIRKD relations: every pixel of ``feature`` (no pooling, as the CIRKD
    reference at feature maps < 256×256), each L2-normalised over channels."""
    with no_autocast(feature):
        x = normalize_channels(upcast(feature), dim=1)
        return x.flatten(2).transpose(1, 2)


def cross_image_relation_kl(
    student_nodes: Tensor,
    teacher_nodes: Tensor,
    student_all: Tensor | None = None,
    teacher_all: Tensor | None = None,
    tau: float = 0.1,
    world_size: int = 1,
) -> Tensor:
    """CIRKD mini-batch pixel relations: ``(W/G²) Σ_{i local} Σ_{j=1..G} (1/N) Σ_n KL(P^T_ijn ‖ P^S_ijn)``.

    For anchor image i and image j of the (global) batch, ``P_ijn = softmax_m(x_in · x_jm / τ)`` is the
    relation of node n of image i to the N nodes m of image j (softmax over image j's nodes only, as in
    CIRKD); KL is summed over m, averaged over the N anchor nodes (``batchmean``), summed over pairs.
    On one process (``*_all`` None, W = 1, G = B) this is CIRKD's ``Σ_ij / B²``. Under DDP each of the W
    ranks holds its anchors and the gathered ``*_all`` (G images): the mean over ranks of the returned
    values, and the DDP-averaged gradient, equal the single-process loss on the global batch.

    Args:
        student_nodes, teacher_nodes: ``[B, N, C]`` unit nodes (:func:`unit_nodes`) of the local batch.
        student_all, teacher_all: ``[G, N, C]`` nodes of the global batch (None: the local batch).
        tau: relation temperature (CIRKD: 0.1).
        world_size: number of ranks W.
    """
    if tau <= 0:
        raise ValueError(f"cross_image_relation_kl: tau must be > 0, got {tau}")
    s_all = student_nodes if student_all is None else student_all
    t_all = (teacher_nodes if teacher_all is None else teacher_all).detach()
    t_loc = teacher_nodes.detach()
    g, n = s_all.shape[0], s_all.shape[1]
    total = student_nodes.new_zeros(())
    with no_autocast(student_nodes):
        # One anchor image at a time: a [G, N, N] block instead of [B, G, N, N].
        for i in range(student_nodes.shape[0]):
            log_q = F.log_softmax(torch.einsum("nc,gmc->gnm", student_nodes[i], s_all) / tau, dim=-1)
            log_p = F.log_softmax(torch.einsum("nc,gmc->gnm", t_loc[i], t_all) / tau, dim=-1)
            total = total + (log_p.exp() * (log_p - log_q)).sum() / n
    return total * (world_size / g**2)
