"""Reference implementations shared by the metric tests, as fixtures (no cross-test-module imports)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import pytest
import torch

from bcd_lightning.metrics.morphology import NO_CLASS


def _bfs_component_counts(labels: torch.Tensor, num_classes: int, connectivity: int) -> list[int]:
    """Independent reference: flood fill in pure Python."""
    h, w = labels.shape
    lab = labels.tolist()
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    if connectivity == 4:
        steps = [s for s in steps if 0 in s]
    seen = [[False] * w for _ in range(h)]
    counts = [0] * num_classes
    for y0 in range(h):
        for x0 in range(w):
            c = lab[y0][x0]
            if seen[y0][x0] or c == NO_CLASS:
                continue
            counts[c] += 1
            seen[y0][x0] = True
            queue = deque([(y0, x0)])
            while queue:
                y, x = queue.popleft()
                for dy, dx in steps:
                    v, u = y + dy, x + dx
                    if 0 <= v < h and 0 <= u < w and not seen[v][u] and lab[v][u] == c:
                        seen[v][u] = True
                        queue.append((v, u))
    return counts


@pytest.fixture
def bfs_component_counts() -> Callable[[torch.Tensor, int, int], list[int]]:
    return _bfs_component_counts
