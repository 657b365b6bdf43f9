"""A teacher that cannot drift: eval-locked, gradient-free, strictly loaded, never checkpointed."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn

from bcd_lightning.models.outputs import SegOutput
from bcd_lightning.models.seg_model import SegModel
from bcd_lightning.utils.checkpoint_read import key_mismatch, read_checkpoint
from bcd_lightning.utils.errors import CheckpointError

#: ``teacher.precision`` values and the autocast dtype each selects (``None``: plain fp32).
TEACHER_PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def parse_precision(precision: str | int) -> str:
    """``32`` / ``"32"``, ``"bf16"``, ``16`` / ``"16"``; a ``ValueError`` names the setting otherwise."""
    key = str(precision)
    if key not in TEACHER_PRECISIONS:
        raise ValueError(
            f"teacher.precision must be one of {list(TEACHER_PRECISIONS)} (32, bf16 or 16), got {precision!r}"
        )
    return key


class TeacherLoadError(CheckpointError):
    """The *teacher's* checkpoint is missing, unreadable, or belongs to another architecture (student
    checkpoints raise :class:`~bcd_lightning.utils.errors.CheckpointError`)."""


def extract_model_state(checkpoint: dict, source: str) -> dict[str, Tensor]:
    """The ``SegModel`` state dict inside a Lightning checkpoint or a plain state dict.

    Lightning checkpoints of this framework store the trained network under ``model.``.
    """
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source}: no state dict found (empty or not a checkpoint).")
    if any(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return state


def load_checkpoint_file(path: str | Path, what: str = "Checkpoint", hint: str = "") -> dict:
    """``torch.load`` (weights only) with one clear :class:`CheckpointError` per failure mode."""
    return read_checkpoint(path, what, CheckpointError, hint)


def load_weights_strict(model: SegModel, state: dict[str, Tensor], source: str, hint: str = "") -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is one clear error."""
    problem = key_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(
            f"{source} does not match the architecture ({model.arch}/{model.encoder_name}): "
            f"{problem}.{hint and ' ' + hint}"
        )
    model.load_state_dict(state, strict=True)


class FrozenTeacher(nn.Module):
    """Wraps a :class:`SegModel`; stays in eval mode and never takes gradients.

    ``train(True)`` is ignored, every parameter has ``requires_grad=False`` and the forward pass runs
    under ``torch.no_grad()`` (not ``inference_mode``, whose tensors cannot enter autograd later).

    Args:
        model: the teacher network.
        checkpoint: loaded strictly when given.
        precision: ``"32"`` (default), ``"bf16"`` or ``"16"``: autocast for the teacher's forward alone
            (the student keeps the trainer's precision). Outputs are returned in fp32 either way, so the
            losses see the same dtype; only the teacher's arithmetic is cheaper.
    """

    def __init__(
        self, model: SegModel, checkpoint: str | Path | None = None, precision: str | int = "32"
    ) -> None:
        super().__init__()
        self.model = model
        self.precision = parse_precision(precision)
        if checkpoint is not None:
            self.load_strict(checkpoint)
        self.model.requires_grad_(False)
        super().train(False)

    def load_strict(self, checkpoint: str | Path) -> None:
        try:
            raw = load_checkpoint_file(
                checkpoint, "Teacher checkpoint", "Train one with `make train-teacher`."
            )
            state = extract_model_state(raw, f"Teacher checkpoint {checkpoint}")
            load_weights_strict(
                self.model,
                state,
                f"Teacher checkpoint {checkpoint}",
                "Check teacher.model matches the config the teacher was trained with.",
            )
        except CheckpointError as err:  # the same message, labelled as the teacher's
            raise TeacherLoadError(str(err)) from err

    def train(self, mode: bool = True) -> FrozenTeacher:
        # Lightning and user code call train(); the teacher stays in eval whatever is asked.
        return super().train(False)

    def forward(self, x: Tensor, outputs: Collection[str] | None = None) -> SegOutput:
        """The teacher's :class:`SegOutput`; only the fields in ``outputs`` when given (SegModel checks
        them)."""
        dtype = TEACHER_PRECISIONS[self.precision]
        autocast = nullcontext() if dtype is None else torch.autocast(x.device.type, dtype=dtype)
        with torch.no_grad(), autocast:
            out = self.model(x, outputs=outputs)
        if dtype is None:
            return out
        return SegOutput(
            logits=None if out.logits is None else out.logits.float(),
            stages=tuple(s.float() for s in out.stages),
            decoder=None if out.decoder is None else out.decoder.float(),
        )

    @property
    def num_classes(self) -> int:
        return self.model.num_classes
