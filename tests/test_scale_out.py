"""Scale out on the CPU: DDP with 2 processes, Hydra launchers, wandb grouping, the Optuna preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from bcd_lightning import builders
from bcd_lightning.evaluation import evaluate_model, load_run_checkpoint
from bcd_lightning.models.teacher import load_weights_strict
from bcd_lightning.train import train
from support import FAST, compose_config

#: FAST without its logger choice (each test picks one).
TINY = tuple(o for o in FAST if not o.startswith("logger="))
SHORT = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false")


class DDPProbe(L.Callback):
    """Records, in each worker process, what DDP wrapped and which sampler feeds the rank."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wrapped = trainer.strategy.model
        synced = {id(p) for p in wrapped.parameters()}
        loader = trainer.train_dataloader
        info = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "is_ddp": isinstance(wrapped, DistributedDataParallel),
            "teacher_params_synced": sum(id(p) in synced for p in pl_module.teacher.parameters()),
            "student_params_missing": sum(id(p) not in synced for p in pl_module.model.parameters()),
            "distributed_sampler": isinstance(loader.sampler, DistributedSampler),
            "train_batches": len(loader),
        }
        # Evaluation samplers split the split without padding (no sample counted twice).
        val_sampler = trainer.datamodule.val_dataloader().sampler
        info["val_indices"] = list(iter(val_sampler))
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(info))


def test_ddp_sim_distillation_is_exact_and_never_syncs_the_teacher(
    make_cfg, teacher_state_file: Path, tmp_path: Path
) -> None:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    cfg = make_cfg(
        "experiment=embedded/kd",
        "trainer=ddp_sim",
        "logger=csv",
        "trainer.max_epochs=1",
        "test=false",
        "data.val_set.num_samples=7",  # odd: a padding sampler would count one image twice
        f"teacher.ckpt={teacher_state_file}",
        "+callbacks.probe._target_=test_scale_out.DDPProbe",
        f"+callbacks.probe.out_dir={probe_dir}",
    )
    result = train(cfg)
    out = Path(result["output_dir"])

    # 2 workers; DDP wraps the student only; each rank reads half of the 16 training images (2 x 4).
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    for info in ranks:
        assert info["world_size"] == 2 and info["is_ddp"] and info["distributed_sampler"]
        assert info["teacher_params_synced"] == 0 and info["student_params_missing"] == 0
        assert info["train_batches"] == 16 // 2 // 4
    assert sorted(ranks[0]["val_indices"] + ranks[1]["val_indices"]) == list(range(7))

    # One run directory, one best and one last checkpoint (no per-rank copies).
    assert [p.name for p in tmp_path.iterdir() if p.is_dir() and p.name != "probe"] == ["run"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]

    record = json.loads((out / "metrics.json").read_text())
    assert record["metrics"]["batch/global_batch_size"] == 4 * 2  # per device x devices
    assert record["method"] == "kd" and record["seed"] == 0

    # The val mIoU logged under DDP (sum-reduced over 2 ranks) = one process scoring the checkpoint.
    state, _ = load_run_checkpoint(out / "checkpoints" / "best.ckpt")
    model = builders.build_model(cfg.student)
    load_weights_strict(model, state, "best.ckpt")
    datamodule = builders.build_datamodule(cfg)
    single = evaluate_model(
        model, datamodule.val_dataloader(), datamodule.num_classes, datamodule.class_names, 255
    )
    assert result["val/mIoU_best"] == pytest.approx(single["mIoU"], abs=1e-6)
    assert result["val/mIoU"] == pytest.approx(single["mIoU"], abs=1e-6)  # one epoch: last = best

    # The teacher's pre-fit score: each rank scores its share, the confusion matrices are summed.
    teacher = builders.build_model(cfg.teacher.model)
    teacher.load_state_dict(torch.load(teacher_state_file, weights_only=True))
    teacher_single = evaluate_model(
        teacher.eval(), datamodule.val_dataloader(), datamodule.num_classes, datamodule.class_names, 255
    )
    assert result["val/teacher_mIoU"] == pytest.approx(teacher_single["mIoU"], abs=1e-6)


