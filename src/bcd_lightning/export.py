"""``bcd-export``: the trained student alone, as TorchScript and (with the ``export`` extra) ONNX.

Only the student's weights (``model.*`` in the checkpoint) are loaded: the teacher is never in a
student checkpoint and distillation adapters (``distill_losses.*``) are dropped, so the exported
network is the plain segmentation_models_pytorch model of the student's architecture and costs
exactly what it costs. It takes a normalised ``[B, 3, H, W]`` image (H, W multiples of the encoder's
output stride) and returns the logits ``[B, K, H, W]``.

    bcd-export logs/embedded_bcd/runs/<run>/checkpoints/best.ckpt            # -> <run>/export/
    bcd-export CKPT --out deploy/ --size 512 1024 --no-onnx
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from bcd_lightning.evaluation import load_run_checkpoint
from bcd_lightning.models import SegModel
from bcd_lightning.models.seg_model import count_parameters
from bcd_lightning.models.teacher import load_weights_strict
from bcd_lightning.utils.atomic import atomic_write_from_temp, atomic_write_text
from bcd_lightning.utils.config_check import ConfigError
from bcd_lightning.utils.errors import StorageError, friendly_errors


class LogitsOnly(nn.Module):
    """The smp network of a :class:`SegModel`, returning logits only (what a deployment needs)."""

    def __init__(self, model: SegModel, resize: bool = False) -> None:
        super().__init__()
        self.net = model.net  # the plain smp model: no other parameter or buffer
        self.resize = resize  # decided once (see export_student), so the traced graph has no branch

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        if self.resize:  # as SegModel.forward: logits at the input size
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def load_student(ckpt_path: str | Path) -> tuple[SegModel, dict[str, Any]]:
    """The student of a ``bcd-train`` checkpoint (strictly loaded, eval mode) and the run config."""
    from bcd_lightning.builders import build_model

    state, config = load_run_checkpoint(ckpt_path)
    if "student" not in config:
        raise ConfigError(
            f"{ckpt_path} has no run config (hyper_parameters.config.student): export needs a checkpoint "
            "written by bcd-train."
        )
    model = build_model(DictConfig(config["student"]))
    load_weights_strict(model, state, f"Checkpoint {ckpt_path}", "Was it written by bcd-train?")
    return model.eval(), config


def default_size(config: dict[str, Any], stride: int) -> tuple[int, int]:
    """The training crop / image size of the run, rounded up to the output stride (256 if unknown)."""
    data = config.get("data") or {}
    for split in ("val_set", "train_set"):
        node = data.get(split) or {}
        for key in ("image_size", "crop_size"):
            value = node.get(key) or (node.get("transform") or {}).get(key)
            if value is not None:
                h, w = (value, value) if isinstance(value, int) else value
                return -(-int(h) // stride) * stride, -(-int(w) // stride) * stride
    return 256, 256


def export_student(
    ckpt_path: str | Path,
    out_dir: str | Path | None = None,
    size: Sequence[int] | None = None,
    onnx: bool | None = None,
    opset: int = 18,
) -> dict[str, Any]:
    """Write ``student.pt`` (TorchScript), ``student.onnx`` (when onnx is importable and not disabled)
    and ``export.json``; returns the summary written to ``export.json``."""
    ckpt_path = Path(ckpt_path)
    model, config = load_student(ckpt_path)
    out = Path(out_dir) if out_dir else ckpt_path.resolve().parent.parent / "export"
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise StorageError(
            f"--out {out}: {blocking} is a file, not a folder. Give a folder (created if missing)."
        )
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ConfigError(f"--size {' '.join(map(str, size))}: height and width must be positive integers.")
    h, w = tuple(size) if size else default_size(config, model.output_stride)
    example = torch.randn(1, 3, h, w)
    model.check_input(example)  # one clear line for a size the encoder cannot take
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _export(model, config, ckpt_path, out, example, onnx, opset)
    except BaseException:
        if created:  # a failed export leaves no (empty or partial) output folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _export(
    model: SegModel,
    config: dict[str, Any],
    ckpt_path: Path,
    out: Path,
    example: Tensor,
    onnx: bool | None,
    opset: int,
) -> dict[str, Any]:
    h, w = example.shape[-2:]
    with torch.no_grad():
        resize = model.net(example).shape[-2:] != example.shape[-2:]
        student = LogitsOnly(model, resize=resize).eval()
        reference = student(example)
        traced = cast(torch.jit.ScriptModule, torch.jit.trace(student, example, check_trace=False))
    _atomic_save_script(traced, out / "student.pt")
    summary: dict[str, Any] = {
        "checkpoint": str(ckpt_path),
        "arch": model.arch,
        "encoder_name": model.encoder_name,
        "num_classes": model.num_classes,
        "class_names": (config.get("data") or {}).get("class_names"),
        "input": f"float32 [B, 3, H, W], ImageNet-normalised, H and W multiples of {model.output_stride}",
        "output": "logits [B, num_classes, H, W]",
        "output_stride": model.output_stride,
        "example_size": [int(h), int(w)],
        "parameters": count_parameters(student),
        "torchscript": str(out / "student.pt"),
    }
    want_onnx = _onnx_available() if onnx is None else onnx
    if want_onnx:
        summary["onnx"] = str(out / "student.onnx")
        summary["onnx_max_abs_diff"] = export_onnx(student, example, reference, out / "student.onnx", opset)
    atomic_write_text(out / "export.json", json.dumps(summary, indent=2))
    return summary


def export_onnx(student: nn.Module, example: Tensor, reference: Tensor, path: Path, opset: int) -> float:
    """ONNX export (batch size dynamic), checked with onnxruntime; returns the max abs difference."""
    if not _onnx_available():
        raise ConfigError("ONNX export needs the export extra: pip install 'bcd_lightning[export]'.")
    import onnx
    import onnxruntime

    diffs: list[float] = []

    def produce(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(
                student,
                (example,),
                str(tmp),
                input_names=["image"],
                output_names=["logits"],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )
        onnx.checker.check_model(str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"image": example.numpy()})
        diffs.append(float((torch.from_numpy(got) - reference).abs().max()))
        if diffs[0] > 1e-4:  # raised before the file is moved into place: nothing is written
            raise RuntimeError(
                f"ONNX output differs from the student by {diffs[0]:.2e} (> 1e-4): not written."
            )

    atomic_write_from_temp(path, produce)
    return diffs[0]


def _onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _atomic_save_script(module: torch.jit.ScriptModule, path: Path) -> None:
    atomic_write_from_temp(path, lambda tmp: torch.jit.save(module, str(tmp)))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bcd-export",
        description="Export the student of a bcd-train checkpoint (no teacher, no adapters): TorchScript "
        "student.pt and, with the export extra, ONNX student.onnx; both return logits.",
    )
    parser.add_argument("ckpt_path", help="a bcd-train checkpoint (best.ckpt / last.ckpt)")
    parser.add_argument("--out", default=None, help="output folder (default: <run dir>/export)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="example input size")
    parser.add_argument("--no-onnx", action="store_true", help="TorchScript only")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    return parser.parse_args(argv)


@friendly_errors
def run(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    summary = export_student(args.ckpt_path, args.out, args.size, onnx=False if args.no_onnx else None)
    print(f"Student ({summary['arch']}/{summary['encoder_name']}, {summary['parameters']:,} parameters):")
    for key in ("torchscript", "onnx"):
        if key in summary:
            print(f"  {key}: {summary[key]}")


def main() -> None:
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
