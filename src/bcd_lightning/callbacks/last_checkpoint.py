"""``checkpoints/last.ckpt`` after every epoch (or every N steps), whatever the monitored metric did."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


class LastCheckpoint(ModelCheckpoint):
    """The latest training state, always: what ``ckpt_path=last`` and ``auto_resume`` resume from.

    Lightning's ``ModelCheckpoint(save_last=True)`` (checked in lightning 2.6: ``on_validation_end`` and
    ``on_train_epoch_end`` call ``_save_last_checkpoint`` only when ``_last_global_step_saved ==
    trainer.global_step``) rewrites ``last.ckpt`` only in a step where *that same callback* saved a top-k
    checkpoint; for a callback monitoring ``val/mIoU`` with ``save_top_k=1`` that is a new best (plus once
    at train end if it never saved, and on an exception with ``save_on_exception``). After a crash a run
    would go back to its last best epoch. This is an unmonitored ModelCheckpoint writing one file,
    ``last.ckpt``, on its own schedule. Being its own class gives it its own checkpoint state key, so
    users may add other unmonitored ModelCheckpoints beside it.

    A run stopped by a signal mid-fit also writes it: SIGTERM (SLURM preemption / time limit, ``docker
    stop``; Lightning raises ``SIGTERMException`` at the end of the step) and the ``SystemExit`` of
    submitit's requeue handler (SIGUSR2 before the time limit), so the requeued job resumes from the
    step it stopped at (``auto_resume=true``).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "last",
        every_n_epochs: int | None = 1,
        every_n_train_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            every_n_epochs=every_n_epochs,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
            **kwargs,
        )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SystemExit) or trainer.state.fn != "fit" or self.dirpath is None:
            return  # only a signal-driven stop (SIGTERMException is a SystemExit); errors keep the old file
        # fast_dev_run: set on the Trainer at init, but not a declared attribute
        if getattr(trainer, "fast_dev_run", False) or trainer.sanity_checking:
            return
        path = os.path.join(self.dirpath, f"{self.filename}{self.FILE_EXTENSION}")
        trainer.save_checkpoint(path)
        rank_zero_info(f"Stopped by a signal at step {trainer.global_step}: saved {path}")
