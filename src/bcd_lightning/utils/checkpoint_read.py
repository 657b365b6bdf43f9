"""Reading a checkpoint file and checking its keys: one implementation for the teacher, resume and eval.

Each caller passes its own wording (``what``), hint and error class, so the messages keep naming the
setting to fix (``teacher.ckpt``, ``ckpt_path``) while the failure modes are detected in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def read_checkpoint(
    path: str | Path, what: str, error: type[Exception], hint: str = "", mmap: bool = False
) -> Any:
    """``torch.load`` (weights only, on the CPU) with one ``error`` per failure mode.

    ``mmap=True`` maps the file instead of reading it (cheap for a big file read only in part).
    """
    path = Path(path)
    tail = f" {hint}" if hint else ""
    if not path.exists():
        raise error(f"{what} not found: {path}.{tail}")
    if not path.is_file():
        raise error(f"{what} {path} is not a file.{tail}")
    if path.stat().st_size == 0:
        raise error(
            f"{what} {path} is empty (0 bytes): it was never written completely; use an earlier one.{tail}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise error(
            f"{what} {path} could not be read (truncated, corrupt or not a PyTorch file): {first_line(err)}"
        ) from err


def key_mismatch(own: Mapping[str, Any], state: Mapping[str, Any]) -> str | None:
    """``None`` when ``state`` has exactly the keys and shapes of ``own``, else what differs (first 5 each)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or mismatched):
        return None
    return (
        f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
        f"{len(mismatched)} shape mismatches {mismatched[:5]}"
    )


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception message (torch's can span many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if ". " in text:  # torch appends paragraphs of advice to the one sentence that matters
        text = text.split(". ", 1)[0] + "."
    return text if len(text) <= 300 else text[:297] + "..."
