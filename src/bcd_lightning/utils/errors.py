"""One clear line for user mistakes instead of pages of traceback (``BCD_DEBUG=1`` shows the trace)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

#: Errors that describe a mistake the user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    InstantiationException,
    FloatingPointError,
    RuntimeError,
)


def _message(err: BaseException) -> str:
    # Hydra wraps a target's exception; the innermost message is the one written for the user.
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    # One line: a message spanning lines (torch, Lightning) is joined, so logs and grep keep it whole.
    return " ".join(f"{type(err).__name__}: {err}".split())


def friendly_errors(fn: F) -> F:
    """Run ``fn``; on a user error print one line to stderr and exit with status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if os.environ.get("BCD_DEBUG"):
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            # soft_wrap: never break the line at the terminal width (80 columns when piped).
            console = Console(stderr=True, soft_wrap=True)
            console.print(f"[bold red]error:[/bold red] {_message(err)}", highlight=False, markup=True)
            console.print("[dim](set BCD_DEBUG=1 for the full traceback)[/dim]")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
