"""Benchmark one training step: student alone, teacher forward, and distillation with and without the
teacher-output cache, for every preset in conf/distill.

Usage::

    .venv/bin/python scripts/bench_step.py                    # full run: 256x256, batch 8
    .venv/bin/python scripts/bench_step.py --write-doc        # ... and put the table in docs/performance.md
    .venv/bin/python scripts/bench_step.py --quick            # tiny smoke run (seconds)

A step is forward + cross-entropy (+ distillation losses) + backward + SGD update of the student. Times
are the median of ``--steps`` steps after ``--warmup`` steps. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation before the step; on CPU the process's peak
resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) minus its resident size before the
step (an upper bound on tensor memory; tracemalloc does not see torch's allocations). Every ratio comes
from this one invocation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bcd_lightning.builders import build_model, distill_terms
from bcd_lightning.data import SyntheticSegmentation
from bcd_lightning.data.datamodule import WithIndex
from bcd_lightning.distill.base import teacher_fields
from bcd_lightning.models import FrozenTeacher, SegOutput
from bcd_lightning.teacher_cache import TeacherCache, TeacherCacheConfig
from bench_losses import PeakMemory, memory_method

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench_step:begin -->", "<!-- bench_step:end -->"


def compose(overrides: Sequence[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("bcd_lightning.conf", version_base="1.3"):
        return hydra_compose("train", overrides=["paths.output_dir=unused", *overrides])


def presets() -> list[str]:
    """Every distillation preset in conf/distill except ``none``: kd and bcd first, then the rest."""
    names = sorted(
        p.stem
        for p in (ROOT / "src" / "bcd_lightning" / "conf" / "distill").glob("*.yaml")
        if p.stem != "none"
    )
    return [n for n in ("kd", "bcd") if n in names] + [n for n in names if n not in ("kd", "bcd")]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """Median time (ms) over ``steps`` calls after ``warmup`` calls; peak memory of one more call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    with PeakMemory(device) as mem:
        fn()
    return {"ms": statistics.median(times), "peak": mem.peak}


class _Progress(dict):
    """The result rows; each is echoed to stderr as it lands (a full CPU run takes minutes)."""

    def __setitem__(self, name: str, row: dict[str, Any]) -> None:
        super().__setitem__(name, row)
        print(f"  {name}: {row.get('ms') or 0:,.1f} ms", file=sys.stderr, flush=True)


class Bench:
    """The models, data and cached teacher outputs shared by every measurement of one run."""

    #: Context of the forward pass and losses (not the backward), as Lightning's ``*-mixed`` precisions.
    autocast: Callable[[], AbstractContextManager] = nullcontext

    def __init__(
        self, args: argparse.Namespace, device: torch.device, overrides: Sequence[str] | None = None
    ) -> None:
        """``overrides``: the config composed for the models (default: the default models)."""
        self.args, self.device = args, device
        cfg = compose([f"data.train_set.image_size={args.size}"] if overrides is None else overrides)
        torch.manual_seed(0)
        self.student = build_model(cfg.student)
        self.teacher = FrozenTeacher(build_model(cfg.teacher.model), precision=args.teacher_precision)
        if args.channels_last:
            for m in (self.student, self.teacher.model):
                m.channels_last = True
                m.to(memory_format=torch.channels_last)
        self.student.to(device).train()
        self.teacher.to(device)
        self.opt = torch.optim.SGD(self.student.parameters(), lr=1e-4, momentum=0.9)
        self.data = SyntheticSegmentation(num_samples=args.samples, image_size=args.size, seed=1000)
        loader = DataLoader(WithIndex(self.data), batch_size=args.batch, shuffle=False)
        batch = next(iter(loader))
        self.image = batch["image"].to(device)
        self.mask = batch["mask"].to(device)
        self.index = batch["index"]

    def student_step(self, terms: dict | None = None, teacher: Callable[[], SegOutput] | None = None) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.student(self.image)
            loss = F.cross_entropy(out.logits, self.mask, ignore_index=255)
            if terms:
                t_out = teacher()
                for term in terms.values():
                    loss = loss + term.weight * term.loss(out, t_out, self.mask, 255)
        loss.backward()
        self.opt.step()

    def teacher_forward(self, precision: str) -> None:
        self.teacher.precision = precision
        try:
            self.teacher(self.image)
        finally:
            self.teacher.precision = self.args.teacher_precision

    def cache_for(self, terms: dict, root: Path) -> TeacherCache:
        cache = TeacherCache(TeacherCacheConfig(enabled=True, dir=str(root)))
        losses = {name: t.loss for name, t in terms.items()}
        cache.prepare(
            self.teacher, self.student, losses, self.data, self.args.batch, self.device, log=lambda _: None
        )
        return cache


