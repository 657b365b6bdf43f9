"""Save the global RNG states (torch, CUDA, numpy, python) in checkpoints; restore them on resume.

Lightning 2.x restores weights, optimizers, schedulers and loop counters but no RNG state, so a
resumed run draws different random numbers (augmentations, dropout) than the uninterrupted one. This
callback stores the states at the moment the checkpoint is written and sets them back right before
the first resumed training batch is fetched (``on_train_start``). The data order is restored by the
training loader itself (:mod:`bcd_lightning.data.resumable_loader`).

States are stored as tensors and plain Python values so checkpoints keep loading with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn


def collect_rng_states() -> dict[str, Any]:
    """The current global RNG states, as ``weights_only``-loadable values."""
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class RngState(L.Callback):
    """Checkpoints the global RNG states and restores them when a run resumes.

    Exact on one process. Under DDP only rank 0 writes the checkpoint, so the other ranks' states are
    not saved; the states are then not restored (a warning says so) and each rank keeps its seeded one.
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict.get("rng")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states, self._to_restore = self._to_restore, None
        if states is None:
            return
        if trainer.world_size > 1:
            rank_zero_warn("RngState: RNG states are restored on single-process runs only.")
            return
        set_rng_states(states)
