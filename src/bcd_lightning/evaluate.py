"""``bcd-eval``: score a student or teacher checkpoint on a data split; print and save the results.

The checkpoint carries the config of the run that wrote it; its ``data`` and ``student`` groups are
the base, and ``data.*`` / ``student.*`` overrides apply on top of them (any key that config has, e.g.
``data.root=`` of a folder run; ``+key=`` adds one). Choosing another group option (``data=voc``)
replaces the group. A label space other than the checkpoint's is refused.
A detection run's checkpoint (its config has ``detection``) is evaluated by
:mod:`bcd_lightning.detection.evaluate`, with ``detection.*`` overrides.
``inference`` selects whole-image or sliding-window inference and flip / multi-scale test-time
augmentation (:mod:`bcd_lightning.inference`).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from bcd_lightning import builders
from bcd_lightning.callbacks.confusion import save_confusion_matrix
from bcd_lightning.evaluation import evaluate_model, load_run_checkpoint_hparams
from bcd_lightning.inference import InferenceConfig
from bcd_lightning.models.teacher import load_weights_strict
from bcd_lightning.utils.config_check import ConfigError, check_config
from bcd_lightning.utils.errors import exit_if_failed, friendly_errors, hydra_task
from bcd_lightning.utils.logs import get_logger
from bcd_lightning.utils.overrides import precheck_overrides
from bcd_lightning.utils.run_dir import atomic_write_text, check_run_dir_overrides, save_and_print_config

REUSED_GROUPS = ("data", "student")
#: Also applied on the checkpoint run's config rather than composed (detection runs).
DEFERRED_GROUPS = (*REUSED_GROUPS, "detection")

log = get_logger(__name__)


#: ``data.*`` / ``student.*`` overrides taken off the command line by :func:`main` (Hydra would refuse
#: keys the eval config's default groups lack) and applied on the checkpoint run's groups instead.
DEFERRED: list[str] = []


def _task_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed outside the CLI
        return []


def _group_of(override: str) -> tuple[str, bool]:
    """(group, is a group choice) of ``data=voc`` (choice), ``+data.root=x`` (key), ``student@x=..``."""
    key = override.lstrip("+~").split("=")[0]
    return key.split(".")[0].split("@")[0], "." not in key


def _overridden_groups() -> set[str]:
    return {group for group, choice in map(_group_of, _task_overrides()) if choice}


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """Command-line args for Hydra, and the group-key overrides to apply on the run's config."""
    if any(a.startswith("-") for a in args):  # -m, --help, --cfg: Hydra composes everything itself
        return list(args), []
    chosen = {g for g, choice in map(_group_of, args) if choice}
    keep, deferred = [], []
    for arg in args:
        group, choice = _group_of(arg)
        (deferred if group in DEFERRED_GROUPS and not choice and group not in chosen else keep).append(arg)
    return keep, deferred