def data_times(args: argparse.Namespace) -> dict[str, float]:
    """ms per batch of the embedded training set: first epoch (rendering) and later epochs (cached)."""
    data = SyntheticSegmentation(num_samples=args.batch * args.data_batches, image_size=args.size, seed=7)
    loader = DataLoader(WithIndex(data), batch_size=args.batch, shuffle=True, num_workers=0)
    out = {}
    for label in ("render", "cached"):
        t0 = time.perf_counter()
        n = sum(1 for _ in loader)
        out[label] = (time.perf_counter() - t0) * 1e3 / n
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    b = Bench(args, device)
    m = lambda fn: measure(fn, device, args.warmup, args.steps)  # noqa: E731
    rows: dict[str, dict[str, Any]] = _Progress()
    rows["student step"] = m(b.student_step)
    if args.compile:
        compiled = Bench(args, device)
        compiled.student.compile()  # in place: state_dict keys unchanged
        try:
            rows["student step (compiled)"] = m(compiled.student_step)
        except Exception as err:  # no C++ compiler, unsupported op, ...
            rows["student step (compiled)"] = {
                "ms": None,
                "peak": None,
                "note": f"failed: {type(err).__name__}",
            }
    rows["teacher forward (all outputs)"] = m(lambda: b.teacher_forward(args.teacher_precision))
    # bf16 autocast on a CPU without native bf16 (AVX2) is ~30x slower: time it where it helps.
    if args.teacher_precision != "bf16" and (device.type == "cuda" or args.bf16_row):
        rows["teacher forward (bf16 autocast)"] = m(lambda: b.teacher_forward("bf16"))
    base = rows["student step"]["ms"] + rows["teacher forward (all outputs)"]["ms"]
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets or presets():
            terms = distill_terms(compose([f"distill={preset}"]))
            fields = frozenset().union(*(teacher_fields(t.loss) for t in terms.values()))
            row = m(lambda t=terms, f=fields: b.student_step(t, lambda: b.teacher(b.image, outputs=f)))
            row["ratio"] = row["ms"] / base
            row["fields"] = sorted(fields)
            rows[f"distill {preset}"] = row
            cache = b.cache_for(terms, Path(tmp) / preset)
            row = m(lambda t=terms, c=cache: b.student_step(t, lambda: c.lookup(b.index, device)))
            row["ratio_student"] = row["ms"] / rows["student step"]["ms"]
            rows[f"distill {preset} (cached)"] = row
    # The first measurement pays for allocator and cache warm-up the later ones do not: time the student
    # step again last and divide by the faster of the two (the conservative ratio).
    rows["student step (again, last)"] = m(b.student_step)
    student = min(rows["student step"]["ms"], rows["student step (again, last)"]["ms"])
    base = student + rows["teacher forward (all outputs)"]["ms"]
    for name, row in rows.items():
        if name.startswith("distill"):
            row.update({"ratio": row["ms"] / base} if "(cached)" not in name else {})
            row.update({"ratio_student": row["ms"] / student} if "(cached)" in name else {})
    return {"rows": rows, "data": data_times(args), "device": device, "base": base, "student": student}


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.1f} ms"


