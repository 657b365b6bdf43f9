"""Teacher-output cache: compute what the losses read from the teacher once, then skip the teacher.

When every training sample is the same tensor every epoch (no random augmentation), the teacher's
outputs for sample ``i`` never change, so a sweep over methods and seeds keeps paying for the same
forward passes. The cache stores, per sample index, exactly what the configured losses read (see
:meth:`DistillLoss.teacher_cache_entries`: logits, BCD's channel-free boundary maps, the decoder
feature pooled to the context loss's node grid, or the raw fields a loss ``uses``), in fp16, as one
memory-mapped ``.npy`` per entry.

Safety:

* the directory name is a hash of the teacher weights (:func:`state_digest`), the data config (which
  includes the transforms), the dataset's own identity, the teacher precision and layout and the entry
  names and shapes, so a changed teacher, dataset, transform or loss setting never meets a stale cache;
* a cache is filled in a temporary directory and renamed into place only when every sample is written
  (``meta.json`` inside is the completion marker), so a crashed fill is never used;
* one process fills a key at a time: a lock file (``filelock``) beside the cache, so concurrent jobs of a
  sweep (other nodes included, on a shared filesystem) wait and then reuse the finished cache; a
  temporary fill is owned by ``<host>@<pid>`` and only removed as stale by a process on *its* host
  that sees the pid gone (another node's fill in progress is never deleted);
* a training set that does not declare ``deterministic = True`` is refused with one clear error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bcd_lightning.callbacks.teacher_guard import state_digest
from bcd_lightning.data.datamodule import WithIndex, dataset_size
from bcd_lightning.distill.base import DistillLoss, teacher_fields
from bcd_lightning.models.outputs import SegOutput
from bcd_lightning.utils.config_check import ConfigError

#: Bumped whenever the stored layout or the meaning of an entry changes.
FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
#: ``data`` keys that only change how batches are drawn, never what a sample is.
LOADER_KEYS = frozenset(
    {
        "batch_size",
        "val_batch_size",
        "num_workers",
        "pin_memory",
        "drop_last",
        "persistent_workers",
        "val_set",
        "test_set",
    }
)
_STAGE_PREFIX = "stage/"


@dataclasses.dataclass(frozen=True)
class TeacherCacheConfig:
    """``teacher.cache`` in the config.

    Attributes:
        enabled: use (and fill if missing) the cache; off by default.
        dir: where caches live, one sub-directory per key.
        dtype: ``float16`` (default) or ``float32`` storage.
        max_gib: refuse to create a cache larger than this.
    """

    enabled: bool = False
    dir: str = "logs/teacher_cache"
    dtype: str = "float16"
    max_gib: float = 8.0

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None, where: str = "teacher.cache") -> TeacherCacheConfig:
        """Validated config from a plain mapping; one :class:`ConfigError` naming the key otherwise."""
        values = dict(node or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise ConfigError(f"Unknown key '{where}.{key}'. Valid keys: {', '.join(sorted(fields))}.")
        enabled = values.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError(f"'{where}.enabled' must be true or false, got {enabled!r}.")
        dtype = values.get("dtype", "float16")
        if dtype not in DTYPES:
            raise ConfigError(f"'{where}.dtype' must be one of {list(DTYPES)}, got {dtype!r}.")
        max_gib = values.get("max_gib", 8.0)
        if isinstance(max_gib, bool) or not isinstance(max_gib, int | float) or max_gib <= 0:
            raise ConfigError(f"'{where}.max_gib' must be a number > 0, got {max_gib!r}.")
        directory = values.get("dir", cls.dir)
        if not isinstance(directory, str | os.PathLike) or not str(directory):
            raise ConfigError(f"'{where}.dir' must be a directory path, got {directory!r}.")
        return cls(enabled=enabled, dir=str(directory), dtype=dtype, max_gib=float(max_gib))


def data_identity(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a ``data`` config that decide what a training sample is (loader settings dropped)."""
    return {k: v for k, v in data_config.items() if k not in LOADER_KEYS}


def _base_dataset(dataset: Dataset) -> Dataset:
    while isinstance(dataset, WithIndex):
        dataset = dataset.dataset
    return dataset


def check_deterministic(dataset: Dataset, where: str = "data.train_set") -> None:
    """Refuse a training set whose samples may differ between epochs (random augmentation)."""
    base = _base_dataset(dataset)
    flag = getattr(base, "deterministic", None)
    if flag is True:
        return
    if flag is False:
        reason = "draws random augmentation (deterministic=False)"
    else:
        reason = "does not declare `deterministic = True`, so its samples may change between epochs"
    transform = getattr(base, "transform", None) or getattr(base, "transforms", None)
    if transform is not None:
        reason += f"; its transform is {transform!r}"
    raise ConfigError(
        f"teacher.cache.enabled=true needs the same training sample every epoch, but {where} "
        f"({type(base).__name__}) {reason}. Set teacher.cache.enabled=false or remove the random "
        "augmentation."
    )


