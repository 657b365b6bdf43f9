"""bcd-predict on embedded images: masks, colours, overlays and probabilities against direct computations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bcd_lightning.builders import build_model
from bcd_lightning.callbacks.panels import palette
from bcd_lightning.data.synthetic import CLASS_NAMES, SyntheticSegmentation
from bcd_lightning.data.transforms import normalize
from bcd_lightning.export import export_student
from bcd_lightning.inference import InferenceConfig
from bcd_lightning.predict import collect_images, load_model, predict_images, run
from support import compose_config


@pytest.fixture
def student_ckpt(tmp_path: Path) -> Path:
    """A checkpoint as bcd-train writes it (weights under ``model.``, run config in the hparams)."""
    cfg = compose_config(["paths.output_dir=unused"])
    torch.manual_seed(0)
    model = build_model(cfg.student)
    config = {
        "student": OmegaConf.to_container(cfg.student, resolve=True),
        "data": {"class_names": list(CLASS_NAMES)},
    }
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "student.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, path)
    return path


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Three embedded images as PNG files, one in a sub-folder."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    data = SyntheticSegmentation(3, image_size=64, seed=5, normalize=False)
    for i, name in enumerate(["a", "b", "sub/c"]):
        rgb = (data[i]["image"].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / f"{name}.png")
    return root


def _direct_prediction(model: torch.nn.Module, path: Path) -> tuple[np.ndarray, torch.Tensor]:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    x = normalize(torch.from_numpy(rgb.copy()).permute(2, 0, 1))[None]
    with torch.no_grad():
        logits = model(x)
    logits = logits if isinstance(logits, torch.Tensor) else logits.logits
    return rgb, logits[0]


def test_checkpoint_on_a_folder_writes_every_output(
    student_ckpt: Path, image_dir: Path, tmp_path: Path
) -> None:
    model, names = load_model(student_ckpt)
    assert names == list(CLASS_NAMES)
    out = tmp_path / "out"
    images = collect_images([image_dir])
    assert [str(n) for _, n in images] == ["a", "b", "sub/c"]
    summary = predict_images(
        model, images, out, names, probabilities=True, overlay_alpha=0.25, progress=False
    )
    assert summary["images"] == 3 and (out / "predict.json").is_file()
    colours = palette(len(CLASS_NAMES)).numpy()
    for name in ("a", "b", "sub/c"):
        rgb, logits = _direct_prediction(model, image_dir / f"{name}.png")
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.dtype == np.uint8 and mask.shape == (64, 64)
        assert np.array_equal(mask, logits.argmax(0).numpy())
        colour = np.asarray(Image.open(out / "color" / f"{name}.png"))
        assert np.array_equal(colour, colours[mask])
        overlay = np.asarray(Image.open(out / "overlay" / f"{name}.png")).astype(np.float32)
        expected = 0.75 * rgb.astype(np.float32) + 0.25 * colours[mask].astype(np.float32)
        assert np.abs(overlay - expected).max() <= 0.5 + 1e-4  # rounded to uint8
        probs = np.load(out / "probs" / f"{name}.npy").astype(np.float32)
        assert probs.shape == (len(CLASS_NAMES), 64, 64)
        np.testing.assert_allclose(probs, logits.softmax(0).numpy(), atol=1e-3)


def test_exported_student_list_input_and_sliding_window_agree(
    student_ckpt: Path, image_dir: Path, tmp_path: Path
) -> None:
    export_student(student_ckpt, tmp_path / "export", size=(64, 64), onnx=False)
    listing = tmp_path / "list.txt"
    listing.write_text("# two of them\nimages/a.png\nimages/sub/c.png\n")
    scripted, names = load_model(tmp_path / "export" / "student.pt")
    assert names == list(CLASS_NAMES) and getattr(scripted, "output_stride") == 32  # noqa: B009
    whole = predict_images(scripted, collect_images([listing]), tmp_path / "whole", names, progress=False)
    assert whole["images"] == 2
    # Four overlapping 32x32 windows: logits averaged where they overlap (not the whole-image forward).
    cfg = InferenceConfig(mode="slide", window=(32, 32), stride=(32, 32))
    predict_images(scripted, collect_images([listing]), tmp_path / "slide", names, cfg, progress=False)
    model, _ = load_model(student_ckpt)
    for name in ("a", "c"):
        _, logits = _direct_prediction(model, image_dir / ("sub" if name == "c" else "") / f"{name}.png")
        mask = np.asarray(Image.open(tmp_path / "whole" / "masks" / f"{name}.png"))
        assert np.array_equal(mask, logits.argmax(0).numpy())
        slide = np.asarray(Image.open(tmp_path / "slide" / "masks" / f"{name}.png"))
        assert slide.shape == (64, 64) and set(np.unique(slide)) <= set(range(len(CLASS_NAMES)))


def test_bad_inputs_are_one_line(student_ckpt: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        run([str(student_ckpt), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert "Input not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run([str(student_ckpt), str(tmp_path), "--out", str(tmp_path / "o")])
    assert "No images" in capsys.readouterr().err
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(SystemExit):
        run([str(tmp_path / "missing.ckpt"), str(tmp_path / "x.png"), "--out", str(tmp_path / "o")])
    assert "Model not found" in capsys.readouterr().err


def test_cli_module_prints_what_it_wrote(student_ckpt: Path, image_dir: Path, tmp_path: Path) -> None:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    args = [str(student_ckpt), str(image_dir / "a.png"), "--out", str(tmp_path / "cli"), "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "bcd_lightning.predict", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Wrote 1 images (masks/, color/, overlay/)" in done.stdout
    assert (tmp_path / "cli" / "masks" / "a.png").is_file()
