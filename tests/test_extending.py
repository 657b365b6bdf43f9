"""The plug-in promise: a loss module + a preset outside the repository train and are listed, no other edit.

The throw-away method lives in a temp dir: its module is importable through ``PYTHONPATH`` (the
preset's ``_target_``), its preset is found through ``BCD_CONFIG_PATH`` (the ``hydra_plugins``
search-path plugin), exactly as ``docs/extending.md`` tells a user to do it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bcd_lightning
from bcd_lightning.utils.presets import group_options
from support import FAST, load_script

LOSS_MODULE = '''
import torch
from bcd_lightning.distill.base import DistillLoss


class LogitMSE(DistillLoss):
    """Mean squared difference of the logits (a throw-away method for the plug-in test)."""

    uses = frozenset({"logits"})

    def forward(self, student, teacher, target, ignore_index=255):
        return torch.mean((student.logits - teacher.logits) ** 2)
'''

PRESET = """\
name: mine
losses:
  mine:
    loss:
      _target_: mine_loss.LogitMSE
    weight: 1.0
"""


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    root = tmp_path / "plugin"
    (root / "conf" / "distill").mkdir(parents=True)
    (root / "mine_loss.py").write_text(LOSS_MODULE)
    (root / "conf" / "distill" / "mine.yaml").write_text(PRESET)
    return root


def _env(plugin_dir: Path) -> dict[str, str]:
    src = str(Path(bcd_lightning.__file__).resolve().parents[1])
    path = os.pathsep.join([str(plugin_dir), src, os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": path,
        "BCD_CONFIG_PATH": str(plugin_dir / "conf"),
    }


def _bcd_train(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "bcd-train"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_extra_preset_is_an_option_of_the_distill_group(plugin_dir: Path, monkeypatch) -> None:
    packaged = sorted(
        p.stem for p in (Path(bcd_lightning.__file__).parent / "conf" / "distill").glob("*.yaml")
    )
    assert group_options("distill") == packaged
    monkeypatch.setenv("BCD_CONFIG_PATH", str(plugin_dir / "conf"))
    assert group_options("distill") == sorted([*packaged, "mine"])


def test_new_loss_module_and_preset_train_and_show_in_help(
    plugin_dir: Path, tmp_path: Path, teacher_state_file: Path
) -> None:
    env = _env(plugin_dir)
    work = tmp_path / "work"
    work.mkdir()
    done = _bcd_train(work, env, "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    listing = next(line for line in done.stdout.splitlines() if line.startswith("distill: "))
    assert "mine" in listing.removeprefix("distill: ").split(", ")

    done = _bcd_train(
        work,
        env,
        "experiment=embedded/kd",
        "distill=mine",
        "debug=fdr",
        f"teacher.ckpt={teacher_state_file}",
        *FAST,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (work / "logs" / "debug" / "runs").iterdir()
    record = json.loads((run / "metrics.json").read_text())
    assert record["method"] == "mine"
    # A random student and a random teacher disagree: the new term is positive and finite.
    assert 0 < record["metrics"]["train/loss/mine"] < float("inf")


def test_extra_preset_is_a_method_of_the_comparison(plugin_dir: Path, monkeypatch) -> None:
    """``scripts/compare.py`` runs every preset it discovers; the throw-away one must be among them."""
    compare = load_script("compare")
    monkeypatch.setenv("BCD_CONFIG_PATH", str(plugin_dir / "conf"))
    assert "mine" in compare.preset_methods()
