"""``bcd-export``: the exported student is exactly a plain smp model (no teacher, no adapters, no extra
parameter) and its TorchScript / ONNX outputs equal that model's within 1e-5."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch

from bcd_lightning.export import export_student
from bcd_lightning.train import train


@pytest.fixture(scope="module")
def distilled_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step CWD run on a backbone stage: student and teacher widths differ, so it has an adapter."""
    from bcd_lightning.builders import build_model
    from support import FAST, compose_config

    tmp = tmp_path_factory.mktemp("export")
    teacher = tmp / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_model(compose_config(["paths.output_dir=unused"]).teacher.model).state_dict(), teacher)
    overrides = [
        f"paths.log_dir={tmp / 'logs'}",
        f"paths.output_dir={tmp / 'run'}",
        *FAST,
        "distill=cwd",
        "distill.losses.cwd.loss.feature=3",
        f"teacher.ckpt={teacher}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
        "callbacks.panels.enabled=false",
        "callbacks.confusion_matrix.enabled=false",
    ]
    result = train(compose_config(overrides))
    return Path(result["output_dir"]) / "checkpoints" / "last.ckpt"


def _plain_smp_student(ckpt: Path) -> torch.nn.Module:
    """The student built straight from smp with the run's architecture, loaded from ``model.net.*``."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    student = dict(checkpoint["hyper_parameters"]["config"]["student"])
    extra = {k: v for k, v in student.items() if k not in {"_target_", "arch", "encoder_name", "num_classes"}}
    plain = smp.create_model(
        student["arch"], encoder_name=student["encoder_name"], classes=student["num_classes"], **extra
    )
    prefix = "model.net."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    plain.load_state_dict(state, strict=True)
    return plain.eval()


def test_checkpoint_has_adapters_but_no_teacher(distilled_ckpt: Path) -> None:
    keys = torch.load(distilled_ckpt, map_location="cpu", weights_only=True)["state_dict"].keys()
    assert any(k.startswith("distill_losses.") for k in keys)  # precondition of the next test
    assert not any(k.startswith("teacher.") for k in keys)


def test_exported_student_equals_plain_smp_model(distilled_ckpt: Path, tmp_path: Path) -> None:
    summary = export_student(distilled_ckpt, tmp_path, size=(64, 64))
    plain = _plain_smp_student(distilled_ckpt)
    scripted = torch.jit.load(str(tmp_path / "student.pt"))

    plain_count = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in scripted.parameters()) == plain_count == summary["parameters"]
    exported_keys = set(scripted.state_dict())
    assert exported_keys == {f"net.{k}" for k in plain.state_dict()}  # nothing else: no adapters

    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)  # another batch size than the example used for export
    with torch.no_grad():
        expected = plain(x)
        got = scripted(x)
    assert got.shape == (2, plain.segmentation_head[0].out_channels, 64, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"image": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_out), expected, rtol=0, atol=1e-5)
    assert json.loads((tmp_path / "export.json").read_text())["num_classes"] == 4


def test_cli_writes_into_the_run_dir_and_rejects_a_missing_checkpoint(
    distilled_ckpt: Path, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "bcd_lightning.export"]
    done = subprocess.run([*cmd, str(distilled_ckpt), "--no-onnx"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    export_dir = distilled_ckpt.parent.parent / "export"
    assert (export_dir / "student.pt").is_file() and not (export_dir / "student.onnx").exists()

    done = subprocess.run([*cmd, str(tmp_path / "missing.ckpt")], capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(errors) == 1 and "not found" in errors[0]
