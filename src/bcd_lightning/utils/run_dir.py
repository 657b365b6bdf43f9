"""Run-directory chores: print and save the config, write files atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

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


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy so that ``dst`` is either the old file or the complete new one, never half-written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
