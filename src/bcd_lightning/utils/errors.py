"""What the user sees when something goes wrong: one ``error:`` line for a mistake they can fix, the full
traceback for anything else (a bug keeps what matters), and a failed job that never ends its sweep.

* :class:`UserError` and its subclasses are mistakes the user can fix (a config value, a file, a
  checkpoint); only those print as one line. Every other exception keeps its traceback (console and the
  run's ``train.log``); an out-of-memory error adds a one-line hint.
* :func:`hydra_task` wraps a Hydra task: a failed job writes ``metrics.json`` with ``status: failed``
  and the error into its run directory and *returns* (never ``sys.exit`` inside a task: ``SystemExit``
  passes through Hydra's job runner and would end the sweep). :class:`FailedJobs`, a Hydra callback,
  collects the failed jobs of the run or sweep in the launching process; the command then exits
  non-zero naming them (:func:`exit_if_failed`).
* The printer never reads a message as Rich markup: ``ds/a[/b]``, ``[r, g, b]``, ``s03[final].png`` and
  torch's ``[enforce fail at ...]`` print as written.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from rich.console import Console
from rich.text import Text

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("bcd_lightning")

#: Exit status of a run stopped by SIGTERM (the shell's 128 + 15).
SIGTERM_EXIT = 143


class UserError(Exception):
    """A mistake the user can fix; the message names the key, file or value and what to do."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another architecture."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN/inf (``nonfinite=stop``); the message names the term, weight and step."""


class StorageError(UserError, OSError):
    """A file or folder cannot be written or read (permissions, a file where a folder should be, disk full)."""


#: OS errors about a path the user gave (permissions, a file in the way): fixable, printed in one line.
_PATH_OS_ERRORS = (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError, FileNotFoundError)


def is_user_error(err: BaseException) -> bool:
    """True for mistakes the user can fix (printed in one line); False for bugs (traceback kept)."""
    if isinstance(err, InstantiationException):
        cause = innermost(err)
        # Hydra's own message (bad _target_, missing argument), or a constructor rejecting a config value
        # (ValueError: the value is named) or a user error raised by the target.
        return cause is err or isinstance(cause, ValueError) or is_user_error(cause)
    if isinstance(err, UserError):
        return True
    if isinstance(err, _PATH_OS_ERRORS) and getattr(err, "filename", None):
        return True
    return isinstance(err, OSError) and err.errno in (28, 122)  # ENOSPC, EDQUOT: disk full / quota


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    text = str(err)
    return isinstance(err, oom) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


OOM_HINT = (
    "hint: out of memory. Lower data.batch_size (per device; keep the global batch with "
    "trainer.accumulate_grad_batches), run the teacher at teacher.precision=bf16, or raise the context "
    "loss's node stride (distill.losses.context.loss.stride)."
)


def innermost(err: BaseException) -> BaseException:
    """Hydra wraps a target's exception; the innermost one is the one written for the user."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line (a message spanning lines is joined, so logs and grep keep it whole)."""
    err = innermost(err)
    worker = _worker_error(str(err))
    if worker is not None:  # re-raised from a DataLoader worker: its original message, not the traceback
        return " ".join(f"{type(err).__name__}: {worker}".split())
    if isinstance(err, OSError) and not isinstance(err, UserError) and err.filename:
        text = f"{err.strerror or err}: {err.filename}"
        if err.filename2:
            text += f" -> {err.filename2}"
        return " ".join(f"{type(err).__name__}: {text}".split())
    return " ".join(f"{type(err).__name__}: {err}".split())


def _worker_error(text: str) -> str | None:
    """The original message inside torch's "Caught X in DataLoader worker process N. Original Traceback
    ..." (the last block of the traceback: ``module.Type: message``), with the worker named."""
    head, sep, trace = text.partition("Original Traceback (most recent call last):")
    if not sep or "DataLoader worker" not in head:
        return None
    lines = trace.strip("\n").splitlines()
    start = max((i for i, line in enumerate(lines) if line and not line.startswith(" ")), default=None)
    if start is None:
        return None
    message = "\n".join(lines[start:]).split(": ", 1)[-1]
    where = head.split(" in ", 1)[-1].strip().rstrip(".")
    return f"{message} (in {where})"


def print_error(message: str, debug_hint: bool = True) -> None:
    """``error: <message>`` on stderr, read as plain text (never as markup), never wrapped."""
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    console.print(Text.assemble(("error:", "bold red"), " ", message))
    if debug_hint:
        console.print(Text("(set BCD_DEBUG=1 for the full traceback)", style="dim"))


def report(err: BaseException) -> None:
    """Print ``err`` as the user should see it: one line for a user error, else its full traceback."""
    if is_user_error(err):
        print_error(one_line(err))
        _to_log_files(logging.ERROR, f"error: {one_line(err)}")
        return
    trace = "".join(traceback.format_exception(err))
    sys.stderr.write(trace)
    _to_log_files(logging.ERROR, trace.rstrip())
    if is_out_of_memory(err):
        print_error(OOM_HINT, debug_hint=False)
        _to_log_files(logging.ERROR, OOM_HINT)
    sys.stderr.flush()


