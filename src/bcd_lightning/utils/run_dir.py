"""Run-directory chores: print and save the config, write files atomically."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

from bcd_lightning.utils.atomic import atomic_copy, atomic_write_text

__all__ = ["atomic_copy", "atomic_write_text", "config_tree", "save_and_print_config"]

GROUP_ORDER = (
    "data",
    "student",
    "teacher",
    "distill",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "paths",
)


def config_tree(cfg: DictConfig) -> Tree:
    tree = Tree("config", guide_style="dim")
    keys = [k for k in GROUP_ORDER if k in cfg] + [k for k in cfg if k not in GROUP_ORDER]
    for key in keys:
        branch = tree.add(str(key), style="bold")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch.add(Syntax(text, "yaml", theme="ansi_dark", word_wrap=True))
    return tree


@rank_zero_only
def save_and_print_config(cfg: DictConfig, output_dir: Path, print_tree: bool = True) -> None:
    """Save ``config.yaml`` (resolved) and ``config_tree.log`` in the run dir; print the tree if asked."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    with open(output_dir / "config_tree.log", "w") as fh:
        Console(file=fh, width=120, color_system=None).print(config_tree(cfg))
    if print_tree:
        Console().print(config_tree(cfg))


def check_run_dir_overrides(args: list[str]) -> None:
    """``hydra.run.dir=`` / ``hydra.sweep.dir=`` naming a file (or a folder under a file, or one that
    cannot be created): one clear line before Hydra fails with its traceback."""
    from bcd_lightning.utils.errors import StorageError

    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or not value or "${" in value:
            continue
        path = Path(value).expanduser()
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise StorageError(
                f"{key}={value}: {blocking} is a file, not a folder. Choose another directory."
            )
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(f"{key}={value}: {existing} is not writable (permission denied).")