def dataset_identity(dataset: Dataset) -> Any:
    """What the dataset says identifies its samples (``cache_identity()``), else its class and length."""
    base = _base_dataset(dataset)
    ident = getattr(base, "cache_identity", None)
    if callable(ident):
        return ident()
    return {"class": f"{type(base).__module__}.{type(base).__qualname__}", "length": dataset_size(base)}


def cache_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 (first 32 hex digits) of the canonical JSON of ``parts``."""
    payload = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


# --- what is stored --------------------------------------------------------------------------------
def raw_entries(teacher: SegOutput, fields: Collection[str]) -> dict[str, Tensor]:
    """The raw teacher fields a loss uses, as cache entries (every stage when ``stages`` is used)."""
    entries: dict[str, Tensor] = {}
    if "logits" in fields and teacher.logits is not None:
        entries["logits"] = teacher.logits
    if "decoder" in fields and teacher.decoder is not None:
        entries["decoder"] = teacher.decoder
    if "stages" in fields:
        entries.update({f"{_STAGE_PREFIX}{i}": s for i, s in enumerate(teacher.stages)})
    return entries


def collect_entries(
    losses: Mapping[str, DistillLoss], teacher: SegOutput, student: SegOutput
) -> dict[str, Tensor]:
    """Union of what each loss needs from the teacher (its compact entries, else its raw fields)."""
    entries: dict[str, Tensor] = {}
    for loss_name, loss in losses.items():
        got = loss.teacher_cache_entries(teacher, student)
        if got is None:
            got = raw_entries(teacher, teacher_fields(loss))
        for name, value in got.items():
            if name in entries and entries[name].shape != value.shape:
                raise ValueError(
                    f"distill.losses.{loss_name}: cache entry {name!r} has shape {tuple(value.shape)}, "
                    f"another loss gave {tuple(entries[name].shape)} under the same name."
                )
            entries[name] = value
    return entries


def output_from_entries(entries: Mapping[str, Tensor]) -> SegOutput:
    """A teacher :class:`SegOutput` rebuilt from cache entries: raw fields in place, the rest in ``cached``."""
    rest = dict(entries)
    logits = rest.pop("logits", None)
    decoder = rest.pop("decoder", None)
    stage_names = sorted((k for k in rest if k.startswith(_STAGE_PREFIX)), key=lambda k: int(k[6:]))
    stages = tuple(rest.pop(k) for k in stage_names)
    return SegOutput(logits=logits, stages=stages, decoder=decoder, cached=rest)


def _file_name(entry: str) -> str:
    return entry.replace("/", "__") + ".npy"


# --- the cache -------------------------------------------------------------------------------------
class TeacherCache:
    """Per-sample teacher outputs on disk, memory-mapped; :meth:`prepare` before :meth:`lookup`.

    Args:
        config: the validated ``teacher.cache`` settings.
        data_config: the run's ``data`` config (plain mapping); ``None`` outside a Hydra run, where the
            dataset's own ``cache_identity()`` keys the data alone.
    """

    def __init__(self, config: TeacherCacheConfig, data_config: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.data_config = None if data_config is None else data_identity(data_config)
        self.path: Path | None = None
        self.key: str | None = None
        self.filled_now = False
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def ready(self) -> bool:
        return bool(self._arrays)

    def prepare(
        self,
        teacher: Any,
        student: torch.nn.Module,
        losses: Mapping[str, DistillLoss],
        dataset: Dataset,
        batch_size: int,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
        may_fill: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        """Open the cache of this teacher/data/loss setup, filling it first if it does not exist.

        ``may_fill=False`` (non-zero ranks of a multi-process run) only opens a complete cache.
        """
        check_deterministic(dataset)
        n = dataset_size(dataset)
        fields = frozenset().union(*(teacher_fields(loss) for loss in losses.values()))
        # Own generator: the fill must not draw from the global RNG (training would shuffle differently).
        loader = DataLoader(
            WithIndex(dataset),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(0),
        )
        batches = iter(loader)
        first = next(batches)
        # One student pass on one batch: some entries depend on the student's shapes (context grid).
        was_training = student.training
        student.eval()
        with torch.no_grad():
            student_out = student(first["image"].to(device))
        student.train(was_training)

        def entries_of(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return collect_entries(losses, teacher(batch["image"].to(device), outputs=fields), student_out)

        first_entries = entries_of(first)
        spec = {name: list(t.shape[1:]) for name, t in sorted(first_entries.items())}
        self._check_size(spec, n, losses)
        self.key = cache_key(
            {
                "teacher": state_digest(teacher),
                "precision": getattr(teacher, "precision", "32"),
                "channels_last": bool(getattr(getattr(teacher, "model", None), "channels_last", False)),
                "data_config": self.data_config,
                "dataset": dataset_identity(dataset),
                "num_samples": n,
                # Catches what no config shows (e.g. changed rendering or transform code).
                "first_batch": hashlib.sha256(first["image"].numpy().tobytes()).hexdigest(),
                "dtype": self.config.dtype,
                "entries": spec,
            }
        )
        root = Path(self.config.dir)
        final = root / self.key
        if not (final / "meta.json").is_file():
            if not may_fill:
                raise ConfigError(
                    f"teacher.cache: no complete cache at {final}; rank 0 should have filled it "
                    "(is teacher.cache.dir on a file system every process sees?)."
                )
            root.mkdir(parents=True, exist_ok=True)
            with fill_lock(root, final.name, log):
                if (final / "meta.json").is_file():  # another job filled it while this one waited
                    log(f"Teacher cache: reusing {final} (filled by another process).")
                else:
                    log(f"Teacher cache: filling {final} ({n} samples, entries {sorted(spec)}).")
                    self._fill(root, final, n, spec, first, first_entries, batches, entries_of)
                    self.filled_now = True
        else:
            log(f"Teacher cache: reusing {final}.")
        self._open(final, spec, n)

    def _check_size(self, spec: Mapping[str, list[int]], n: int, losses: Mapping[str, DistillLoss]) -> None:
        itemsize = np.dtype(DTYPES[self.config.dtype]).itemsize
        per_sample = {name: math.prod(shape) * itemsize for name, shape in spec.items()}
        total = n * sum(per_sample.values())
        if total > self.config.max_gib * 2**30:
            biggest = sorted(per_sample, key=lambda name: per_sample[name], reverse=True)[:3]
            raise ConfigError(
                f"teacher.cache would need {total / 2**30:.1f} GiB for {n} samples, above "
                f"teacher.cache.max_gib={self.config.max_gib}; largest entries per sample: "
                + ", ".join(f"{k} {per_sample[k] / 2**20:.2f} MiB" for k in biggest)
                + f" (losses {sorted(losses)}: raw 'stage/*' or 'decoder' entries are full-size features of "
                "a loss without compact cache entries). Raise max_gib or set teacher.cache.enabled=false."
            )

    def _fill(
        self,
        root: Path,
        final: Path,
        n: int,
        spec: Mapping[str, list[int]],
        first: Mapping[str, Tensor],
        first_entries: Mapping[str, Tensor],
        batches: Any,
        entries_of: Callable[[Mapping[str, Tensor]], dict[str, Tensor]],
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(root, final.name)
        tmp = root / f".{final.name}.tmp-{owner()}@{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            dtype = DTYPES[self.config.dtype]
            arrays = {
                name: np.lib.format.open_memmap(
                    tmp / _file_name(name), mode="w+", dtype=dtype, shape=(n, *shape)
                )
                for name, shape in spec.items()
            }
            written = np.zeros(n, dtype=bool)
            batch, entries = first, first_entries
            while True:
                idx = batch["index"].numpy()
                for name, array in arrays.items():
                    array[idx] = entries[name].detach().to("cpu", torch.float32).numpy().astype(dtype)
                written[idx] = True
                batch = next(batches, None)
                if batch is None:
                    break
                entries = entries_of(batch)
            if not written.all():
                raise RuntimeError(f"teacher cache: {int((~written).sum())} samples were not written")
            for array in arrays.values():
                array.flush()
            del arrays
            meta = {"format": FORMAT_VERSION, "num_samples": n, "dtype": self.config.dtype, "entries": spec}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.replace(tmp, final)  # atomic: the complete cache appears at once
            except OSError:
                if not (final / "meta.json").is_file():  # not "another process finished first"
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _open(self, path: Path, spec: Mapping[str, list[int]], n: int) -> None:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("entries") != dict(spec) or meta.get("num_samples") != n:
            raise ConfigError(f"teacher.cache: {path}/meta.json does not match this run; delete {path}.")
        self._arrays = {name: np.load(path / _file_name(name), mmap_mode="r") for name in spec}
        self.path = path

    def lookup(self, index: Tensor, device: torch.device | str = "cpu") -> SegOutput:
        """The teacher output (fp32 tensors on ``device``) of the samples ``index`` ([B] long)."""
        if not self.ready:
            raise RuntimeError("TeacherCache.lookup before prepare()")
        idx = index.detach().cpu().numpy()
        entries = {
            name: torch.from_numpy(np.ascontiguousarray(array[idx])).to(device, torch.float32)
            for name, array in self._arrays.items()
        }
        return output_from_entries(entries)


def host() -> str:
    """This machine's name as it appears in owner tags (no ``@``, which separates the tag's parts)."""
    return socket.gethostname().replace("@", "_") or "unknown-host"


def owner() -> str:
    """``<host>@<pid>``: who fills a temporary cache directory."""
    return f"{host()}@{os.getpid()}"


@contextlib.contextmanager
def fill_lock(root: Path, key: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``<root>/.<key>.lock`` while filling: jobs sharing the cache fill a key once, in turn."""
    lock = FileLock(str(root / f".{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"Teacher cache: another process is filling {root / key}; waiting for it ({lock.lock_file}).")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _remove_stale_temporaries(root: Path, key: str) -> None:
    """Temporary fills of ``key`` left by crashed processes *of this host* (``<host>@<pid>`` tag, pid gone).

    A fill owned by another host is never touched: its pid means nothing here (on a shared filesystem
    it may be a fill in progress on another node). Untagged names of older versions are left alone too.
    """
    for tmp in root.glob(f".{key}.tmp-*"):
        parts = tmp.name.split(".tmp-", 1)[1].rsplit("@", 2)
        if len(parts) != 3 or parts[0] != host():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue
