"""The tables of scripts/gpu_check.py: its JSON results rendered as markdown (gpu_check.md), and the
ratios derived from them. Pure functions of the results, no measurement here."""

from __future__ import annotations

from typing import Any

PRECISIONS = ("fp32", "bf16-mixed")
STEPS = ("student step", "teacher forward", "kd step", "bcd step")
CACHED = "cached bcd step"  # teacher outputs from the teacher-output cache (first variant only)


def summary(result: dict[str, Any]) -> str:
    for key in ("skipped", "error"):
        if key in result:
            return f"{key}: {result[key]}"
    if "passed" in result:
        return "passed" if result["passed"] else "FAILED"
    if "ms" in result:
        return f"{result['ms']:,.1f} ms"
    if "returncode" in result:
        return f"exit {result['returncode']}"
    return "done"


def ratios(items: dict[str, dict[str, Any]]) -> dict[str, float]:
    """bcd / (student + teacher) per precision and variant; cached bcd / student; teacher bf16 / fp32."""
    ms = {name: r["ms"] for name, r in items.items() if isinstance(r.get("ms"), float)}
    out = {}
    for name, bcd in ms.items():
        if not name.startswith("bcd step ["):
            continue
        tag = name.removeprefix("bcd step ")
        teacher = ms.get("teacher forward " + tag.replace(", compiled", ""))
        student = ms.get("student step " + tag)
        if teacher and student:
            out[f"bcd / (student + teacher) {tag}"] = bcd / (student + teacher)
        if student and f"{CACHED} {tag}" in ms:
            out[f"cached bcd / student {tag}"] = ms[f"{CACHED} {tag}"] / student
    for layout in ("contiguous", "channels_last"):
        fp32, bf16 = (ms.get(f"teacher forward [{p}, {layout}]") for p in PRECISIONS)
        if fp32 and bf16:
            out[f"teacher bf16 / fp32 [{layout}]"] = bf16 / fp32
    return out


def _ms(r: dict[str, Any]) -> str:
    return "skipped" if "skipped" in r else "error" if "error" in r else f"{r['ms']:,.1f} ms"


