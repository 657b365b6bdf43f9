"""Exact resume: a run resumed from one of its own checkpoints (mid-epoch or at an epoch end) ends with
the same student, tensor for tensor, as the uninterrupted run. CPU, ``trainer.deterministic=true``.

The training data add noise from the global torch, numpy and python RNGs (as random augmentation
does), so both the data order and the RNG states must be restored for the weights to match; a control
run without the RNG callback shows the test would notice.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler

from bcd_lightning.data.resumable_loader import ResumableDataLoader
from bcd_lightning.data.synthetic import SyntheticSegmentation
from bcd_lightning.train import train


class NoisySynthetic(SyntheticSegmentation):
    """Synthetic data plus noise drawn from all three global RNGs (stands in for random augmentation)."""

    def __getitem__(self, index: int) -> dict:
        item = dict(super().__getitem__(index))
        scale = 0.05 * (1 + np.random.rand() + random.random())
        item["image"] = item["image"] + scale * torch.randn_like(item["image"])
        return item


def _run_overrides(tmp_path: Path, teacher: Path) -> list[str]:
    every = "+callbacks.every_step"
    epoch = "+callbacks.every_epoch"
    return [
        "distill=kd",
        f"teacher.ckpt={teacher}",
        "optimizer=adamw",  # optimizer state (moments) and a step-wise schedule must resume too
        "scheduler=onecycle",
        "trainer.deterministic=true",
        "trainer.max_epochs=3",
        "trainer.limit_val_batches=1",
        "test=false",
        "callbacks.panels.enabled=false",
        "callbacks.confusion_matrix.enabled=false",
        f"data.train_set._target_={__name__}.NoisySynthetic",
        # Checkpoints after every step and at every epoch end (after validation), all kept.
        f"{every}._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"{every}.dirpath=${{paths.output_dir}}/steps",
        f"{every}.filename='s{{step}}'",
        f"{every}.every_n_train_steps=1",
        f"{every}.save_top_k=-1",
        f"{every}.auto_insert_metric_name=false",
        f"{epoch}._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"{epoch}.dirpath=${{paths.output_dir}}/epochs",
        f"{epoch}.filename='e{{epoch}}'",
        f"{epoch}.every_n_epochs=1",
        f"{epoch}.save_top_k=-1",
        f"{epoch}.auto_insert_metric_name=false",
    ]


def _final_state(result: dict) -> tuple[dict[str, torch.Tensor], int]:
    checkpoint = torch.load(Path(result["output_dir"]) / "steps" / "s12.ckpt", weights_only=True)
    return checkpoint["state_dict"], checkpoint["global_step"]


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """One uninterrupted run (16 images, batch 4: 4 steps per epoch, 3 epochs) and resumed runs."""
    from support import FAST, compose_config

    tmp = tmp_path_factory.mktemp("resume")
    teacher = tmp / "teacher.pt"
    from bcd_lightning.builders import build_model

    torch.manual_seed(0)
    torch.save(build_model(compose_config(["paths.output_dir=unused"]).teacher.model).state_dict(), teacher)

    def run(name: str, *extra: str) -> dict:
        base = [f"paths.log_dir={tmp / 'logs'}", f"paths.output_dir={tmp / name}", *FAST]
        return train(compose_config([*base, *_run_overrides(tmp, teacher), *extra]))

    full = run("full")
    steps, epochs = Path(full["output_dir"]) / "steps", Path(full["output_dir"]) / "epochs"
    return {
        "full": full,
        # Step 6 = epoch 1, batch 2 of 4: mid-epoch.
        "mid_epoch": run("mid", f"ckpt_path={steps / 's6.ckpt'}"),
        # End of epoch 0, written after its validation.
        "epoch_end": run("end", f"ckpt_path={epochs / 'e0.ckpt'}"),
        # Control: the same mid-epoch resume without restoring the global RNG states.
        "no_rng": run("no_rng", f"ckpt_path={steps / 's6.ckpt'}", "callbacks.rng_state=null"),
    }


@pytest.mark.parametrize("name", ["mid_epoch", "epoch_end"])
def test_resumed_run_matches_uninterrupted_exactly(runs: dict[str, dict], name: str) -> None:
    expected, expected_step = _final_state(runs["full"])
    resumed, resumed_step = _final_state(runs[name])
    assert expected_step == resumed_step == 12
    assert any(k.startswith("model.") for k in resumed)
    assert _differing(expected, resumed) == []


def test_without_rng_restore_the_weights_differ(runs: dict[str, dict]) -> None:
    expected, _ = _final_state(runs["full"])
    resumed, _ = _final_state(runs["no_rng"])
    assert _differing(expected, resumed)  # the noise differs, so must the weights


def _indices(batches: list[dict]) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


class _Indexed(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        return {"index": i}


def _loader(num_workers: int = 0) -> ResumableDataLoader:
    data = _Indexed()
    return ResumableDataLoader(
        data,
        batch_size=3,
        drop_last=True,
        sampler=RandomSampler(data, generator=torch.Generator().manual_seed(5)),
        generator=torch.Generator().manual_seed(6),
        num_workers=num_workers,
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_mid_epoch_and_at_epoch_end(num_workers: int) -> None:
    reference = _loader(num_workers)
    epochs = [_indices(list(reference)) for _ in range(3)]
    assert epochs[0] != epochs[1]  # reshuffled every epoch

    # Stopped after 2 of the 3 batches of epoch 1.
    loader = _loader(num_workers)
    list(loader)
    it = iter(loader)
    seen = _indices([next(it), next(it)])
    state = loader.resume_state()
    assert state["skip"] == 2 and seen == epochs[1][:2]
    resumed = _loader(num_workers)
    resumed.restore(state)
    assert _indices(list(resumed)) == epochs[1][2:]  # the rest of epoch 1, nothing reloaded
    assert _indices(list(resumed)) == epochs[2]

    # Stopped at the end of epoch 0 (with a limit of 2 batches per epoch, like limit_train_batches).
    loader = _loader(num_workers)
    it = iter(loader)
    next(it), next(it)
    assert loader.resume_state(epoch_length=2)["skip"] == 0
    complete = _loader(num_workers)
    list(complete)
    resumed = _loader(num_workers)
    resumed.restore(complete.resume_state())
    assert _indices(list(resumed)) == epochs[1]


def test_sigkilled_run_resumes_with_ckpt_path_last(tmp_path: Path) -> None:
    """A run killed with SIGKILL right after its first checkpoint restarts from last.ckpt with the same
    command plus ``ckpt_path=last`` and ends with all its epochs and a loadable checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from support import FAST

    run_dir = tmp_path / "run"
    command = [
        str(Path(sys.executable).parent / "bcd-train"),
        *FAST,
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=4",
        "trainer.limit_val_batches=1",
        "test=false",
        "callbacks.panels.enabled=false",
        "callbacks.confusion_matrix.enabled=false",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    first = torch.load(last, weights_only=True)  # complete, whatever the moment of the kill
    assert first["epoch"] < 3

    done = subprocess.run([*command, "ckpt_path=last"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming from {last}" in done.stdout
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 3 and final["global_step"] == 4 * 4
    assert not list(last.parent.glob(".*.tmp"))  # no temporary file left behind


def test_last_checkpoint_is_the_latest_epoch_even_without_a_new_best(make_cfg, teacher_state_file) -> None:
    """Lightning's ``save_last`` rewrites last.ckpt only together with a new best; a crashed run would then
    resume from the last *best* epoch. The ``last_checkpoint`` callback writes it after every epoch."""
    cfg = make_cfg(
        "distill=kd",
        f"teacher.ckpt={teacher_state_file}",
        # The teacher's val mIoU is the same every epoch: epoch 0 stays the best, so no new best is saved.
        "callbacks.model_checkpoint.monitor=val/teacher_mIoU",
        "trainer.max_epochs=3",
        "trainer.limit_val_batches=1",
        "test=false",
        "callbacks.panels.enabled=false",
    )
    out = Path(train(cfg)["output_dir"]) / "checkpoints"
    best = torch.load(out / "best.ckpt", weights_only=True)
    last = torch.load(out / "last.ckpt", weights_only=True)
    assert best["epoch"] == 0
    assert last["epoch"] == 2 and last["global_step"] == 3 * best["global_step"]