def _mib(v: int | None) -> str:
    return "–" if v is None else f"{v / 2**20:,.1f} MiB"


def table(res: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    rows, device = res["rows"], res["device"]
    student = res["student"]  # the faster of the two student-step measurements (see run)
    lines = [
        f"Command: `{command}`",
        "",
        f"Device: {device.type}{'' if device.type != 'cuda' else ' (' + torch.cuda.get_device_name(device) + ')'}"
        f", torch {torch.__version__}, {torch.get_num_threads()} threads; input {args.size}x{args.size}, batch "
        f"{args.batch}; teacher precision {args.teacher_precision}; channels_last {args.channels_last}; "
        f"median of {args.steps} steps after {args.warmup} warm-up steps. Peak memory: {memory_method(device, True)}.",
        "",
        "| step | time | peak memory | distill / (student + teacher) | cached / student | teacher fields |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        cached = f"{r['ratio_student']:.2f}" if "ratio_student" in r else ""
        fields = ", ".join(r.get("fields", [])) or r.get("note", "")
        lines.append(f"| {name} | {_ms(r['ms'])} | {_mib(r['peak'])} | {ratio} | {cached} | {fields} |")
    d = res["data"]
    lines += [
        "",
        f"Student step (faster of first and last measurement) + teacher forward = {res['base']:,.1f} ms. Data loading (embedded dataset, main process, "
        f"batch {args.batch}): {d['render']:,.1f} ms/batch while rendering (first epoch, "
        f"{100 * d['render'] / student:.1f}% of the student step), {d['cached']:,.2f} ms/batch from the in-memory "
        f"sample cache (later epochs, {100 * d['cached'] / student:.2f}%).",
    ]
    if "distill bcd" in rows:
        lines += [
            "",
            f"Targets: bcd step ≤ 1.10 × (student + teacher): **{rows['distill bcd']['ratio']:.2f}**; cached bcd "
            f"step ≤ 1.15 × student step: **{rows['distill bcd (cached)']['ratio_student']:.2f}**; data ≤ 10% of the "
            f"step: **{100 * d['cached'] / student:.1f}%** (cached samples), {100 * d['render'] / student:.1f}% "
            "(first epoch).",
        ]
    return "\n".join(lines)


def write_doc(text: str, path: Path = DOC) -> None:
    from bcd_lightning.utils.run_dir import atomic_write_text

    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to replace")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(path, f"{head}{BEGIN}\n{text}\n{END}{tail}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument(
        "--quick", action="store_true", help="tiny smoke run: 64x64, batch 2, 1+2 steps, kd and bcd"
    )
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--samples", type=int, default=32, help="training samples behind the cache")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--data-batches", type=int, default=8, help="batches timed for data loading")
    p.add_argument("--presets", nargs="*", default=None, help="default: every conf/distill preset but none")
    p.add_argument("--teacher-precision", default="32", choices=["32", "bf16", "16"])
    p.add_argument("--channels-last", action="store_true", help="both models in channels_last")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time a compiled student (default: on, off with --quick)",
    )
    p.add_argument("--bf16-row", action="store_true", help="also time a bf16 teacher on the CPU (slow)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--write-doc", action="store_true", help=f"replace the table in {DOC.relative_to(ROOT)}")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.samples, args.steps, args.warmup, args.data_batches = 64, 2, 4, 2, 1, 2
        args.presets = args.presets or [n for n in ("kd", "bcd") if n in presets()]
    if args.compile is None:
        args.compile = not args.quick
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = "python scripts/bench_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res = run(args)
    text = table(res, args, command.strip())
    print(text)
    if args.write_doc:
        write_doc(text)
        print(f"\nWrote the table into {DOC}")
    return res


if __name__ == "__main__":
    main()
