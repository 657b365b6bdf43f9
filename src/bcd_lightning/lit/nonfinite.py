"""What a training step does with a NaN/inf loss: stop the run, or skip the step without a trace.

``stop`` (default) raises :class:`FloatingPointError` naming the loss term(s), their weights and the
step. ``skip`` returns ``None`` from ``training_step``, which Lightning's automatic optimization
treats as "no backward, no update"; the BatchNorm running statistics the forward pass already moved
are put back from a snapshot, so the skipped batch leaves no trace in the weights. The optimizer
step counter (``global_step``, hence schedules) still advances. Skipped steps are counted, logged as
``train/skipped_steps`` and saved in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from bcd_lightning.utils.errors import NonFiniteLossError

POLICIES = ("stop", "skip")


class NonFiniteGuard:
    """Per-module policy and counter; see the module docstring."""

    def __init__(self, policy: str = "stop") -> None:
        if policy not in POLICIES:
            raise ValueError(f"nonfinite={policy!r} is not one of {', '.join(POLICIES)}.")
        self.policy = policy
        self.skipped = 0

    def snapshot(self, module: L.LightningModule) -> dict[str, Tensor] | None:
        """Copies of the module's buffers (BatchNorm statistics) before the forward pass; skip only."""
        if self.policy != "skip":
            return None
        return {name: buf.detach().clone() for name, buf in module.named_buffers()}

    def on_nonfinite(
        self,
        module: L.LightningModule,
        terms: Mapping[str, Tensor],
        weights: Mapping[str, float] | None = None,
        snapshot: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Call when the total loss is not finite: raises (``stop``) or undoes the step (``skip``)."""
        where = f"step {module.global_step} (epoch {module.current_epoch})"
        culprits = describe(terms, weights or {})
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"Non-finite loss at {where}: {culprits}. Check the learning rate, temperatures and loss "
                "weights, or set nonfinite=skip to skip such steps."
            )
        if module.trainer.world_size > 1:
            raise NonFiniteLossError(
                f"Non-finite loss at {where}: {culprits}. nonfinite=skip needs a single process (one "
                "rank cannot skip a step the others take); use nonfinite=stop."
            )
        if snapshot is not None:
            with torch.no_grad():
                for name, buf in module.named_buffers():
                    if name in snapshot:
                        buf.copy_(snapshot[name])
        self.skipped += 1
        rank_zero_warn(f"Skipped {where}: non-finite loss {culprits} ({self.skipped} skipped so far).")
        module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))


def describe(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> str:
    """``"kd=nan (weight 1.0)"`` for each term whose raw or weighted value is not finite."""
    bad = []
    for name, value in terms.items():
        raw = float(value.detach().float())
        weight = weights.get(name, 1.0)
        if not (math.isfinite(raw) and math.isfinite(raw * weight)):
            bad.append(f"{name}={raw} (weight {weight})" if name in weights else f"{name}={raw}")
    return ", ".join(bad) or "the total (every term is finite alone: an overflow of their sum)"
