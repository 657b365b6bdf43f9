"""One prepared GPU check: the CUDA path of every fast-path claim, measured in at most 6 minutes.

On a CUDA machine without internet that has torch, torchvision, lightning, torchmetrics and timm::

    make gpu-wheels                  # beforehand, with internet: the wheel folder ./gpu-wheels (~75 MB)
    make gpu-check OUT=gpu-out       # on the CUDA machine, from this repository: install offline, run

``make gpu-check OUT=gpu-out`` runs exactly::

    python3 -m pip install --no-index --find-links gpu-wheels bcd_lightning
    python3 -m pip install --no-index --find-links gpu-wheels --force-reinstall --no-deps bcd_lightning
    python3 scripts/gpu_check.py --out gpu-out

(``GPU_PY=<python>`` picks another interpreter, ``WHEELS=<folder>`` another wheel folder, ``ARGS=...``
passes options to this script; ``make gpu-wheels GPU_PYVER=3.11`` prepares wheels for another Python.)
The wheel folder (CPython 3.12, manylinux x86_64) holds the project itself (``bcd_lightning``),
hydra-core, omegaconf, antlr4-python3-runtime (published only as an sdist: ``make gpu-wheels`` builds
its pure-Python wheel), segmentation-models-pytorch (without its torch, torchvision and timm), wandb,
rich, matplotlib, huggingface-hub, safetensors, pillow, numpy, tqdm, and what these need (pip resolves
them: pydantic, protobuf, requests, opentelemetry, ...; ``ls gpu-wheels``).

What it writes into ``--out`` (``gpu_check.json`` and ``gpu_check.md``, the latter rendered by
scripts/gpu_report.py; both rewritten after every item, so a run stopped from outside keeps what it
measured), in this order:

1. checks: chunked == naive context loss (value and gradient, fp32) and the bf16 teacher (protocol model
   and size) within the tolerances stated in docs/performance.md;
2. steps: the distillation step of the protocol models at the protocol size (DeepLabV3-R101 teacher,
   DeepLabV3-R18 student from ``experiment=cityscapes/dlv3_r18``, its 512x1024 crop, batch 8, synthetic
   images, random weights): student step, teacher forward, ``kd`` and ``bcd`` steps, fp32 and bf16-mixed,
   contiguous and channels_last, and (contiguous) the bcd step from the teacher-output cache; time
   (median), images/s, peak memory; the ratios bcd / (student + teacher), cached bcd / student and
   teacher bf16 / fp32. Measured with ``scripts/bench_step.py``'s ``Bench`` and ``measure``;
3. context: the context loss chunked vs naive at 64x128 and 128x256 nodes (stride 8 and 4 of 512x1024),
   time, peak memory and achieved TFLOP/s (``scripts/bench_losses.py``'s ``bench_context``; naive is
   skipped where its estimated memory does not fit, and the estimate is reported); at 64x128 also the
   automatic chunk against 4x smaller and 4x, 16x larger ones (to tune the CUDA chunk size);
4. train: ``bcd-train experiment=embedded/bcd trainer=gpu`` and ``trainer=ddp trainer.devices=1`` (NCCL),
   32 steps at 384x384, as subprocesses; exit status, wall time, median step time;
5. steps with ``compile=true`` (the student compiled in place, as ``bcd-train compile=true`` does).

The script stops itself: an item that would start with less than its expected duration left before
``--budget`` seconds is skipped, one that runs past it is interrupted, and both are recorded with the
reason. Exit status 1 when a check fails, a training run exits non-zero, or an item raises.

CPU dry run of the same code path at tiny sizes (tested in tests/scripts/test_gpu_check.py)::

    python scripts/gpu_check.py --device cpu --tiny --json /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bcd_lightning.builders import build_model, distill_terms
from bcd_lightning.distill import LogitKD
from bcd_lightning.distill.base import teacher_fields
from bcd_lightning.distill.functional import (
    auto_chunk_size,
    boundary_map,
    self_relation_kl,
    self_relation_kl_naive,
)
from bcd_lightning.models import SegOutput
from bench_losses import NAIVE_BYTES_PER_ENTRY, bench_context, context_case, memory_method
from bench_step import Bench, compose, measure
from gpu_report import CACHED, PRECISIONS, STEPS, markdown, ratios, summary

PROTOCOL = ["experiment=cityscapes/dlv3_r18"]  # DeepLabV3-R101 teacher -> DeepLabV3-R18 student
PROTOCOL_BATCH = 8
# Stated tolerances of the bf16 teacher (docs/performance.md, tests/lit/test_fast_path.py).
BF16_LOGITS = 0.05  # max |bf16 - fp32| logit <= 5% of the largest fp32 logit magnitude
BF16_BOUNDARY = 0.05  # boundary maps (values in [0, 1]), absolute
BF16_KD = 0.02  # pixel KD against the same student logits, relative
# Chunked vs naive context loss in fp32 (full-precision matmuls): relative to the naive value / max |grad|.
CONTEXT_VALUE_RTOL = 1e-4
CONTEXT_GRAD_RTOL = 1e-3
CONTEXT_TAU = 0.5  # the bcd preset's


def context_flops(batch: int, nodes: int, channels: int) -> int:
    """Matmul FLOPs of one chunked context loss forward + backward.

    Per image and row chunk the kernel runs four matmuls over all N nodes: teacher logits t tᵀ and
    student logits s sᵀ ([chunk, C] x [C, N] each), and the two gradient updates G s and Gᵀ s_chunk
    ([chunk, N] x [N, C], [N, chunk] x [chunk, C]); each is 2·chunk·N·C FLOPs, so over all chunks
    4 · 2·N·N·C per image: FLOPs = 8 · B · N² · C. ``backward`` only scales the stored gradient.
    """
    return 8 * batch * nodes * nodes * channels


# ---------------------------------------------------------------------------------------------- deadline
class OutOfTime(BaseException):
    """Raised inside an item when the budget runs out (not an ``Exception``: no library swallows it)."""


class Deadline:
    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.monotonic(), budget_s

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Interrupt the block (``OutOfTime``) when the budget runs out (SIGALRM: main thread, Unix)."""

        def expire(*_: object) -> None:
            raise OutOfTime

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 1e-3))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class Report:
    """The results; every item runs under the deadline and the files are rewritten after each."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device, self.deadline = args, device, Deadline(args.budget)
        self.data: dict[str, Any] = {"meta": meta(args, device), "items": {}}
        self.stopped = False

    def item(self, name: str, expect_s: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        left = self.deadline.left()
        if self.stopped or left < expect_s:
            why = f"{left:.0f} s left, this item takes ~{expect_s:.0f} s"
            result = {
                "skipped": "deadline: " + ("the run was stopped at the deadline" if self.stopped else why)
            }
        else:
            t0 = time.monotonic()
            try:
                with self.deadline.guard():
                    result = fn()
            except OutOfTime:
                self.stopped = True
                result = {"skipped": f"deadline: stopped after {time.monotonic() - t0:.0f} s, budget spent"}
            except Exception as err:  # a failing item must not cost the others: recorded, traceback kept
                result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            result["wall_s"] = round(time.monotonic() - t0, 2)
        self.data["items"][name] = result
        print(f"[{self.elapsed():6.1f} s] {name}: {summary(result)}", file=sys.stderr, flush=True)
        self.write()
        return result

    def elapsed(self) -> float:
        return self.args.budget - self.deadline.left()

    def write(self) -> None:
        self.data["meta"]["wall_s"] = round(self.elapsed(), 1)
        self.args.json.parent.mkdir(parents=True, exist_ok=True)
        self.args.json.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        self.args.markdown.write_text(markdown(self.data))

    def failed(self) -> list[str]:
        out = []
        for name, r in self.data["items"].items():
            if "error" in r or r.get("passed") is False or r.get("returncode", 0) != 0:
                out.append(name)
        return out


def meta(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "threads": torch.get_num_threads(),
        "tiny": args.tiny,
        "budget_s": args.budget,
        "size": list(args.size),
        "batch": args.batch,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "memory": memory_method(device, True),
        "command": "python scripts/gpu_check.py " + " ".join(args.argv),
    }


# ---------------------------------------------------------------------------------------------- checks
def check_context(device: torch.device, tiny: bool) -> dict[str, Any]:
    """Chunked vs naive context loss, value and gradient, fp32, with the automatic and a ragged chunk."""
    b, c, h, w = (2, 16, 8, 16) if tiny else (2, 256, 32, 64)
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(b, c, h, w, generator=gen).to(device).requires_grad_(True)
    t = torch.randn(b, c, h, w, generator=gen).to(device)

    def value_grad(fn: Callable[..., torch.Tensor], **kw: Any) -> tuple[float, torch.Tensor]:
        s.grad = None
        loss = fn(s, t, CONTEXT_TAU, **kw)
        loss.backward()
        return float(loss.detach()), s.grad.clone()

    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the comparison is about the algorithm, in full fp32
    try:
        ref, ref_grad = value_grad(self_relation_kl_naive)
        rows = {}
        for label, chunk in (("auto chunk", None), ("ragged chunk", h * w // 3 + 1)):
            value, grad = value_grad(self_relation_kl, chunk_size=chunk)
            rows[label] = {
                "value_rel_err": abs(value - ref) / abs(ref),
                "grad_rel_err": float((grad - ref_grad).abs().max() / ref_grad.abs().max()),
            }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    passed = all(
        r["value_rel_err"] <= CONTEXT_VALUE_RTOL and r["grad_rel_err"] <= CONTEXT_GRAD_RTOL
        for r in rows.values()
    )
    tolerance = {"value": CONTEXT_VALUE_RTOL, "grad": CONTEXT_GRAD_RTOL}
    return {"shape": [b, c, h, w], "value": ref, "cases": rows, "tolerance": tolerance, "passed": passed}


def check_bf16_teacher(bench: Bench) -> dict[str, Any]:
    """The protocol teacher's outputs with ``teacher.precision=bf16`` against fp32, on the device."""
    outs = {}
    for precision in ("32", "bf16"):
        bench.teacher.precision = precision
        outs[precision] = bench.teacher(bench.image)
    bench.teacher.precision = "32"
    a, b = outs["32"], outs["bf16"]
    logits = float((b.logits - a.logits).abs().max() / a.logits.abs().max())
    boundary = max(
        float((boundary_map(sb) - boundary_map(sa)).abs().max())
        for sa, sb in zip(a.stages[1:], b.stages[1:], strict=True)
    )
    gen = torch.Generator().manual_seed(1)
    student = SegOutput(logits=torch.randn(a.logits.shape, generator=gen).to(a.logits.device))
    kd32, kd16 = (float(LogitKD()(student, o, bench.mask)) for o in (a, b))
    kd = abs(kd16 - kd32) / abs(kd32)
    return {
        "logits_rel_err": logits,
        "boundary_abs_err": boundary,
        "kd_rel_err": kd,
        "tolerance": {"logits": BF16_LOGITS, "boundary": BF16_BOUNDARY, "kd": BF16_KD},
        "bf16_differs": logits > 0,  # autocast really ran in bf16
        "passed": logits <= BF16_LOGITS and boundary <= BF16_BOUNDARY and kd <= BF16_KD and logits > 0,
    }


