"""Which checkpoint a run resumes from, checked before any work starts.

``ckpt_path`` accepts:

* ``null``: start from scratch;
* ``last``: ``<this run dir>/checkpoints/last.ckpt``. Every ``bcd-train`` gets a new run directory, so
  continue an earlier run in place with ``hydra.run.dir=<its run dir> ckpt_path=last``;
* a run directory (``logs/<task>/runs/<time>``) or its ``checkpoints/`` folder: its ``last.ckpt``,
  continued in a new run directory;
* a ``.ckpt`` file.

``auto_resume=true`` resumes from ``<this run dir>/checkpoints/last.ckpt`` when it exists and starts
from scratch otherwise: one command for a job that a scheduler may restart (fix ``hydra.run.dir``).
Where Lightning's SLURM requeue (SIGUSR1) saved a newer ``<run dir>/hpc_ckpt_<n>.ckpt``, that one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from bcd_lightning.utils.checkpoint_read import key_mismatch, read_checkpoint
from bcd_lightning.utils.config_check import ConfigError

#: Lightning's own symbolic checkpoint names, passed through untouched.
LIGHTNING_NAMES = {"best", "hpc", "registry"}


class ResumeError(ConfigError):
    """The checkpoint to resume from is missing, unreadable or belongs to another model."""


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def resolve_ckpt_path(
    ckpt_path: str | None, output_dir: Path, auto_resume: bool = False, log_dir: Path | None = None
) -> str | None:
    """The checkpoint file to resume from (validated), or ``None`` to start from scratch."""
    own_last = checkpoint_dir(output_dir) / "last.ckpt"
    if auto_resume:
        if ckpt_path not in (None, "last"):
            raise ResumeError(
                f"auto_resume=true resumes from {own_last} by itself; drop ckpt_path={ckpt_path!r} "
                "(or set auto_resume=false to resume from that checkpoint)."
            )
        remove_stale_temp_files(own_last.parent)
        candidates = [p for p in [own_last, *output_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
        if not candidates:
            return None
        newest = max(candidates, key=lambda p: p.stat().st_mtime_ns)  # SLURM requeue: hpc_ckpt_<n>.ckpt
        check_checkpoint_file(newest)
        return str(newest)
    if ckpt_path is None or ckpt_path in LIGHTNING_NAMES:
        return ckpt_path
    if ckpt_path == "last":
        if not own_last.is_file():
            raise ResumeError(
                f"ckpt_path=last: no checkpoint at {own_last} (this run's new directory). "
                "To continue an earlier run add hydra.run.dir=<its run directory>, or pass "
                f"ckpt_path=<its run directory or a .ckpt file>.{_latest_hint(log_dir)}"
            )
        path = own_last
    else:
        path = Path(ckpt_path).expanduser()
        if path.is_dir():
            inner = path / "last.ckpt" if path.name == "checkpoints" else checkpoint_dir(path) / "last.ckpt"
            if not inner.is_file():
                raise ResumeError(f"ckpt_path={ckpt_path}: the directory has no {inner.relative_to(path)}.")
            path = inner
    remove_stale_temp_files(path.parent)
    check_checkpoint_file(path)
    return str(path)


def _latest_hint(log_dir: Path | None) -> str:
    """`` Most recent: <path>`` over ``<log_dir>/**/checkpoints/last.ckpt``, or nothing."""
    if log_dir is None or not Path(log_dir).is_dir():
        return ""
    found = [p for p in Path(log_dir).glob("**/checkpoints/last.ckpt") if p.is_file()]
    if not found:
        return ""
    latest = max(found, key=lambda p: p.stat().st_mtime)
    return f" Most recent last.ckpt under {log_dir}: {latest}"


def load_checkpoint_lazily(path: Path) -> dict[str, Any]:
    """``torch.load`` memory-mapped (cheap for big files); one clear error per failure mode."""
    return read_checkpoint(path, "ckpt_path: checkpoint", ResumeError, mmap=True)


def check_checkpoint_file(path: Path) -> dict[str, Any]:
    """A readable Lightning *training* checkpoint (weights plus loop and optimizer state)."""
    checkpoint = load_checkpoint_lazily(path)
    needed = ("state_dict", "loops", "optimizer_states")
    missing = [k for k in needed if not isinstance(checkpoint, Mapping) or k not in checkpoint]
    if missing:
        raise ResumeError(
            f"ckpt_path: {path} is not a Lightning training checkpoint (no {', '.join(missing)}): a "
            "plain weights file cannot resume a run. Use it as teacher.ckpt, or with bcd-eval."
        )
    return checkpoint


def check_checkpoint_matches(path: str | Path, module: nn.Module) -> None:
    """Fail with one line when the checkpoint's weights do not fit ``module`` (a mixed-up run)."""
    state = load_checkpoint_lazily(Path(path))["state_dict"]
    problem = key_mismatch(module.state_dict(), state)
    if problem:
        raise ResumeError(
            f"ckpt_path: {path} belongs to another model or distillation setup: {problem}. Resume with "
            "the config the checkpoint was trained with (it is stored in <run dir>/config.yaml)."
        )


def remove_stale_temp_files(directory: Path) -> None:
    """Delete temporary files a killed checkpoint write left behind (see utils.checkpoint_io)."""
    if directory.is_dir():
        for tmp in directory.glob(".*.ckpt.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
