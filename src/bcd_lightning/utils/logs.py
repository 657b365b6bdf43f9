"""Messages through :mod:`logging`, from the rank-zero process only.

Under ``bcd-train`` / ``bcd-eval`` Hydra's job logging sends them to the console *and* to the run's
log file (``<run dir>/<job name>.log``); other entry points (``bcd-pipeline``) configure a console
handler themselves. Under DDP every rank runs the same code: only rank zero's records pass.
"""

from __future__ import annotations

import logging

from lightning.fabric.utilities.rank_zero import rank_zero_only


class RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(rank_zero_only, "rank", 0) == 0


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` that drops records on processes other than global rank zero."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RankZeroFilter) for f in logger.filters):
        logger.addFilter(RankZeroFilter())
    return logger
