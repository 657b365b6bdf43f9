"""Benchmark the BCD losses: chunked vs naive context loss (memory, time) and BCD cost per training step.

Usage::

    .venv/bin/python scripts/bench_losses.py               # full run (CPU, or CUDA when available)
    .venv/bin/python scripts/bench_losses.py --device cpu --json bench.json
    .venv/bin/python scripts/bench_losses.py --quick       # tiny smoke run (seconds)

Peak memory, stated with every table:
- CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the measured call.
- CPU: the process's peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) minus
  its resident size before the call. Each context measurement runs in a fresh subprocess so memory freed
  by an earlier measurement cannot be reused unseen. ``--quick`` measures in-process (smoke test only).

Timings are forward + backward, the best of ``--repeats`` runs after one warm-up run (which is also the
memory run). All ratios in a table come from the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

NAIVE_BYTES_PER_ENTRY = 5 * 4  # naive peak ≈ 5 fp32 [B, N, N] buffers (calibrated on the 64x128 case)


# ---------------------------------------------------------------------------------------------- memory
def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            match = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak extra memory of the code run inside the ``with`` block, in bytes (``None`` if unmeasurable)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._ok = _reset_peak_rss()
            self._base = _proc_status_kib("VmRSS") or 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._ok:
            hwm = _proc_status_kib("VmHWM")
            self.peak = None if hwm is None else max(0, hwm - self._base) * 1024


def memory_method(device: torch.device, inprocess: bool) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated delta"
    where = "in-process" if inprocess else "fresh subprocess per measurement"
    return f"peak RSS delta (VmHWM via /proc/self/clear_refs, {where})"


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


# ---------------------------------------------------------------------------------------------- context
def context_case(
    h: int,
    w: int,
    channels: int,
    batch: int,
    impl: str,
    device: str,
    repeats: int,
    seed: int = 0,
    threads: int = 0,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """One chunked or naive context-loss measurement (forward + backward) in this process; ``chunk_size``
    rows per chunk of the chunked one (``None``: automatic)."""
    from bcd_lightning.distill.functional import self_relation_kl, self_relation_kl_naive

    if threads:
        torch.set_num_threads(threads)

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, channels, h, w, generator=gen).to(dev).requires_grad_(True)
    t = torch.randn(batch, channels, h, w, generator=gen).to(dev)
    fn = self_relation_kl if impl == "chunked" else self_relation_kl_naive
    kwargs = {"chunk_size": chunk_size} if impl == "chunked" else {}

    def step() -> None:
        s.grad = None
        fn(s, t, 1.0, **kwargs).backward()

    with PeakMemory(dev) as mem:
        step()  # also the warm-up
    return {"peak_bytes": mem.peak, "time_s": best_time(step, dev, repeats)}


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`context_case` in a fresh interpreter and return its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["worker failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    kib = None
    try:
        with open("/proc/meminfo") as fh:
            match = re.search(r"^MemAvailable:\s+(\d+) kB", fh.read(), re.MULTILINE)
            kib = int(match.group(1)) if match else None
    except OSError:
        pass
    return (kib or 8 * 2**20) * 1024


def bench_context(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    limit = args.max_naive_gib * 2**30 if args.max_naive_gib else 0.4 * _available_bytes(device)
    rows = []
    for h, w in args.context_sizes:
        n = h * w
        row: dict[str, Any] = {"grid": f"{h}x{w}", "N": n, "C": args.channels, "B": args.batch}
        for impl in ("chunked", "naive"):
            est = NAIVE_BYTES_PER_ENTRY * args.batch * n * n
            if impl == "naive" and est > limit:
                row[impl] = {"skipped": f"est. {est / 2**30:.1f} GiB > limit {limit / 2**30:.1f} GiB"}
                continue
            spec = {
                "h": h,
                "w": w,
                "channels": args.channels,
                "batch": args.batch,
                "impl": impl,
                "device": str(device),
                "repeats": args.repeats,
                "threads": args.threads,
            }
            row[impl] = context_case(**spec) if args.inprocess else _run_worker(spec)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- BCD cost
def _preset_terms(context_stride: int | None) -> dict[str, tuple[torch.nn.Module, float]]:
    """The terms of the composed ``distill=bcd`` preset (it composes kd/boundary/context by defaults)."""
    from hydra import compose, initialize_config_module

    from bcd_lightning.builders import distill_terms

    overrides = ["distill=bcd", "paths.output_dir=unused"]
    if context_stride is not None:
        overrides.append(f"distill.losses.context.loss.stride={context_stride}")
    with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return {name: (term.loss, term.weight) for name, term in distill_terms(cfg).items()}


def bench_bcd(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from bcd_lightning.models import SegModel
    from bcd_lightning.models.outputs import SegOutput

    torch.manual_seed(0)
    teacher = SegModel(arch="Unet", encoder_name="resnet18", num_classes=4).to(device).eval()
    teacher.requires_grad_(False)
    student = SegModel(
        arch="Unet",
        encoder_name="tu-mobilenetv3_small_050",
        num_classes=4,
        decoder_channels=[64, 32, 16, 16, 16],
    ).to(device)
    student.train()
    b, size = args.bcd_batch, args.bcd_size
    x = torch.randn(b, 3, size, size, device=device)
    y = torch.randint(0, 4, (b, size, size), device=device)
    y[:, :8] = 255  # some ignored pixels, as in real data

    def distill_step() -> None:
        with torch.no_grad():
            teacher(x)
        F.cross_entropy(student(x).logits, y, ignore_index=255).backward()
        student.zero_grad(set_to_none=True)

    distill_step()  # warm-up
    step_s = best_time(distill_step, device, args.repeats)

    with torch.no_grad():
        t_out = teacher(x)
        s_ref = student(x)

    def leaves() -> SegOutput:
        # Detached leaves isolate the losses' own forward + backward from the student network's backward.
        return SegOutput(
            logits=s_ref.logits.detach().requires_grad_(True),
            stages=tuple(f.detach().requires_grad_(True) for f in s_ref.stages),
            decoder=s_ref.decoder.detach().requires_grad_(True),
        )

    def loss_time(terms: dict[str, tuple[torch.nn.Module, float]]) -> tuple[float, float]:
        values: list[float] = []

        def run() -> None:
            out = leaves()
            total = sum(w * loss(out, t_out, y) for loss, w in terms.values())
            total.backward()
            values.append(float(total.detach()))

        run()
        return best_time(run, device, args.repeats), values[-1]

    rows = []
    default = _preset_terms(None)
    for name, term in default.items():
        sec, value = loss_time({name: term})
        rows.append({"what": f"{name} (weighted value {value:.4f})", "time_s": sec, "fraction": sec / step_s})
    for stride in args.bcd_strides:
        terms = _preset_terms(stride)
        sec, _ = loss_time(terms)
        label = (
            "all BCD terms, default (context stride 8)"
            if stride == 8
            else f"all BCD terms, context stride {stride}"
        )
        rows.append({"what": label, "time_s": sec, "fraction": sec / step_s})
    return {"step_s": step_s, "batch": b, "size": size, "rows": rows}


# ---------------------------------------------------------------------------------------------- output
def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _cell(result: dict[str, Any], key: str) -> str:
    if "skipped" in result:
        return "skipped"
    if "error" in result:
        return "error"
    return _fmt_bytes(result["peak_bytes"]) if key == "mem" else f"{result['time_s'] * 1e3:,.1f} ms"


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str]
) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col in header:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console = Console(width=140)
        console.print(table)
        for note in notes:
            console.print(note, markup=False)
    except ImportError:
        print(title)
        print(" | ".join(header))
        for row in rows:
            print(" | ".join(row))
        for note in notes:
            print(note)


def report_context(rows: list[dict[str, Any]], method: str, device: torch.device) -> None:
    table = []
    notes = [
        f"peak memory: {method}; device: {device}, {torch.get_num_threads()} CPU threads; "
        "forward+backward, best of repeats"
    ]
    for r in rows:
        c, nv = r["chunked"], r["naive"]
        mem_ratio = time_ratio = "-"
        if c.get("peak_bytes") is not None and nv.get("peak_bytes"):  # a 0 or missing peak: no ratio
            mem_ratio = f"{c['peak_bytes'] / nv['peak_bytes']:.3f}"
        if "time_s" in c and "time_s" in nv:
            time_ratio = f"{c['time_s'] / nv['time_s']:.2f}"
        table.append(
            [
                r["grid"],
                str(r["N"]),
                _cell(c, "mem"),
                _cell(nv, "mem"),
                mem_ratio,
                _cell(c, "time"),
                _cell(nv, "time"),
                time_ratio,
            ]
        )
        for impl in ("chunked", "naive"):
            for key in ("skipped", "error"):
                if key in r[impl]:
                    notes.append(f"{r['grid']} {impl} {key}: {r[impl][key]}")
    notes.append("targets at 64x128: memory chunked/naive <= 0.125, time chunked/naive <= 1.2")
    header = [
        "grid",
        "N",
        "chunked mem",
        "naive mem",
        "mem ratio",
        "chunked time",
        "naive time",
        "time ratio",
    ]
    b, c = rows[0]["B"], rows[0]["C"]
    print_table(f"Context loss (self_relation_kl), B={b}, C={c}", header, table, notes)


def report_bcd(res: dict[str, Any], device: torch.device) -> None:
    table = [[r["what"], f"{r['time_s'] * 1e3:,.1f} ms", f"{100 * r['fraction']:.1f} %"] for r in res["rows"]]
    notes = [
        f"distillation step (student fwd+bwd + teacher fwd, no losses): {res['step_s'] * 1e3:,.1f} ms; "
        f"device: {device}, {torch.get_num_threads()} CPU threads; loss times are their own forward+backward "
        "on detached student outputs",
        "target: all BCD terms at default settings <= 10 % of the step",
    ]
    title = f"BCD loss cost, {res['size']}x{res['size']}, batch {res['batch']}, Unet-R18 -> Unet-MNv3s-0.5"
    print_table(title, ["losses", "time", "% of step"], table, notes)


# ---------------------------------------------------------------------------------------------- CLI
def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        h, _, w = item.strip().lower().partition("x")
        out.append((int(h), int(w or h)))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--quick", action="store_true", help="tiny smoke run, in-process")
    p.add_argument("--context-sizes", type=_sizes, default=_sizes("64x128,32x32,64x64,128x128"))
    p.add_argument("--channels", type=int, default=256, help="context benchmark feature channels")
    p.add_argument("--batch", type=int, default=2, help="context benchmark batch")
    p.add_argument("--max-naive-gib", type=float, default=0.0, help="skip naive above this (0: 40%% of free)")
    p.add_argument("--bcd-size", type=int, default=256)
    p.add_argument("--bcd-batch", type=int, default=8)
    p.add_argument("--bcd-strides", type=int, nargs="+", default=[8, 4, 2], help="context strides to cost")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default). Use 1 on a shared machine: with busy cores, OpenMP "
        "threads spin-wait for each other and small ops take 10-40x longer, which makes timings meaningless",
    )
    p.add_argument("--skip-context", action="store_true")
    p.add_argument("--skip-bcd", action="store_true")
    p.add_argument("--inprocess", action="store_true", help="measure context memory in this process")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.context_sizes, args.channels, args.batch = [(8, 8), (16, 16)], 16, 2
        args.bcd_size, args.bcd_batch, args.repeats, args.inprocess = 64, 2, 1, True
        args.threads = args.threads or 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)  # main() also runs in-process (tests)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker is not None:
        print(json.dumps(context_case(**json.loads(args.worker))))
        return {}
    want = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if want == "auto" else want)
    results: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "memory_method": memory_method(device, args.inprocess),
    }
    if not args.skip_context:
        results["context"] = bench_context(args, device)
        report_context(results["context"], results["memory_method"], device)
    if not args.skip_bcd:
        results["bcd"] = bench_bcd(args, device)
        report_bcd(results["bcd"], device)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
