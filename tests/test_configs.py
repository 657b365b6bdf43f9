"""Every config of conf/ composes, passes the schema check, and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import bcd_lightning
from bcd_lightning import builders
from bcd_lightning.utils.config_check import ConfigError, check_config
from support import compose_config

CONF = Path(bcd_lightning.__file__).parent / "conf"
GPU_TRAINERS = {"gpu", "ddp"}


def options(group: str) -> list[str]:
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def is_detection_experiment(option: str) -> bool:
    """Experiments of ``train_detection.yaml``: they read or set the ``detection`` node or a ``detection/*``
    group, themselves or through an experiment of their defaults list (tests/detection composes and checks
    them with that config)."""
    import yaml

    text = (CONF / "experiment" / f"{option}.yaml").read_text()
    if "${detection." in text or "\ndetection:" in text:  # reads or sets the detection node
        return True
    node = yaml.safe_load(text) or {}
    for entry in node.get("defaults", []):
        key = (next(iter(entry)) if isinstance(entry, dict) else str(entry)).split("@")[0]
        if "detection/" in key.removeprefix("override ").lstrip("/").split("experiment/")[0]:
            return True
        if key.startswith("/experiment/") and is_detection_experiment(key.removeprefix("/experiment/")):
            return True
    return False


#: Groups whose options are selected one by one below; ``paths`` and ``hydra`` only need to exist.
SELECTABLE = (
    "data", "student", "teacher", "distill", "optimizer", "scheduler", "trainer", "logger", "callbacks",
    "experiment", "debug",
)  # fmt: skip


def test_every_group_has_options() -> None:
    for group in (*SELECTABLE, "paths", "hydra"):
        assert options(group), f"conf/{group} is empty"


@pytest.mark.parametrize(
    ("group", "option"),
    [
        (g, o)
        for g in SELECTABLE
        for o in options(g)
        if not (g == "experiment" and is_detection_experiment(o))
    ],
)
def test_option_composes_checks_and_instantiates(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"{group}={option}", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}"])
    check_config(cfg)
    if group == "data" and option != "synthetic":
        pytest.skip("needs its files on disk; tests/data/test_real_datasets.py builds them as fixture trees")
    if group in ("data",):
        dm = builders.build_datamodule(cfg)
        assert len(dm.train_set) > 0
    elif group == "student":
        assert builders.build_model(cfg.student).num_classes == cfg.data.num_classes
    elif group == "teacher":
        assert builders.build_model(cfg.teacher.model).num_classes == cfg.data.num_classes
    elif group == "distill":
        for term in builders.distill_terms(cfg).values():
            assert isinstance(term.loss, torch.nn.Module)
    elif group in ("optimizer", "scheduler"):
        instantiate(cfg[group])
    elif group == "trainer" and option in GPU_TRAINERS and not torch.cuda.is_available():
        pytest.skip("GPU trainer presets need a GPU to instantiate (composition and schema checked)")
    elif group == "trainer":
        builders.build_trainer(cfg, [], [])
    elif group == "logger":
        assert len(builders.build_loggers(cfg)) == len(cfg.logger)
    elif group == "callbacks":
        assert len(builders.build_callbacks(cfg)) == len(cfg.callbacks)


def test_eval_config_composes() -> None:
    cfg = compose_config(["ckpt_path=some.ckpt", "paths.output_dir=x"], config_name="eval")
    check_config(cfg)
    assert cfg.split == "test"


def test_unknown_key_in_group_is_named_with_suggestion() -> None:
    cfg = compose_config(["+trainer.max_epoch=3", "paths.output_dir=x"])
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch.*max_epochs"):
        check_config(cfg)


def test_unknown_top_level_key_is_named() -> None:
    cfg = compose_config(["+sede=1", "paths.output_dir=x"])
    with pytest.raises(ConfigError, match=r"'sede'.*'seed'"):
        check_config(cfg)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("seed=abc", "seed"),
        ("trainer.max_epochs=ten", "trainer.max_epochs"),
        ("data.batch_size=2.5", "data.batch_size"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("student.arch=[1,2]", "student.arch"),
    ],
)
def test_wrong_type_is_named(override: str, key: str) -> None:
    cfg = compose_config([override, "paths.output_dir=x"])
    with pytest.raises(ConfigError, match=rf"'{key}'.*wrong type"):
        check_config(cfg)


def test_unknown_key_inside_a_loss_is_named() -> None:
    cfg = compose_config(["distill=kd", "+distill.losses.kd.loss.temperature=2", "paths.output_dir=x"])
    with pytest.raises(ConfigError, match=r"distill\.losses\.kd\.loss\.temperature"):
        check_config(cfg)