# ---------------------------------------------------------------------------------------------- steps
def make_bench(args: argparse.Namespace, device: torch.device, channels_last: bool, compiled: bool) -> Bench:
    ns = argparse.Namespace(
        size=tuple(args.size),
        batch=args.batch,
        samples=args.batch,
        teacher_precision="32",
        channels_last=channels_last,
    )
    bench = Bench(ns, device, overrides=PROTOCOL)
    if compiled:
        bench.student.compile()  # in place, as builders.build_module does for compile=true
    return bench


def preset_terms(preset: str, device: torch.device) -> tuple[dict, frozenset[str]]:
    terms = distill_terms(compose([*PROTOCOL, f"distill={preset}"]))
    for term in terms.values():
        term.loss.to(device)
    return terms, frozenset().union(*(teacher_fields(t.loss) for t in terms.values()))


def step_fn(bench: Bench, step: str, precision: str, terms: dict) -> Callable[[], None]:
    """One measured call. bf16-mixed: the student forward and the losses under bf16 autocast, as
    Lightning's ``bf16-mixed`` runs training_step (the teacher inside a kd / bcd step runs under it with
    the default ``teacher.precision=32``); the teacher-forward row uses ``teacher.precision=bf16``."""
    bf16 = precision == "bf16-mixed"
    bench.autocast = (
        (lambda: torch.autocast(bench.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    )
    if step == "teacher forward":
        return lambda: bench.teacher_forward("bf16" if bf16 else "32")
    if step == "student step":
        return bench.student_step
    if step == CACHED:
        cache = terms["cache"]
        return lambda: bench.student_step(terms["bcd"][0], lambda: cache.lookup(bench.index, bench.device))
    losses, fields = terms[step.split()[0]]
    return lambda: bench.student_step(losses, lambda: bench.teacher(bench.image, outputs=fields))


def fill_cache(holder: dict[str, Any]) -> dict[str, Any]:
    """The bcd preset's teacher-output cache of the bench's samples, in a temporary folder."""
    holder["tmp"] = tempfile.TemporaryDirectory(prefix="gpu_check_cache_")
    holder["terms"]["cache"] = holder["bench"].cache_for(holder["terms"]["bcd"][0], Path(holder["tmp"].name))
    files = [f for f in Path(holder["tmp"].name).rglob("*") if f.is_file()]
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def measure_variant(
    report: Report, device: torch.device, channels_last: bool, compiled: bool, first: bool = False
) -> None:
    """Every step x precision of one layout / compile variant, each row its own deadline item. The
    ``first`` variant also checks the bf16 teacher and times the bcd step from the teacher-output cache."""
    args = report.args
    variant = ("channels_last" if channels_last else "contiguous") + (", compiled" if compiled else "")
    holder: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        holder["bench"] = make_bench(args, device, channels_last, compiled)
        holder["terms"] = {p: preset_terms(p, device) for p in ("kd", "bcd")}
        return {"models": "DeepLabV3-R101 -> DeepLabV3-R18", "size": list(args.size), "batch": args.batch}

    report.item(f"setup [{variant}]", args.expect_setup, setup)
    if "bench" not in holder:
        return
    steps = STEPS
    if first:
        report.item(
            "check: bf16 teacher within tolerance",
            args.expect_setup,
            lambda: check_bf16_teacher(holder["bench"]),
        )
        if "error" not in report.item(
            f"teacher cache fill [{variant}]", args.expect_step, lambda: fill_cache(holder)
        ):
            steps = (*STEPS, CACHED)
    for precision in PRECISIONS:
        for step in steps:
            if compiled and step == "teacher forward":
                continue  # compile=true compiles the student only

            def run(step: str = step, precision: str = precision) -> dict[str, Any]:
                fn = step_fn(holder["bench"], step, precision, holder["terms"])
                first = None
                if compiled:  # the first call compiles: timed on its own
                    t0 = time.perf_counter()
                    fn()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    first = time.perf_counter() - t0
                row = measure(fn, device, args.warmup, args.steps)
                row["images_per_s"] = args.batch * 1e3 / row["ms"]
                row["peak_total"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
                if first is not None:
                    row["first_call_s"] = first
                return row

            # Compiling happens in the first step of each precision; the other steps reuse the graphs.
            expect = args.expect_compile if compiled and step == "student step" else args.expect_step
            report.item(f"{step} [{precision}, {variant}]", expect, run)
    if "tmp" in holder:
        holder["tmp"].cleanup()
    holder.clear()  # free this variant's models before the next is built
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- context
def context_item(args: argparse.Namespace, device: torch.device, grid: tuple[int, int]) -> dict[str, Any]:
    ns = argparse.Namespace(
        context_sizes=[grid],
        channels=args.context_channels,
        batch=args.batch,
        max_naive_gib=0.0,  # naive only where its estimate fits in 40% of the free memory
        repeats=args.context_repeats,
        threads=0,
        inprocess=True,  # CUDA peak memory is exact in-process
    )
    row = bench_context(ns, device)[0]
    row["naive_estimate_bytes"] = NAIVE_BYTES_PER_ENTRY * args.batch * row["N"] ** 2
    row["flops"] = context_flops(args.batch, row["N"], args.context_channels)
    if "time_s" in row["chunked"]:
        row["chunked"]["tflops"] = row["flops"] / row["chunked"]["time_s"] / 1e12
    return row


def chunk_sweep(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The chunked context loss at the first grid with the automatic chunk, a 4x smaller and 4x, 16x larger
    ones: the numbers to tune the device's chunk size by (``CHUNK_ELEMENTS`` / ``auto_chunk_size``)."""
    (h, w), b, c = args.context_grids[0], args.batch, args.context_channels
    n, auto = h * w, auto_chunk_size(b, h * w, c, device)
    rows = {}
    for chunk in sorted({max(1, min(n, k * auto // 4)) for k in (1, 4, 16, 64)}):
        row = context_case(h, w, c, b, "chunked", str(device), args.context_repeats, chunk_size=chunk)
        rows[str(chunk)] = {**row, "tflops": context_flops(b, n, c) / row["time_s"] / 1e12}
    return {"grid": f"{h}x{w}", "N": n, "auto_chunk": auto, "chunks": rows}


# ---------------------------------------------------------------------------------------------- training
def teacher_checkpoint(out: Path) -> Path:
    """A randomly initialised embedded teacher (the check measures code paths, not accuracy)."""
    path = out / "train" / "random_teacher.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_model(compose(["experiment=embedded/bcd"]).teacher.model).state_dict(), path)
    return path


def train_command(args: argparse.Namespace, run: str, ckpt: Path, device: torch.device) -> list[str]:
    size, samples, steps = (64, 16, 4) if args.tiny else (384, 64, 32)
    cmd = [
        sys.executable, "-m", "bcd_lightning.train",
        "experiment=embedded/bcd",
        "trainer=gpu" if run == "gpu" else "trainer=ddp",
        f"teacher.ckpt={ckpt}",
        *(f"data.{s}_set.image_size={size}" for s in ("train", "val", "test")),
        f"data.train_set.num_samples={samples}", "data.val_set.num_samples=8", "data.test_set.num_samples=8",
        f"trainer.max_steps={steps}", "trainer.max_epochs=-1",
        "logger=csv", "print_config=false", "trainer.enable_progress_bar=false",
        f"hydra.run.dir={args.out / 'train' / run}",
    ]  # fmt: skip
    if run == "ddp":
        cmd.append("trainer.devices=1")
    if device.type == "cpu":  # the dry run: same configs, CPU accelerator (no SyncBN, gloo)
        cmd += ["trainer.accelerator=cpu", "threads=1"]
        cmd += ["trainer.sync_batchnorm=false"] if run == "ddp" else []
    return cmd


def train_item(report: Report, run: str, device: torch.device) -> dict[str, Any]:
    cmd = train_command(report.args, run, teacher_checkpoint(report.args.out), device)
    timeout = max(1.0, min(report.args.train_timeout, report.deadline.left() - 5))
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    if device.type == "cpu":  # Lightning's DDP launcher resets torch's threads unless OMP_NUM_THREADS is set
        env["OMP_NUM_THREADS"] = "1"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {
            "returncode": None,
            "error": f"timed out after {timeout:.0f} s",
            "command": " ".join(["bcd-train", *cmd[3:]]),
        }
    result: dict[str, Any] = {"returncode": done.returncode, "command": " ".join(["bcd-train", *cmd[3:]])}
    record = report.args.out / "train" / run / "metrics.json"
    if record.is_file():
        metrics = json.loads(record.read_text())["metrics"]
        keep = ("train/step_time_median_s", "val/mIoU_best", "batch/global_batch_size", "batch/world_size")
        result["metrics"] = {k: metrics[k] for k in keep if k in metrics}
    if done.returncode != 0:
        result["stderr_tail"] = done.stderr[-3000:]
    return result


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the dry run)")
    p.add_argument(
        "--tiny", action="store_true", help="tiny sizes, one timed step: a dry run of the code path"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="folder for gpu_check.json, gpu_check.md, train runs"
    )
    p.add_argument("--json", type=Path, default=None, help="the JSON file (default: OUT/gpu_check.json)")
    p.add_argument("--budget", type=float, default=330.0, help="seconds: the script stops itself after this")
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA only"
    )
    p.add_argument(
        "--skip", nargs="*", default=[], choices=["steps", "context", "train"], help="sections to skip"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: 1 on CPU, see bench_losses)"
    )
    p.add_argument("--train-timeout", type=float, default=150.0, help="seconds per training subprocess")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.out is None and args.json is None:
        p.error("give --out FOLDER or --json PATH")
    args.json = args.json or args.out / "gpu_check.json"
    args.out = args.out or args.json.parent
    args.markdown = args.json.with_suffix(".md")
    if args.compile is None:
        args.compile = args.device == "cuda"
    if args.tiny:
        args.size, args.batch, args.warmup, args.steps = (32, 64), 2, 0, 1
        args.context_grids, args.context_channels, args.context_repeats = [(8, 16), (16, 32)], 16, 1
        args.expect_setup = args.expect_step = args.expect_compile = args.expect_train = 0.0
    else:
        size = compose(PROTOCOL).data.train_set.transform.crop_size  # the protocol crop: 512x1024
        args.size, args.batch, args.warmup, args.steps = (int(size[0]), int(size[1])), PROTOCOL_BATCH, 2, 5
        args.context_grids, args.context_channels, args.context_repeats = [(64, 128), (128, 256)], 256, 3
        # Expected seconds per item on a recent GPU (what must be left to start it).
        args.expect_setup, args.expect_step, args.expect_compile, args.expect_train = 10.0, 8.0, 60.0, 45.0
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: no CUDA device visible (torch.cuda.is_available() is False); "
                         "for the CPU dry run use --device cpu --tiny")  # fmt: skip
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    report = Report(args, device)
    report.item(
        "check: context chunked == naive (fp32)", args.expect_setup, lambda: check_context(device, args.tiny)
    )
    if "steps" not in args.skip:
        measure_variant(report, device, channels_last=False, compiled=False, first=True)
        measure_variant(report, device, channels_last=True, compiled=False)
    if "context" not in args.skip:
        for grid in args.context_grids:
            report.item(
                f"context {grid[0]}x{grid[1]}", args.expect_step, lambda g=grid: context_item(args, device, g)
            )
        grid = "x".join(map(str, args.context_grids[0]))
        report.item(f"context chunk sweep {grid}", args.expect_step, lambda: chunk_sweep(args, device))
    if "train" not in args.skip:
        for run in ("gpu", "ddp"):
            report.item(f"train {run}", args.expect_train, lambda r=run: train_item(report, r, device))
    if "steps" not in args.skip and args.compile:
        for channels_last in (False, True):
            measure_variant(report, device, channels_last=channels_last, compiled=True)
    elif "steps" not in args.skip:
        skipped = {"skipped": "--no-compile (the default on CPU, where compiling takes minutes)"}
        report.item("compiled steps", 0.0, lambda: dict(skipped))
    report.data["ratios"] = ratios(report.data["items"])
    report.data["failed"] = report.failed()
    report.write()
    print(args.markdown.read_text())
    return report.data


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
