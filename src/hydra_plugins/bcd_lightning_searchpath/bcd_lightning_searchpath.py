"""Extra config directories from ``BCD_CONFIG_PATH`` for ``bcd-train`` / ``bcd-eval`` / ``--help``.

Hydra finds this plugin through the ``hydra_plugins`` namespace package. Each directory in
``BCD_CONFIG_PATH`` (``os.pathsep``-separated) is searched after the package's own ``conf/``, so a
preset in ``<dir>/distill/mine.yaml`` is selectable as ``distill=mine`` and is listed by ``--help``
(Hydra's ``hydra.searchpath=[...]`` override also composes it, but ``--help`` does not list it).
A preset cannot replace a packaged one of the same name: the package's directory comes first.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

ENV_VAR = "BCD_CONFIG_PATH"


class BcdConfigPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
            if entry.strip():
                search_path.append(provider=ENV_VAR, path=f"file://{Path(entry).expanduser().resolve()}")
