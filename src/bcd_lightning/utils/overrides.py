"""Command-line typos as one clear line, before Hydra's own multi-line report.

Hydra rejects ``trainer.max_epoch=1`` (a key the config does not have) while composing, before our
code runs, with a message that names neither the valid keys nor a close match. The CLIs compose the
config once more up front (plain overrides only; about a tenth of a second) and translate the two
common mistakes: an unknown key and an unknown config-group option. Anything else is left to Hydra.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from bcd_lightning.utils.config_check import ConfigError, suggest_keys


def precheck_overrides(config_name: str, args: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for an unknown key or group option among plain ``key=value`` args."""
    if not args or any(a.startswith("-") for a in args):  # flags (-m, --help, --cfg, ...): Hydra's job
        return
    try:
        with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
            compose(config_name, overrides=list(args))
    except MissingConfigException as err:
        missing = str(getattr(err, "missing_cfg_file", "") or "")
        options = list(getattr(err, "options", None) or [])
        if "/" not in missing or not options:
            return
        group, option = missing.rsplit("/", 1)
        raise ConfigError(
            f"Unknown option {option!r} for config group {group!r}.{suggest_keys(option, options, 'Available')}"
        ) from err
    except ConfigCompositionException as err:
        cause = err.__cause__
        if not isinstance(cause, ConfigAttributeError | ConfigKeyError):
            return
        full_key = str(cause.full_key)
        parent = cause.parent_node
        valid = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
        key = full_key.rsplit(".", 1)[-1]
        raise ConfigError(
            f"Unknown config key {full_key!r}.{suggest_keys(key, valid)} To add a key the config does "
            f"not have, write +{full_key}=..."
        ) from err
    except Exception:  # every other problem is reported by Hydra (or our checks) in the real run
        return
