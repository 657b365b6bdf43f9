"""Teacher-output cache: same losses as the live teacher, keyed so a stale cache is never used."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from bcd_lightning import builders
from bcd_lightning.data import SyntheticSegmentation
from bcd_lightning.distill import BoundaryDistillation, ContextDistillation, LogitKD
from bcd_lightning.models import FrozenTeacher, SegModel
from bcd_lightning.teacher_cache import TeacherCache, TeacherCacheConfig, check_deterministic
from bcd_lightning.utils.config_check import ConfigError

TERMS = ("kd", "boundary", "bkd", "context")


class RecordLosses(L.Callback):
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        m = trainer.callback_metrics
        self.steps.append({k: float(m[f"train/loss/{k}_step"]) for k in TERMS})


def _fit(make_cfg, teacher_file: Path, *extra: str, name: str) -> tuple[list[dict[str, float]], object]:
    cfg = make_cfg(
        "distill=bcd",
        f"teacher.ckpt={teacher_file}",
        "callbacks=none",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=1",
        "+trainer.num_sanity_val_steps=0",
        "test=false",
        # A frozen student (lr ~ 0): every step compares the losses of the same student on the same
        # batch, so any difference is the cache's fp16 rounding, not drift between two trainings.
        "optimizer.lr=1e-12",
        "optimizer.momentum=0",
        "optimizer.weight_decay=0",
        *extra,
        name=name,
    )
    L.seed_everything(0)
    datamodule = builders.build_datamodule(cfg)
    module = builders.build_module(cfg, datamodule)
    recorder = RecordLosses()
    trainer = builders.build_trainer(cfg, [recorder], [])
    trainer.fit(module, datamodule=datamodule)
    return recorder.steps, module


def test_cached_training_gives_the_uncached_losses(
    make_cfg, teacher_state_file: Path, tmp_path: Path
) -> None:
    live, _ = _fit(make_cfg, teacher_state_file, name="live")
    cache_dir = tmp_path / "tcache"
    args = ("teacher.cache.enabled=true", f"teacher.cache.dir={cache_dir}")
    filled, module = _fit(make_cfg, teacher_state_file, *args, name="fill")
    assert module.teacher_cache.filled_now and module.teacher_cache.ready
    reused, module = _fit(make_cfg, teacher_state_file, *args, name="reuse")
    assert not module.teacher_cache.filled_now  # second run: no teacher pass over the training set
    assert len([p for p in cache_dir.iterdir() if not p.name.endswith(".lock")]) == 1  # + the fill lock
    assert len(live) == len(filled) == 3
    for a, b, c in zip(live, filled, reused, strict=True):
        for k in TERMS:
            # fp16 storage rounds logits, maps and pooled features to ~5e-4 relative.
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-6), (k, a, b)
            assert c[k] == b[k], (k, b, c)  # same cache, same batches: bit-identical
    assert filled != live  # the cache really was read: fp16 values are not the live fp32 ones


def _setup(seed: int = 0, **data: object):
    torch.manual_seed(seed)
    teacher = FrozenTeacher(SegModel("Unet", "resnet18", 4))
    student = SegModel("Unet", "tu-mobilenetv3_small_050", 4, decoder_channels=[64, 32, 16, 16, 16])
    kwargs = {"num_samples": 6, "image_size": 64, "seed": 5, **data}
    return teacher, student, SyntheticSegmentation(**kwargs)


LOSSES = {"kd": LogitKD(), "boundary": BoundaryDistillation(), "context": ContextDistillation()}


def _prepare(cache: TeacherCache, teacher, student, dataset, losses=LOSSES) -> None:
    cache.prepare(teacher, student, losses, dataset, batch_size=4, log=lambda _: None)


def test_lookup_returns_what_the_losses_read_in_fp16(tmp_path: Path) -> None:
    teacher, student, data = _setup()
    cache = TeacherCache(TeacherCacheConfig(enabled=True, dir=str(tmp_path)))
    _prepare(cache, teacher, student, data)
    index = torch.tensor([5, 0, 3])
    out = cache.lookup(index)
    images = torch.stack([data[i]["image"] for i in index.tolist()])
    live = teacher(images)
    assert out.stages == () and out.decoder is None  # compact entries replace the big features
    torch.testing.assert_close(
        out.logits, live.logits.half().float(), rtol=0, atol=2e-3 * live.logits.abs().max()
    )
    from bcd_lightning.distill.functional import boundary_map

    for i in (1, 2, 3, 4):
        expected = boundary_map(live.stages[i])  # channel-free map, 1 value per pixel
        torch.testing.assert_close(
            out.cached[f"boundary_map/stage{i}/dilation1"], expected, rtol=0, atol=1e-3
        )
    nodes = out.cached["decoder_nodes/stride8/max_nodesNone/8x8"]
    pooled = torch.nn.functional.avg_pool2d(live.decoder, 8)  # 64/8: exact 8x8 blocks
    torch.testing.assert_close(nodes, pooled, rtol=2e-3, atol=1e-4)


def _key_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if not p.name.startswith(".")}


def test_changed_teacher_data_or_transform_gets_a_new_cache(tmp_path: Path) -> None:
    config = TeacherCacheConfig(enabled=True, dir=str(tmp_path))
    teacher, student, data = _setup()
    base_cfg = {"train_set": {"seed": 5}, "batch_size": 4}

    first = TeacherCache(config, base_cfg)
    _prepare(first, teacher, student, data)
    again = TeacherCache(config, {**base_cfg, "batch_size": 2, "num_workers": 3})  # loader settings only
    _prepare(again, teacher, student, data)
    assert first.filled_now and not again.filled_now and again.key == first.key

    keys = {first.key}
    other_teacher, _, _ = _setup(seed=1)  # different checkpoint: different weights
    variants = [
        (TeacherCache(config, base_cfg), other_teacher, data),
        (
            TeacherCache(config, {**base_cfg, "train_set": {"seed": 6}}),
            teacher,
            SyntheticSegmentation(num_samples=6, image_size=64, seed=6),
        ),
        (
            TeacherCache(config, {**base_cfg, "train_set": {"seed": 5, "normalize": False}}),
            teacher,
            SyntheticSegmentation(num_samples=6, image_size=64, seed=5, normalize=False),
        ),
        (TeacherCache(config, {**base_cfg, "transforms": {"resize": 64}}), teacher, data),
    ]
    for cache, t, d in variants:
        _prepare(cache, t, student, d)
        assert cache.filled_now, "a changed teacher/data/transform config must be recomputed"
        keys.add(cache.key)
    assert len(keys) == 1 + len(variants)
    assert _key_dirs(tmp_path) == keys
    # A changed loss setting (what is stored) is another cache too.
    cache = TeacherCache(config, base_cfg)
    _prepare(cache, teacher, student, data, {"boundary": BoundaryDistillation(stages=[1, 2])})
    assert cache.filled_now and cache.key not in keys


class RandomFlip(Dataset):
    """A training set with random augmentation: sample i differs between epochs."""

    deterministic = False

    def __init__(self, base: Dataset) -> None:
        self.base, self.transform = base, "RandomHorizontalFlip(p=0.5)"

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        if torch.rand(()) < 0.5:
            item = {"image": item["image"].flip(-1), "mask": item["mask"].flip(-1)}
        return item


class Undeclared(RandomFlip):
    deterministic = None  # says nothing: refused as well


def test_random_augmentation_is_refused_with_one_clear_error(tmp_path: Path) -> None:
    teacher, student, data = _setup()
    check_deterministic(data)  # the embedded data declares itself deterministic
    for dataset in (RandomFlip(data), Undeclared(data)):
        cache = TeacherCache(TeacherCacheConfig(enabled=True, dir=str(tmp_path)))
        with pytest.raises(ConfigError) as info:
            _prepare(cache, teacher, student, dataset)
        message = str(info.value)
        assert "teacher.cache.enabled=true" in message and "data.train_set" in message
        assert type(dataset).__name__ in message and "\n" not in message
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_random_augmentation_refused_when_building_the_run(
    make_cfg, teacher_state_file: Path, tmp_path
) -> None:
    cfg = make_cfg("distill=kd", f"teacher.ckpt={teacher_state_file}", "teacher.cache.enabled=true")
    datamodule = builders.build_datamodule(cfg)
    datamodule.train_set = RandomFlip(datamodule.train_set)
    with pytest.raises(ConfigError, match=r"teacher.cache.enabled=true needs the same training sample"):
        builders.build_module(cfg, datamodule)


class CrashOnSecondBatch(LogitKD):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def teacher_cache_entries(self, teacher, student):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("simulated crash while filling")
        return None


def test_a_crashed_fill_leaves_nothing_and_is_refilled(tmp_path: Path) -> None:
    teacher, student, data = _setup()
    config = TeacherCacheConfig(enabled=True, dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _prepare(TeacherCache(config), teacher, student, data, {"kd": CrashOnSecondBatch()})
    assert [
        p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")
    ] == []  # no partial cache, no tmp dir
    cache = TeacherCache(config)
    _prepare(cache, teacher, student, data, {"kd": LogitKD()})
    assert cache.filled_now and (cache.path / "meta.json").is_file()


def test_cache_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"teacher.cache.dtype"):
        TeacherCacheConfig.from_mapping({"enabled": True, "dtype": "bfloat16"})
    with pytest.raises(ConfigError, match=r"Unknown key 'teacher.cache.enable'"):
        TeacherCacheConfig.from_mapping({"enable": True})
    assert TeacherCacheConfig.from_mapping(None).enabled is False


def test_a_cache_above_max_gib_is_refused_naming_the_setting(tmp_path: Path) -> None:
    teacher, student, data = _setup()
    cache = TeacherCache(TeacherCacheConfig(enabled=True, dir=str(tmp_path), max_gib=1e-6))
    with pytest.raises(ConfigError, match=r"teacher.cache.max_gib=1e-06"):
        _prepare(cache, teacher, student, data)


def test_stale_fills_are_removed_only_when_owned_by_this_host(tmp_path: Path) -> None:
    """Issue 14 case 12: a temporary fill of another node (shared filesystem) is never deleted, even when
    its pid is not alive here; a fill of this host whose process is gone is."""
    from bcd_lightning.teacher_cache import _remove_stale_temporaries, host

    dead = _dead_pid()
    key = "abc123"
    mine_dead = tmp_path / f".{key}.tmp-{host()}@{dead}@deadbeef"
    mine_alive = tmp_path / f".{key}.tmp-{host()}@{os.getpid()}@cafe0000"
    other_node = tmp_path / f".{key}.tmp-node-17.cluster@{dead}@feed0000"  # same pid, another host
    for d in (mine_dead, mine_alive, other_node):
        d.mkdir()
    _remove_stale_temporaries(tmp_path, key)
    assert not mine_dead.exists()
    assert mine_alive.exists() and other_node.exists()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_second_filler_waits_for_the_lock_then_reuses(tmp_path: Path) -> None:
    """Two jobs sharing the cache: while one holds the fill lock the other waits; it then finds the
    finished cache and does not fill again (the lock is a real file lock, taken here from a thread)."""
    import threading
    import time

    from bcd_lightning.teacher_cache import fill_lock

    teacher, student, data = _setup()
    config = TeacherCacheConfig(enabled=True, dir=str(tmp_path))
    first = TeacherCache(config)
    _prepare(first, teacher, student, data, {"kd": LogitKD()})
    key = first.path.name
    shutil.move(first.path, tmp_path / "held")  # pretend the fill is still running
    messages: list[str] = []
    second = TeacherCache(config)
    with fill_lock(tmp_path, key):
        worker = threading.Thread(
            target=lambda: second.prepare(
                teacher, student, {"kd": LogitKD()}, data, batch_size=4, log=messages.append
            )
        )
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and any("waiting" in m for m in messages)
        shutil.move(tmp_path / "held", tmp_path / key)  # the other fill completes
    worker.join(timeout=60)
    assert not second.filled_now and any("filled by another process" in m for m in messages)