def apply_overrides(node: DictConfig, group: str, overrides: list[str]) -> None:
    """``group.key=value`` overrides on ``node`` (the run's group); a key it lacks needs ``+``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bcd_lightning.utils.overrides import suggest_keys

    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group.split(".", 1)[1]
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(node, parent_key) if parent_key else node
        exists = isinstance(parent, DictConfig) and leaf in parent
        if override.is_delete():
            if exists:
                with open_dict(parent):
                    del parent[leaf]
            continue
        if not exists and not override.is_add() and not override.is_force_add():
            valid = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
            raise ConfigError(
                f"Unknown config key {group}.{key!r} in the checkpoint run's {group} config."
                f"{suggest_keys(leaf, valid)} To add a key it does not have, write +{group}.{key}=..."
            )
        value = override.value()
        old = OmegaConf.select(node, key) if exists else None
        OmegaConf.update(node, key, value, merge=False, force_add=True)
        if leaf == "root" and isinstance(old, str) and isinstance(value, str):
            _replace_strings(node, old, value)  # the saved config is resolved: move every ${root} copy


def _replace_strings(node: Any, old: str, new: str) -> None:
    for key in list(node.keys()) if isinstance(node, DictConfig) else []:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _replace_strings(child, old, new)
        elif isinstance(node[key], str) and (node[key] == old or node[key].startswith(old.rstrip("/") + "/")):
            node[key] = new + node[key][len(old) :]


def merge_run_config(
    cfg: DictConfig, run_config: dict[str, Any], overridden: set[str], overrides: list[str] | None = None
) -> DictConfig:
    """The training run's ``data``/``student`` with the user's key overrides on top, unless the user
    chose another option of that group (then the composed group, overrides included, is used)."""
    overrides = list(overrides or [])
    with open_dict(cfg):
        for group in REUSED_GROUPS:
            if group in run_config and group not in overridden:
                node = OmegaConf.create(run_config[group])
                if not isinstance(node, DictConfig):
                    raise ConfigError(
                        f"the checkpoint's config.{group} is not a mapping: {run_config[group]!r}"
                    )
                apply_overrides(node, group, [o for o in overrides if _group_of(o) == (group, False)])
                cfg[group] = node
    return cfg


def check_label_space(datamodule: Any, model: Any, run_classes: list[str] | None, ckpt: str) -> None:
    """The data must have the classes the checkpoint predicts (same count and, when known, names)."""
    names = list(datamodule.class_names)
    if datamodule.num_classes != model.num_classes or (run_classes and names != list(run_classes)):
        trained = list(run_classes) if run_classes else f"{model.num_classes} classes"
        raise ConfigError(
            f"The data to evaluate has classes {names} but checkpoint {ckpt} predicts {trained}: evaluate "
            "on data with the checkpoint's label space (its run's config.yaml has its data config)."
        )


def evaluate(cfg: DictConfig, overridden: set[str] | None = None) -> dict[str, Any]:
    state, run_config, hparams = load_run_checkpoint_hparams(cfg.ckpt_path)
    key_overrides = [*DEFERRED, *(o for o in _task_overrides() if not _group_of(o)[1])]
    if "detection" in run_config:  # a bcd_lightning.detection.train run
        from bcd_lightning.detection.evaluate import evaluate_detection

        return evaluate_detection(cfg, state, run_config, hparams, key_overrides)
    cfg = merge_run_config(
        cfg, run_config, _overridden_groups() if overridden is None else overridden, key_overrides
    )
    check_config(cfg)
    inference = InferenceConfig.from_config(builders.plain(cfg.get("inference")))
    output_dir = Path(cfg.paths.output_dir)
    save_and_print_config(cfg, output_dir, print_tree=cfg.get("print_config", False))

    model = builders.build_model(cfg.student)
    load_weights_strict(
        model, state, f"Checkpoint {cfg.ckpt_path}", "Override student=... to match the checkpoint."
    )
    datamodule = builders.build_datamodule(cfg)
    trained_on = hparams.get("class_names") or (run_config.get("data") or {}).get("class_names")
    check_label_space(datamodule, model, trained_on, cfg.ckpt_path)
    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}.get(cfg.split)
    if loader is None:
        raise ConfigError(f"split={cfg.split!r} is not one of 'val', 'test'")
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu" else "cpu"
    metrics = evaluate_model(
        model,
        loader(),
        datamodule.num_classes,
        datamodule.class_names,
        datamodule.ignore_index,
        device,
        inference,
    )
    metrics.update(ckpt_path=str(cfg.ckpt_path), split=cfg.split, inference=inference.as_dict())
    _report(metrics, output_dir)
    save_confusion_matrix(
        torch.tensor(metrics["confusion_matrix"]),
        datamodule.class_names,
        output_dir / "confusion_matrix.png",
        title=f"{cfg.split} split (mIoU {100 * metrics['mIoU']:.2f})",
    )
    return metrics


def _report(metrics: dict[str, Any], output_dir: Path) -> None:
    per_class = metrics["per_class_metrics"]
    names = list(per_class)
    views = metrics["inference"]
    how = views["mode"] + (f" {views['window']} stride {views['stride']}" if views["mode"] == "slide" else "")
    how += (" + flip" if views["flip"] else "") + (
        f" scales {views['scales']}" if views["scales"] != [1.0] else ""
    )
    table = Table(title=f"{metrics['split']} split — {metrics['ckpt_path']}", caption=f"inference: {how}")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    for cls in metrics["per_class"]:
        table.add_row(cls, *(_fmt(name, per_class[name][cls]) for name in names))
    table.add_row("[bold]mean[/bold]", *(f"[bold]{_fmt(name, metrics[name])}[/bold]" for name in names))
    Console().print(table)
    atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2))
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["class", *names])
    writer.writerows([cls, *(per_class[name][cls] for name in names)] for cls in metrics["per_class"])
    atomic_write_text(output_dir / "per_class.csv", rows.getvalue())
    log.info("Saved %s, per_class.csv and confusion_matrix.png", output_dir / "metrics.json")


def _fmt(name: str, value: float) -> str:
    """Percent for scores, plain for the connectivity error (a count); n/a for undefined."""
    if value != value:
        return "n/a"
    return f"{value:.2f}" if name == "connectivity_err" else f"{100 * value:.2f}"


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@hydra_task(record=lambda cfg, err: _record_failure(cfg, err))
def hydra_main(cfg: DictConfig) -> None:
    evaluate(cfg)


def _record_failure(cfg: DictConfig, err: BaseException) -> None:
    from bcd_lightning.utils.errors import failure_record

    record = {"ckpt_path": str(cfg.get("ckpt_path")), "split": str(cfg.get("split")), **failure_record(err)}
    atomic_write_text(Path(cfg.paths.output_dir) / "metrics.json", json.dumps(record, indent=2))


def main() -> None:
    """``bcd-eval``: a typo in a key or group option fails in one line (with the valid ones) first;
    ``data.*`` / ``student.*`` keys apply to the checkpoint run's config (see the module docstring)."""
    args, DEFERRED[:] = split_overrides(sys.argv[1:])
    sys.argv[1:] = args
    friendly_errors(precheck_overrides)("eval", args)
    friendly_errors(check_run_dir_overrides)(args)
    hydra_main()
    exit_if_failed()


if __name__ == "__main__":
    main()