def _to_log_files(level: int, message: str) -> None:
    """Write to the file handlers of the root logger only (Hydra's ``<run dir>/train.log``): the console
    already got the message from :func:`report`."""
    record = logging.LogRecord("bcd_lightning", level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def friendly_errors(fn: F) -> F:
    """For commands outside Hydra tasks: a user error prints one line and exits with status 1; anything
    else keeps its traceback (plus the out-of-memory hint)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if os.environ.get("BCD_DEBUG"):
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not is_user_error(err):
                if is_out_of_memory(err):
                    print_error(OOM_HINT, debug_hint=False)
                raise
            report(err)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- jobs


class JobFailed(Exception):
    """Raised to a sweeper that must see a failure to record it (Optuna marks the trial failed)."""


def failure_record(err: BaseException) -> dict[str, Any]:
    """What a failed job's ``metrics.json`` says about the error."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(err, SIGTERMException):
        return {
            "status": "failed",
            "error": "received SIGTERM (checkpoints/last.ckpt saved)",
            "signal": "SIGTERM",
        }
    return {"status": "failed", "error": one_line(err), "error_type": type(innermost(err)).__name__}


def hydra_task(record: Callable[[Any, BaseException], None] | None = None) -> Callable[[F], F]:
    """Wrap a Hydra task so one failed job never ends its sweep (see the module docstring).

    ``record(cfg, err)`` writes the failed job's ``metrics.json``. The task returns ``None`` for a failed
    job under the basic sweeper (which would re-raise at the end of the batch) and raises
    :class:`JobFailed` under any other sweeper (Optuna then marks the trial failed and goes on). A SIGTERM
    ends the process with status 143 after recording (the job was asked to stop, not the sweep to go on).
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(cfg: Any) -> Any:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            try:
                return fn(cfg)
            except (Exception, SIGTERMException) as err:
                if record is not None:
                    try:
                        record(cfg, err)
                    except Exception as write_err:  # the run dir may be what failed: report both
                        log.warning("could not record the failure in metrics.json: %s", write_err)
                if isinstance(err, SIGTERMException):
                    out = _output_dir(cfg)
                    print_error(
                        f"received SIGTERM: saved {out}/checkpoints/last.ckpt; stopping with status "
                        f"{SIGTERM_EXIT}. Continue with hydra.run.dir={out} ckpt_path=last (or auto_resume=true).",
                        debug_hint=False,
                    )
                    raise SystemExit(SIGTERM_EXIT) from None
                if os.environ.get("BCD_DEBUG"):
                    raise
                report(err)
                if _sweeper_needs_exception():
                    raise JobFailed(one_line(err)) from None
                return None

        return wrapper  # type: ignore[return-value]

    return decorate


def _output_dir(cfg: Any) -> str:
    try:
        return str(cfg.paths.output_dir)
    except Exception:  # a config without paths: say "the run directory"
        return "<run dir>"


def _sweeper_needs_exception() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hydra = HydraConfig.get()
    target = str((hydra.sweeper or {}).get("_target_", ""))
    return hydra.mode == RunMode.MULTIRUN and not target.endswith("BasicSweeper")


def failed_jobs_under(root: Path, name: str = "metrics.json") -> list[tuple[Path, str]]:
    """``(run dir, error)`` of every job under ``root`` whose record says ``status: failed``."""
    found = []
    paths = [root / name] if (root / name).is_file() else sorted(Path(root).rglob(name))
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("status") == "failed":
            found.append((path.parent, str(record.get("error", "?"))))
    return found


#: Failed jobs found by :class:`FailedJobs` in this process (read by :func:`exit_if_failed`).
FAILED: list[tuple[Path, str]] = []


class FailedJobs:
    """Hydra callback (``hydra.callbacks.failed_jobs``): after the run or sweep, in the launching
    process, collect the jobs whose ``metrics.json`` says failed (jobs of any launcher write one)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        FAILED.clear()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        FAILED.clear()

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        hydra_cfg = getattr(kwargs.get("job_return"), "hydra_cfg", None) or config
        out = Path(str(hydra_cfg.hydra.runtime.output_dir))
        FAILED.extend(failed_jobs_under(out) if (out / "metrics.json").is_file() else [])

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        FAILED.extend(failed_jobs_under(Path(config.hydra.sweep.dir)))

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        pass

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        pass


def exit_if_failed() -> None:
    """After ``hydra_main()``: exit with status 1 naming the failed jobs (one line each)."""
    if not FAILED:
        return
    if len(FAILED) > 1 or _was_multirun():
        console = Console(stderr=True, soft_wrap=True, highlight=False)
        console.print(Text(f"{len(FAILED)} job(s) failed:", style="bold red"))
        for run_dir, error in FAILED:
            console.print(Text(f"  {run_dir}: {error}"))
    sys.exit(1)


def _was_multirun() -> bool:
    return any(a in ("-m", "--multirun") for a in sys.argv[1:])
