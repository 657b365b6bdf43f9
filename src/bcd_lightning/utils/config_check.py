"""Fail fast on config mistakes: unknown keys and wrong types, named, before any work starts.

Two checks cover the whole tree: the top level is checked against :class:`RunSchema`; every node with
a ``_target_`` is checked against the signature of the class or function it instantiates (so the
schema of ``trainer`` *is* ``lightning.Trainer.__init__``, and can never drift from it).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from bcd_lightning.utils.errors import UserError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class ConfigError(UserError, ValueError):
    """A config key or value is wrong; the message names the key and what is accepted."""


@dataclasses.dataclass
class RunSchema:
    """Top-level keys of ``train.yaml`` / ``eval.yaml`` and their types (groups are checked by target)."""

    task_name: str = "train"
    seed: int = 0
    train: bool = True
    test: bool = True
    ckpt_path: str | None = None
    auto_resume: bool = False  # resume from <run dir>/checkpoints/last.ckpt when it exists
    nonfinite: typing.Literal["stop", "skip"] = "stop"  # a NaN/inf loss stops the run or skips the step
    export_best_to: str | None = None
    teacher_min_miou: float | None = None
    matmul_precision: str | None = None
    threads: int | None = None
    compile: bool = False
    print_config: bool = True
    optimized_metric: str | None = None  # the value bcd-train returns to a Hydra sweeper
    tags: list[str] = dataclasses.field(default_factory=list)
    # Groups; their content is checked against the targets they instantiate.
    data: Any = None
    student: Any = None
    teacher: Any = None
    distill: Any = None
    optimizer: Any = None
    scheduler: Any = None
    trainer: Any = None
    logger: Any = None
    callbacks: Any = None
    paths: Any = None
    # eval.yaml only
    split: str = "test"
    inference: Any = None  # checked by bcd_lightning.inference.InferenceConfig


def as_pair(value: Any, key: str, error: type[Exception] = ValueError) -> tuple[int, int]:
    """``[height, width]`` from one integer or two, each >= 1; ``error`` names ``key`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        raise error(f"{key}={value!r} must be [height, width], two integers >= 1 (or one integer).")
    return int(value[0]), int(value[1])


def suggest_keys(key: str, valid: Sequence[str], label: str = "Valid keys") -> str:
    """`` Did you mean 'x'? Valid keys: a, b, x.``"""
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} {label}: {', '.join(sorted(valid))}."


def check_top_level(cfg: DictConfig) -> None:
    fields = {f.name: f for f in dataclasses.fields(RunSchema)}
    for key in cfg:
        if key not in fields:
            raise ConfigError(f"Unknown config key {key!r}.{suggest_keys(str(key), list(fields))}")
        annotation = typing.get_type_hints(RunSchema)[key]
        _check_type(key, _value(cfg, key), annotation)


def _value(node: DictConfig, key: str) -> Any:
    """The resolved value, or the raw node if it cannot be resolved here (e.g. ``${hydra:...}``)."""
    try:
        value = node[key]
    except Exception:
        return None
    if isinstance(value, DictConfig | ListConfig):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:
            return OmegaConf.to_container(value, resolve=False)
    return value


def _check_type(path: str, value: Any, annotation: Any, default: Any = inspect.Parameter.empty) -> None:
    ok = (_allows_none(annotation) or default is None) if value is None else _matches(value, annotation)
    if not ok:
        raise ConfigError(
            f"Config key {path!r} = {value!r} has the wrong type: expected {_type_name(annotation)}."
        )


def _type_name(annotation: Any) -> str:
    """``int``, ``int or null``, ``'stop' or 'skip'``: what a user can type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _allows_none(annotation: Any) -> bool:
    return annotation is Any or type(None) in typing.get_args(annotation) or annotation is type(None)


def _matches(value: Any, annotation: Any) -> bool:
    """True when ``value`` fits ``annotation``; annotations this checker does not model always fit."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        # A config value is never a tensor: `float | Tensor` (torch optimizers' lr) means float here.
        args = [a for a in typing.get_args(annotation) if not _is_tensor_type(a)] or typing.get_args(
            annotation
        )
        return any(_matches(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, list | tuple)
    if origin in (dict, Mapping) or annotation is dict:
        return isinstance(value, dict)
    if typing.get_origin(annotation) is typing.Literal:
        return value in typing.get_args(annotation)
    return True


def _is_tensor_type(annotation: Any) -> bool:
    return getattr(annotation, "__name__", None) == "Tensor" and str(
        getattr(annotation, "__module__", "")
    ).startswith("torch")


def _signature(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    fn = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: skip type checks, keep key checks
        hints = {}
    params = {n: p for n, p in sig.parameters.items() if n != "self"}
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    params = {n: p for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params, hints, accepts_kwargs


def check_targets(node: Any, path: str = "") -> None:
    """Recursively check every ``_target_`` node's keys and simple types against its signature."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_targets(item, f"{path}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        target_name = node["_target_"]
        try:
            target = get_object(target_name)
        except Exception as err:
            raise ConfigError(f"{path or '<root>'}._target_: cannot import {target_name!r} ({err}).") from err
        params, hints, accepts_kwargs = _signature(target)
        for key in node:
            if key in HYDRA_KEYS:
                continue
            child = f"{path}.{key}" if path else str(key)
            if key not in params:
                if accepts_kwargs:
                    continue
                raise ConfigError(
                    f"Unknown key {child!r} for {target_name}.{suggest_keys(str(key), list(params))}"
                )
            if key in hints and not isinstance(node._get_node(key), DictConfig):
                _check_type(child, _value(node, key), hints[key], params[key].default)
        missing = [
            n
            for n, p in params.items()
            if p.default is inspect.Parameter.empty and n not in node and n != "args"
        ]
        if missing and not node.get("_partial_", False):
            raise ConfigError(f"{path or '<root>'}: missing required key(s) {missing} for {target_name}.")
    for key in node:
        if key in HYDRA_KEYS:
            continue
        try:
            child_node = node._get_node(key)
        except Exception:
            continue
        check_targets(child_node, f"{path}.{key}" if path else str(key))


def check_config(cfg: DictConfig) -> None:
    """Run every check; raise :class:`ConfigError` on the first problem."""
    check_top_level(cfg)
    check_targets(cfg)
