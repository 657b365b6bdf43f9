"""scripts/gpu_check.py: its CPU dry run (the GPU check's own code path at tiny sizes), the deadline, the
FLOP count it divides by, and the make targets that prepare and run it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bcd_lightning.distill.functional import self_relation_kl
from support import load_script

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = ("contiguous", "channels_last")


@pytest.fixture(scope="module")
def gpu():
    return load_script("gpu_check")


def test_cpu_dry_run_measures_every_item(gpu, tmp_path: Path) -> None:
    path = tmp_path / "out" / "gpu_check.json"
    data = gpu.main(["--device", "cpu", "--tiny", "--json", str(path), "--skip", "train"])
    items = data["items"]
    assert data["failed"] == []
    assert items["check: context chunked == naive (fp32)"]["passed"] is True
    bf16 = items["check: bf16 teacher within tolerance"]
    assert bf16["passed"] is True and 0 < bf16["logits_rel_err"] <= 0.05
    batch = data["meta"]["batch"]
    for layout in LAYOUTS:
        for precision in ("fp32", "bf16-mixed"):
            rows = {step: items[f"{step} [{precision}, {layout}]"] for step in gpu.STEPS}
            for row in rows.values():
                assert row["ms"] > 0 and row["images_per_s"] == pytest.approx(batch * 1000 / row["ms"])
            ratio = rows["bcd step"]["ms"] / (rows["student step"]["ms"] + rows["teacher forward"]["ms"])
            assert data["ratios"][f"bcd / (student + teacher) [{precision}, {layout}]"] == pytest.approx(
                ratio
            )
            if layout == "contiguous":  # the first variant also times the bcd step from the teacher cache
                cached = items[f"cached bcd step [{precision}, {layout}]"]["ms"]
                assert data["ratios"][f"cached bcd / student [{precision}, {layout}]"] == pytest.approx(
                    cached / rows["student step"]["ms"]
                )
            else:
                assert f"cached bcd step [{precision}, {layout}]" not in items
        teacher = {p: items[f"teacher forward [{p}, {layout}]"]["ms"] for p in ("fp32", "bf16-mixed")}
        assert data["ratios"][f"teacher bf16 / fp32 [{layout}]"] == pytest.approx(
            teacher["bf16-mixed"] / teacher["fp32"]
        )
    for grid, n in (("8x16", 128), ("16x32", 512)):
        row = items[f"context {grid}"]
        assert row["N"] == n and row["flops"] == 8 * 2 * n * n * 16  # B = 2, C = 16 in --tiny
        assert row["chunked"]["time_s"] > 0 and row["naive"]["time_s"] > 0
        assert row["chunked"]["tflops"] == pytest.approx(row["flops"] / row["chunked"]["time_s"] / 1e12)
    sweep = items["context chunk sweep 8x16"]
    assert sweep["auto_chunk"] == 128 and set(sweep["chunks"]) == {"32", "128"}  # auto/4, auto (= N)
    for row in sweep["chunks"].values():
        assert row["tflops"] == pytest.approx(8 * 2 * 128**2 * 16 / row["time_s"] / 1e12)
    assert "--no-compile" in items["compiled steps"]["skipped"]
    # Both files on disk; the markdown table has every measured row.
    assert json.loads(path.read_text())["items"].keys() == items.keys()
    md = path.with_suffix(".md").read_text()
    assert "| bcd step | bf16-mixed, channels_last |" in md and "| 16x32 | 512 |" in md
    assert "| context chunked == naive (fp32) |" in md and "compiled steps: skipped" in md
    assert (
        items["teacher cache fill [contiguous]"]["bytes"] > 0
        and "| cached bcd step | fp32, contiguous |" in md
    )


class MatmulFlops(TorchDispatchMode):
    """2·m·k·n per (batched) matmul actually dispatched, in-place and out= variants included
    (torch's FlopCounterMode does not count ``baddbmm_``)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops, self.ops = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if "mm" in name or "matmul" in name or "dot" in name:
            self.ops.add(name)
        if name in ("bmm", "baddbmm", "baddbmm_"):
            a, b = (args[0], args[1]) if name == "bmm" else (args[1], args[2])
            self.flops += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        return func(*args, **(kwargs or {}))


def test_context_flop_count_is_the_kernels_matmul_count(gpu) -> None:
    b, c, h, w = 2, 8, 6, 10
    s = torch.randn(b, c, h, w, requires_grad=True)
    t = torch.randn(b, c, h, w)
    with MatmulFlops() as count:
        self_relation_kl(s, t, 0.5, chunk_size=7).backward()  # ragged chunks: 60 rows = 8 x 7 + 4
    assert count.ops <= {"bmm", "baddbmm_", "vdot"}  # vdot: the KL sum, O(B·chunk·N), not counted
    assert count.flops == gpu.context_flops(b, h * w, c) == 8 * b * (h * w) ** 2 * c


def test_items_past_the_budget_are_skipped_with_the_reason(gpu, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    data = gpu.main(["--device", "cpu", "--tiny", "--json", str(path), "--budget", "0", "--skip", "train"])
    assert data["items"] and data["failed"] == []
    for name, row in data["items"].items():
        assert row["skipped"].startswith("deadline: "), name
    assert "Skipped or failed:" in path.with_suffix(".md").read_text()


def test_an_item_running_past_the_deadline_is_stopped_and_the_rest_skipped(gpu, tmp_path: Path) -> None:
    args = gpu.parse_args(
        ["--device", "cpu", "--tiny", "--json", str(tmp_path / "r.json"), "--budget", "0.5"]
    )
    report = gpu.Report(args, torch.device("cpu"))
    t0 = time.monotonic()
    slow = report.item("slow", 0.0, lambda: time.sleep(30) or {})
    assert time.monotonic() - t0 < 5
    assert slow["skipped"].startswith("deadline: stopped after")
    assert "stopped at the deadline" in report.item("next", 0.0, dict)["skipped"]
    assert report.failed() == []


def test_a_raising_item_is_recorded_with_its_traceback_and_fails_the_run(gpu, tmp_path: Path) -> None:
    args = gpu.parse_args(["--device", "cpu", "--tiny", "--json", str(tmp_path / "r.json")])
    report = gpu.Report(args, torch.device("cpu"))
    row = report.item("bad", 0.0, lambda: {"x": 1 / 0})
    assert row["error"] == "ZeroDivisionError: division by zero" and "1 / 0" in row["traceback"]
    assert report.item("good", 0.0, lambda: {"passed": True})["passed"] is True
    assert report.failed() == ["bad"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_without_cuda_the_default_device_says_how_to_dry_run(gpu, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--device cpu --tiny"):
        gpu.main(["--out", str(tmp_path)])


def test_make_targets_prepare_and_run_the_check_offline(tmp_path: Path) -> None:
    # Not the ARGS of an enclosing `make test ARGS=...` (make passes command-line variables on to sub-makes).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS")}

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, check=False, env=env
        )

    wheels = make("-n", "gpu-wheels").stdout
    assert "--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64" in wheels
    assert 'wheel --no-deps -w gpu-wheels . "antlr4-python3-runtime==4.9.3"' in wheels
    check = [
        line for line in make("-n", "gpu-check", f"OUT={tmp_path}").stdout.splitlines() if "python3" in line
    ]
    assert check[1:] == [
        "python3 -m pip install --no-index --find-links gpu-wheels bcd_lightning",
        "python3 -m pip install --no-index --find-links gpu-wheels --force-reinstall --no-deps bcd_lightning",
        f"python3 scripts/gpu_check.py --out {tmp_path} ",
    ]
    missing = make("gpu-check")
    assert missing.returncode == 2 and "usage: make gpu-check OUT=<folder>" in missing.stdout


@pytest.mark.slow
def test_cpu_dry_run_of_the_training_runs_exits_zero(gpu, tmp_path: Path) -> None:
    data = gpu.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--skip", "steps", "context"])
    assert data["failed"] == []
    for run in ("gpu", "ddp"):
        row = data["items"][f"train {run}"]
        assert row["returncode"] == 0, row.get("stderr_tail")
        assert row["metrics"]["train/step_time_median_s"] > 0
        assert (tmp_path / "train" / run / "metrics.json").is_file()
