"""The options of a config group as Hydra sees them (package ``conf/`` plus ``BCD_CONFIG_PATH``)."""

from __future__ import annotations

from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra


def group_options(group: str) -> list[str]:
    """Sorted option names of ``group`` (e.g. ``"distill"`` -> ``["bcd", "boundary", ...]``).

    The method lists of sweeps and comparisons come from here, so a new preset needs no other edit.
    """
    with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