def _bytes(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _md_checks(items: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| check | measured | tolerance | result |", "|---|---|---|---|"]
    for name, r in items.items():
        if not name.startswith("check:"):
            continue
        measured = tol = ""
        if "cases" in r:
            worst = {k: max(c[k] for c in r["cases"].values()) for k in ("value_rel_err", "grad_rel_err")}
            measured = f"value {worst['value_rel_err']:.1e}, gradient {worst['grad_rel_err']:.1e} (relative)"
            tol = f"{r['tolerance']['value']:.0e}, {r['tolerance']['grad']:.0e}"
        elif "kd_rel_err" in r:
            measured = f"logits {r['logits_rel_err']:.4f}, boundary {r['boundary_abs_err']:.4f}, KD {r['kd_rel_err']:.4f}"
            tol = ", ".join(str(v) for v in r["tolerance"].values())
        result = summary(r) if "passed" not in r else ("pass" if r["passed"] else "**FAIL**")
        lines.append(f"| {name.removeprefix('check: ')} | {measured} | {tol} | {result} |")
    return lines


def _md_steps(items: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    (h, w), b = meta["size"], meta["batch"]
    lines = [
        f"Distillation step, DeepLabV3-R101 → DeepLabV3-R18, {h}×{w}, batch {b}, median of the timed steps; "
        "peak memory above the resident models (delta) and in all (total, CUDA). Teacher forward: all outputs; "
        "its bf16-mixed row is `teacher.precision=bf16`.",
        "",
        "| step | precision, layout | time | images/s | peak memory (delta / total) |",
        "|---|---|---|---|---|",
    ]
    for name, r in items.items():
        step, _, tag = name.partition(" [")
        if step not in (*STEPS, CACHED):
            continue
        ips = f"{r['images_per_s']:,.1f}" if "images_per_s" in r else ""
        mem = f"{_bytes(r.get('peak'))} / {_bytes(r.get('peak_total'))}" if "ms" in r else ""
        first = f" (first call {r['first_call_s']:.0f} s)" if "first_call_s" in r else ""
        lines.append(f"| {step} | {tag.rstrip(']')} | {_ms(r)}{first} | {ips} | {mem} |")
    return [*lines, "", *(f"- {k}: **{v:.2f}**" for k, v in ratios(items).items())]


def _md_context(items: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "Context loss, forward + backward, best of repeats; TFLOP/s of chunked against 8·B·N²·C matmul FLOPs:",
        "",
        "| grid | N | chunked time | chunked peak | TFLOP/s | naive time | naive peak | naive estimate |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(x: dict[str, Any], key: str) -> str:
        if "skipped" in x or "error" in x:
            return "skipped" if "skipped" in x else "error"
        return f"{x['time_s'] * 1e3:,.1f} ms" if key == "time" else _bytes(x["peak_bytes"])

    for name, r in items.items():
        if name.startswith("context ") and "chunked" in r:
            c, n = r["chunked"], r["naive"]
            tf = f"{c['tflops']:.2f}" if "tflops" in c else ""
            lines.append(
                f"| {r['grid']} | {r['N']} | {cell(c, 'time')} | {cell(c, 'mem')} | {tf} | {cell(n, 'time')} | "
                f"{cell(n, 'mem')} | {_bytes(r['naive_estimate_bytes'])} |"
            )
    for name, r in items.items():
        if name.startswith("context chunk sweep") and "chunks" in r:
            cells = [
                f"{k} rows{' (auto)' if int(k) == r['auto_chunk'] else ''}: {v['time_s'] * 1e3:,.1f} ms, "
                f"{_bytes(v['peak_bytes'])}, {v['tflops']:.2f} TFLOP/s"
                for k, v in r["chunks"].items()
            ]
            lines += [
                "",
                f"Chunk size at {r['grid']} (rows per chunk: time, peak, TFLOP/s): " + "; ".join(cells),
            ]
    return lines


def _md_train(items: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| training run | exit | wall | median step | command |", "|---|---|---|---|---|"]
    for name, r in items.items():
        if name.startswith("train ") and "returncode" in r:
            step = r.get("metrics", {}).get("train/step_time_median_s")
            med = f"{step * 1e3:,.1f} ms" if step else ""
            lines.append(f"| {name} | {r['returncode']} | {r['wall_s']} s | {med} | `{r['command']}` |")
    return lines


def _md_notes(items: dict[str, dict[str, Any]]) -> list[str]:
    notes = [f"- {k}: {summary(r)}" for k, r in items.items() if "skipped" in r or "error" in r]
    for name, r in items.items():
        for impl in ("chunked", "naive"):
            for key in ("skipped", "error"):
                if key in r.get(impl, {}):
                    notes.append(f"- {name}, {impl}: {key}: {r[impl][key]}")
    return ["Skipped or failed:", *notes] if notes else ["Nothing skipped."]


def markdown(data: dict[str, Any]) -> str:
    m, items = data["meta"], data["items"]
    head = [
        f"GPU check ({m['date_utc']} UTC): {m['device']}, torch {m['torch']}, CUDA {m['cuda']}; "
        f"{m['wall_s']} s of a {m['budget_s']:.0f} s budget{' (--tiny dry run)' if m['tiny'] else ''}. "
        f"Command: `{m['command']}`. Peak memory: {m['memory']}. "
        f"TF32: matmul {m['tf32_matmul']}, cuDNN {m['tf32_cudnn']}.",
    ]
    parts = [
        head,
        _md_checks(items),
        _md_steps(items, m),
        _md_context(items),
        _md_train(items),
        _md_notes(items),
    ]
    return "\n\n".join("\n".join(part) for part in parts) + "\n"
