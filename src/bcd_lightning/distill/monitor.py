"""What each distillation term does during training: its value and its gradient norm on the student.

``TermMonitor`` is a Lightning callback for a ``DistillationModule``. Every ``every_n_steps`` optimizer
steps (and at step 0) it recomputes, on the batch just trained on, the CE and each loss term, and logs

* ``monitor/<term>/value``: the weighted term as it enters the total (weight × calibration × raw);
* ``monitor/<term>/grad_norm``: the L2 norm over all student parameters of its gradient;
* ``monitor/<term>/factor``: the calibration factor (1 without ``calibrate``);
* ``monitor/ce/value`` and ``monitor/ce/grad_norm`` for comparison.

Training is unaffected: gradients come from ``torch.autograd.grad`` (no ``.grad`` is touched), and the
BatchNorm statistics and the RNG states the extra forward pass would change are restored afterwards.
Add it with ``+callbacks.term_monitor={_target_: bcd_lightning.distill.monitor.TermMonitor}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from bcd_lightning.lit.distillation import DistillationModule


def _grad_norm(value: Tensor, params: list[torch.nn.Parameter]) -> float:
    if not value.requires_grad:
        return 0.0
    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float().square().sum() for g in grads if g is not None), torch.zeros(()))))


class TermMonitor(L.Callback):
    """Log each term's weighted value and student-gradient norm every ``every_n_steps`` steps."""

    def __init__(self, every_n_steps: int = 50) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"TermMonitor: every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        losses = getattr(pl_module, "distill_losses", None)
        step = trainer.global_step - 1  # the step just taken
        if not losses or step % self.every_n_steps:
            return
        # Only a DistillationModule has `distill_losses`; the hook's signature is the Callback base's.
        pl_module = cast("DistillationModule", pl_module)
        model = pl_module.model
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        rng = torch.get_rng_state()
        params = [p for p in model.parameters() if p.requires_grad]
        logged: dict[str, float] = {}
        try:
            with torch.enable_grad():
                student = model(batch["image"])
                teacher = pl_module._teacher_outputs(batch)
                target = batch["mask"]
                ce = F.cross_entropy(student.logits.float(), target, ignore_index=pl_module.ignore_index)
                logged["monitor/ce/value"] = float(ce)
                logged["monitor/ce/grad_norm"] = _grad_norm(ce, params)
                for name, loss in losses.items():
                    raw = loss.forward(
                        student, teacher, target, pl_module.ignore_index
                    )  # no calibration update
                    calibration = getattr(loss, "calibration", None)
                    factor = float(calibration.factor) if calibration is not None else 1.0
                    weighted = pl_module.weight_at(name, trainer.global_step) * factor * raw
                    logged[f"monitor/{name}/value"] = float(weighted)
                    logged[f"monitor/{name}/grad_norm"] = _grad_norm(weighted, params)
                    logged[f"monitor/{name}/factor"] = factor
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
            torch.set_rng_state(rng)
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)
