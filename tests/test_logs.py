"""Messages go through logging, from global rank zero only."""

from __future__ import annotations

import logging

import pytest
from lightning.fabric.utilities.rank_zero import rank_zero_only

from bcd_lightning.utils.logs import get_logger


@pytest.mark.parametrize(("rank", "shown"), [(0, True), (1, False)])
def test_only_rank_zero_records_pass(rank: int, shown: bool, monkeypatch, caplog) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    logger = get_logger("bcd_lightning.test_logs")
    with caplog.at_level(logging.INFO, logger="bcd_lightning.test_logs"):
        logger.info("hello from rank %d", rank)
    assert ("hello from rank" in caplog.text) is shown
    assert len(get_logger("bcd_lightning.test_logs").filters) == 1  # one filter however often it is asked for