@pytest.mark.parametrize("option", ["32-true", "bf16-mixed", "16-mixed"])
def test_precision_presets_set_trainer_precision_after_the_trainer_preset(option: str) -> None:
    cfg = compose_config([f"precision={option}", "trainer=gpu", "paths.output_dir=x"])
    assert cfg.trainer.precision == option
    assert compose_config(["trainer=gpu", "paths.output_dir=x"]).trainer.precision == "bf16-mixed"


def test_sync_batchnorm_only_in_gpu_presets() -> None:
    def preset(name: str):
        return compose_config([f"trainer={name}", "paths.output_dir=x"]).trainer

    assert preset("ddp").sync_batchnorm is True and preset("ddp").accelerator == "gpu"
    assert preset("ddp_sim").sync_batchnorm is False and preset("ddp_sim").accelerator == "cpu"
    assert preset("ddp_sim").strategy == "ddp_spawn" and preset("ddp_sim").devices == 2


def test_launcher_presets_override_plugin_defaults() -> None:
    from hydra import compose, initialize_config_module

    def launcher(name: str, *extra: str):
        with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
            cfg = compose(
                "train", [f"hydra/launcher={name}", "paths.output_dir=x", *extra], return_hydra_config=True
            )
        return cfg.hydra.launcher

    parallel = launcher("parallel")
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 1  # plugin default: -1
    slurm = launcher("slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2")
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.nodes, slurm.gpus_per_node, slurm.timeout_min) == ("gpu", 2, 1, 240)
    assert launcher("slurm_local")._target_.endswith("LocalLauncher")


# --- multirun through the console script ----------------------------------------------------------------
def _cli(
    cwd: Path, *args: str, wandb_mode: str = "disabled", timeout: int = 600
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": wandb_mode,
        "WANDB_DIR": str(cwd),
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    bcd_train = str(Path(sys.executable).parent / "bcd-train")
    return subprocess.run(
        [bcd_train, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _wandb_records(path: Path):
    """Raw records of a ``.wandb`` file: a 7-byte header, then LevelDB-log chunks in 32 KiB blocks
    (4-byte checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        kind = data[pos + 6] if left >= 7 else 0
        if kind == 0:  # block trailer / padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield pending
            pending = b""


def _offline_run_group(run_dir: Path) -> tuple[str, str, str]:
    """(run id, group, name) from the run record of an offline run."""
    from wandb.proto import wandb_internal_pb2

    for raw in _wandb_records(next(run_dir.glob("*.wandb"))):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            return record.run.run_id, record.run.run_group, record.run.display_name
    raise AssertionError(f"no run record in {run_dir}")


def test_joblib_multirun_gives_two_run_dirs_and_two_wandb_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = _cli(
        tmp_path,
        "-m",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        "task_name=scale",
        "distill=none",
        "seed=0,1",
        "logger=default",
        "threads=1",
        *TINY,
        *SHORT,
        wandb_mode="offline",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    seen = []
    for job in jobs:
        record = json.loads((job / "metrics.json").read_text())
        assert (job / ".hydra" / "overrides.yaml").is_file() and (job / "config.yaml").is_file()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        run_id, group, name = _offline_run_group(runs[0])
        assert group == "scale-none" and name == f"none-s{record['seed']}"
        seen.append((run_id, record["seed"]))
    assert len({r for r, _ in seen}) == 2 and sorted(s for _, s in seen) == [0, 1]


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_tiny_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = _cli(
        tmp_path, "-m", "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep}", "logger=csv", *TINY, *SHORT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").is_file()
    assert any((sweep / ".submitit").iterdir())  # submitit's job folder: the SLURM code path ran


@pytest.mark.slow
def test_optuna_preset_runs_two_trials(tmp_path: Path, teacher_state_file: Path) -> None:
    sweep = tmp_path / "sweep"
    done = _cli(
        tmp_path,
        "experiment=embedded/bcd",
        "hparams_search=bcd_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep}",
        f"teacher.ckpt={teacher_state_file}",
        "logger=csv",
        *TINY,
        *SHORT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1")]
    weights = [r["overrides"] for r in records]
    assert weights[0] != weights[1]  # two different points of the search space
    assert all(any(o.startswith("distill.losses.context.weight=") for o in w) for w in weights)
    result = (sweep / "optimization_results.yaml").read_text()
    best = max(r["metrics"]["val/mIoU_best"] for r in records)
    assert f"best_value: {best}" in result
    assert not any("test/mIoU" in r["metrics"] for r in records)  # tuning never touches the test split
