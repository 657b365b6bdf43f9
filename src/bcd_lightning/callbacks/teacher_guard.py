"""Proof, on every run, that the teacher did not change while the student trained."""

from __future__ import annotations

import hashlib

import lightning as L
import torch
from torch import nn


def state_digest(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes and exact bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TeacherGuard(L.Callback):
    """Hashes the teacher at fit start and end; raises if a weight or buffer moved, or it left eval mode.

    Also checks, at every training batch, that the teacher is in eval mode and takes no gradients.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.digest_at_start: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        teacher = getattr(pl_module, "teacher", None)
        if teacher is not None:
            self.digest_at_start = state_digest(teacher)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        teacher = getattr(pl_module, "teacher", None)
        if teacher is None or trainer.global_step % self.check_every_n_steps:
            return
        if any(m.training for m in teacher.modules()):
            raise RuntimeError("TeacherGuard: a teacher module is in training mode during a training step.")
        if any(p.requires_grad for p in teacher.parameters()):
            raise RuntimeError("TeacherGuard: a teacher parameter requires grad.")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        teacher = getattr(pl_module, "teacher", None)
        if teacher is None or self.digest_at_start is None:
            return
        if state_digest(teacher) != self.digest_at_start:
            raise RuntimeError("TeacherGuard: teacher weights or buffers changed during fitting.")
        for logger in trainer.loggers:
            logger.log_metrics({"teacher/unchanged": 1.0}, step=trainer.global_step)
