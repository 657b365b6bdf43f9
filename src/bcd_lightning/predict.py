"""``bcd-predict``: run a trained student on new images and write its masks.

The model is a ``bcd-train`` checkpoint (``best.ckpt``, ``last.ckpt``: the student is rebuilt from the run
config stored in it) or a TorchScript student from ``bcd-export`` (``student.pt``; class names and output
stride are read from the ``export.json`` beside it). Inputs are image files, folders (searched
recursively) and ``.txt`` lists (one image path per line, relative to the list's folder; ``#`` comments).

Written under ``--out`` (the input's relative path, extension dropped, names each file)::

    masks/<name>.png      class index per pixel (8-bit; 16-bit beyond 256 classes)
    color/<name>.png      the classes in the panels' colours
    overlay/<name>.png    the colours blended over the image (--alpha)
    probs/<name>.npy      float16 [K, H, W] softmax probabilities (--probs only)
    predict.json          what was run and written

Inference reuses :mod:`bcd_lightning.inference` (whole image, or ``--mode slide --window H W``), so a
prediction equals what ``bcd-eval`` scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import track
from torch import Tensor, nn

from bcd_lightning.callbacks.panels import colorize, palette
from bcd_lightning.data.files import IMAGE_EXTENSIONS, read_image, read_list_lines
from bcd_lightning.data.transforms import normalize
from bcd_lightning.export import load_student
from bcd_lightning.inference import InferenceConfig, predict_scores
from bcd_lightning.utils.config_check import ConfigError
from bcd_lightning.utils.errors import friendly_errors
from bcd_lightning.utils.run_dir import atomic_write_text


class ScriptedStudent(nn.Module):
    """A TorchScript student (``bcd-export``'s ``student.pt``) with the output stride inference pads to."""

    def __init__(self, scripted: torch.jit.ScriptModule, output_stride: int) -> None:
        super().__init__()
        self.scripted = scripted
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Tensor:
        return self.scripted(x)


def load_model(path: Path) -> tuple[nn.Module, list[str]]:
    """The model (eval mode) and its class names, from a checkpoint or an exported ``student.pt``."""
    if not path.is_file():
        raise ConfigError(f"Model not found: {path} (a bcd-train .ckpt or bcd-export's student.pt).")
    if path.suffix == ".pt":
        meta_path = path.with_name("export.json")
        meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # torch raises several types for a file that is not TorchScript
            raise ConfigError(f"{path} is not a TorchScript file from bcd-export: {err}") from err
        num_classes = int(meta.get("num_classes") or 0)
        names = meta.get("class_names") or [str(i) for i in range(num_classes)]
        return ScriptedStudent(scripted, int(meta.get("output_stride", 32))).eval(), list(names)
    model, config = load_student(path)
    names = (config.get("data") or {}).get("class_names") or [str(i) for i in range(model.num_classes)]
    return model, list(names)


def collect_images(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """``(image path, output name without extension)`` for every input, in a stable order."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            found += [(p, p.relative_to(item).with_suffix("")) for p in files]
        elif item.suffix.lower() == ".txt":
            for line in read_list_lines(item):
                path = (item.parent / line).resolve() if not Path(line).is_absolute() else Path(line)
                found.append((path, Path(Path(line).with_suffix("").name)))
        elif item.is_file():
            found.append((item, Path(item.stem)))
        else:
            raise ConfigError(f"Input not found: {item} (an image, a folder of images or a .txt list).")
    missing = [str(p) for p, _ in found if not p.is_file()]
    if missing:
        raise ConfigError(f"Images listed but missing: {', '.join(missing[:5])}.")
    names = [str(n) for _, n in found]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError(f"Two inputs would write the same outputs: {', '.join(clashes[:5])}.")
    if not found:
        raise ConfigError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, inputs))}.")
    return found


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def predict_images(
    model: nn.Module,
    images: Sequence[tuple[Path, Path]],
    out_dir: Path,
    class_names: Sequence[str],
    cfg: InferenceConfig | None = None,
    probabilities: bool = False,
    overlay_alpha: float = 0.5,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image and write its outputs; returns the summary also saved as ``predict.json``."""
    model = model.to(device)
    colours = palette(len(class_names))
    kinds = ["masks", "color", "overlay", *(["probs"] if probabilities else [])]
    steps = track(images, description="bcd-predict", disable=not progress, console=Console(stderr=True))
    for path, name in steps:
        rgb = read_image(path)
        x = normalize(torch.from_numpy(rgb).permute(2, 0, 1))[None].to(device)
        scores = predict_scores(model, x, cfg)[0].float().cpu()
        pred = scores.argmax(0)
        dtype = np.uint8 if len(class_names) <= 256 else np.uint16
        _save(pred.numpy().astype(dtype), out_dir / "masks" / f"{name}.png")
        colour = colorize(pred, colours)
        _save(colour, out_dir / "color" / f"{name}.png")
        blend = (1 - overlay_alpha) * rgb.astype(np.float32) + overlay_alpha * colour.astype(np.float32)
        _save(blend.round().clip(0, 255).astype(np.uint8), out_dir / "overlay" / f"{name}.png")
        if probabilities:
            # One-view scores are logits; TTA scores are already averaged probabilities.
            probs = scores if _averaged(cfg) else scores.softmax(0)
            (out_dir / "probs" / name).parent.mkdir(parents=True, exist_ok=True)
            np.save(out_dir / "probs" / f"{name}.npy", probs.numpy().astype(np.float16))
    summary = {
        "images": len(images),
        "outputs": {kind: str(out_dir / kind) for kind in kinds},
        "class_names": list(class_names),
        "inference": (cfg or InferenceConfig()).as_dict(),
    }
    atomic_write_text(out_dir / "predict.json", json.dumps(summary, indent=2))
    return summary


def _averaged(cfg: InferenceConfig | None) -> bool:
    return cfg is not None and not (cfg.num_views == 1 and cfg.scales[0] == 1.0)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bcd-predict",
        description="Run a trained student (bcd-train checkpoint or bcd-export student.pt) on images: "
        "index masks, colour masks, overlays and optionally probabilities.",
    )
    parser.add_argument("model", type=Path, help="a bcd-train .ckpt or bcd-export's student.pt")
    parser.add_argument("inputs", nargs="+", help="image files, folders of images, or .txt lists of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole", help="whole image or windows")
    parser.add_argument("--window", type=int, nargs=2, metavar=("H", "W"), help="sliding window size")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="window step (default 2/3)")
    parser.add_argument("--flip", action="store_true", help="add horizontal-flip test-time augmentation")
    parser.add_argument("--probs", action="store_true", help="also write float16 probabilities (.npy)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colours (0..1)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


@friendly_errors
def run(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha={args.alpha} must be between 0 and 1.")
    cfg = InferenceConfig(mode=args.mode, window=args.window, stride=args.stride, flip=args.flip)
    images = collect_images(args.inputs)
    model, names = load_model(args.model)
    summary = predict_images(
        model, images, args.out, names, cfg, args.probs, args.alpha, args.device, not args.no_progress
    )
    written = ", ".join(f"{kind}/" for kind in summary["outputs"])
    print(
        f"Wrote {summary['images']} images ({written}) under {args.out}; settings in {args.out / 'predict.json'}"
    )
    return summary


def main() -> None:
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
