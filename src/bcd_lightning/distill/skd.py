"""Pairwise similarity distillation (SKD's pair-wise term, Liu et al. 2019) on max-pooled nodes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from bcd_lightning.distill.adapters import Feature, FeaturePairLoss
from bcd_lightning.distill.baseline_functional import (
    SIMILARITY_METHODS,
    max_pool_nodes,
    pairwise_similarity_mse,
)


def check_nodes(owner: str, pool: int | None, grid: Sequence[int] | None) -> tuple[int | None, tuple | None]:
    """Validated ``pool`` (int >= 1 or None) and ``grid`` (two ints >= 1 or None); not both."""
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
        raise ValueError(f"{owner}: option `pool` must be null or an integer >= 1, got {pool!r}")
    if grid is not None:
        ok = not isinstance(grid, (str, bytes)) and isinstance(grid, Sequence) and len(grid) == 2
        if not ok or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
            raise ValueError(
                f"{owner}: option `grid` must be null or [h, w] with integers >= 1, got {grid!r}"
            )
        grid = (int(grid[0]), int(grid[1]))
        if pool not in (None, 1):
            raise ValueError(f"{owner}: set `pool` or `grid`, not both (got pool={pool}, grid={list(grid)})")
        pool = None
    return pool, grid


class PairwiseSimilarityDistillation(FeaturePairLoss):
    """``(1/B) Σ_b (1/N²) Σ_ij (A^S_ij - A^T_ij)²`` with ``A_ij`` the cosine of nodes i and j.

    Nodes: ``feature`` of each model (student resized bilinearly to the teacher's size; both average-pooled
    by ``avg_pool`` first when set), max-pooled with
    kernel = stride = ``pool`` (ceil mode) or adaptively to a ``grid`` of nodes. ``pool: null`` and
    ``grid: null`` is the exact, un-pooled mode: every pixel is a node, computed through C×C Gram matrices
    (never an N×N matrix) when that is cheaper. Channel-free, so no adapter is needed (``auto`` = none).
    See :func:`~bcd_lightning.distill.baseline_functional.pairwise_similarity_mse`.

    Args:
        feature: ``"logits"``, ``"decoder"`` or a 0-based stage index.
        pool: max-pool kernel and stride (CIRKD's ``pool_scale=0.5`` is a grid of 2×2 nodes).
        grid: ``[h, w]`` node grid by adaptive max pooling (instead of ``pool``).
        method: ``auto``, ``gram`` or ``naive`` (same value; cost only).
        student_adapter: ``auto``/``none`` (identity), ``conv1x1`` or ``conv1x1_bn``.
        avg_pool: average-pool both features (kernel = stride) before the nodes; null: none.
    """

    def __init__(
        self,
        feature: Feature = 2,
        pool: int | None = 2,
        grid: Sequence[int] | None = None,
        method: str = "auto",
        student_adapter: str = "auto",
        avg_pool: int | None = None,
    ) -> None:
        super().__init__(feature, student_adapter, avg_pool)
        owner = type(self).__name__
        self.pool, self.grid = check_nodes(owner, pool, grid)
        if method not in SIMILARITY_METHODS:
            raise ValueError(
                f"{owner}: option `method` must be one of {list(SIMILARITY_METHODS)}, got {method!r}"
            )
        self.method = method

    def compute(self, student: Tensor, teacher: Tensor, target: Tensor, ignore_index: int) -> Tensor:
        s = max_pool_nodes(student, self.pool, self.grid)
        t = max_pool_nodes(teacher, self.pool, self.grid)
        return pairwise_similarity_mse(s, t, self.method)

    def extra_repr(self) -> str:
        return (
            f"feature={self.feature!r}, pool={self.pool}, grid={self.grid}, method={self.method!r}, "
            f"student_adapter={self.student_adapter!r}, avg_pool={self.avg_pool}"
        )
