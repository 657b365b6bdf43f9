"""Cross-image pixel-relation distillation (CIRKD's mini-batch term, Yang et al. 2022) over the batch."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor

from bcd_lightning.distill.adapters import Feature, FeaturePairLoss
from bcd_lightning.distill.baseline_functional import cross_image_relation_kl, unit_nodes


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_batch(x: Tensor, with_grad: bool) -> Tensor:
    """Concatenate ``x`` over all ranks along dim 0 (rank order); ``x`` itself on one process.

    ``with_grad``: use ``torch.distributed.nn.functional.all_gather``, whose backward sends each rank the
    summed gradient of its own slice, so the loss of remote anchors reaches the local student. Ranks may
    hold different batch sizes (padded for the collective, then cut). All other dims must match.
    """
    world = _world()
    if world == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    counts = [int(s.item()) for s in sizes]
    pad = max(counts) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():
            # Deprecated in favour of a private API in torch >= 2.6; still the public autograd gather.
            warnings.simplefilter("ignore", FutureWarning)
            parts = list(all_gather(x))
    else:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


class CrossImageRelationDistillation(FeaturePairLoss):
    """``(W/G²) Σ_{i local} Σ_{j ≤ G} (1/N) Σ_n KL(softmax_m(t_in·t_jm/τ) ‖ softmax_m(s_in·s_jm/τ))``.

    Nodes: every pixel of ``feature`` (student resized bilinearly to the teacher's size), after the
    optional average pooling ``avg_pool`` (kernel = stride), L2-normalised over channels. The CIRKD
    reference never max-pools; it uses every node of its stride-8 feature (and average-pools 4×4 only
    at ≥ 256×256). Relations pair every local anchor image with every image j of the global batch (G
    images over W ranks, gathered with a gradient-carrying all-gather; W = 1 and G = B on one process,
    where it is CIRKD's ``Σ_ij/B²``). The mean over ranks of the value and the DDP-averaged gradient equal
    the single-process loss on the global batch. Memory: one ``[G, N, N]`` block per anchor image, kept
    for backward, so O(B·G·N²): pool to keep N small. Channel-free, so no adapter (``auto`` = none).
    See :func:`~bcd_lightning.distill.baseline_functional.cross_image_relation_kl`.

    Args:
        feature: ``"logits"``, ``"decoder"`` or a 0-based stage index.
        tau: relation temperature (CIRKD: 0.1).
        avg_pool: average-pooling kernel = stride before the nodes (null: every pixel is a node).
        global_batch: gather the batch over DDP ranks (False: local batch only, as the original).
        student_adapter: ``auto``/``none`` (identity), ``conv1x1`` or ``conv1x1_bn``.
    """

    def __init__(
        self,
        feature: Feature = 2,
        tau: float = 0.1,
        avg_pool: int | None = None,
        global_batch: bool = True,
        student_adapter: str = "auto",
    ) -> None:
        super().__init__(feature, student_adapter, avg_pool)
        owner = type(self).__name__
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0:
            raise ValueError(f"{owner}: option `tau` must be a number > 0, got {tau!r}")
        if not isinstance(global_batch, bool):
            raise ValueError(f"{owner}: option `global_batch` must be true or false, got {global_batch!r}")
        self.tau = float(tau)
        self.global_batch = global_batch

    def compute(self, student: Tensor, teacher: Tensor, target: Tensor, ignore_index: int) -> Tensor:
        s, t = unit_nodes(student), unit_nodes(teacher)
        world = _world() if self.global_batch else 1
        if world == 1:
            return cross_image_relation_kl(s, t, tau=self.tau)
        s_all, t_all = gather_batch(s, with_grad=True), gather_batch(t, with_grad=False)
        return cross_image_relation_kl(s, t, s_all, t_all, self.tau, world)

    def extra_repr(self) -> str:
        return (
            f"feature={self.feature!r}, tau={self.tau}, avg_pool={self.avg_pool}, "
            f"global_batch={self.global_batch}, student_adapter={self.student_adapter!r}"
        )
