"""Checkpoint writes that a crash cannot truncate.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in
the system temp directory; when that is another filesystem than the run directory the final step is
a copy, and a SIGKILL during it leaves a truncated ``.ckpt``. Here the temporary file is created next
to the target, flushed to disk, then renamed over it (``os.replace`` is atomic on POSIX and Windows):
``last.ckpt`` is always either the previous complete checkpoint or the new complete one
(:mod:`bcd_lightning.utils.atomic`, the one writer of the project).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bcd_lightning.utils.atomic import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temp + fsync + ``os.replace`` for local paths."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own path
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, Path(path))
