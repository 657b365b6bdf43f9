"""Validation panels and the test confusion-matrix plot: decoded PNGs checked tile by tile against the
data and the models that drew them; wandb disabled or failing never breaks a run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import nn

from bcd_lightning.builders import build_datamodule, build_model
from bcd_lightning.callbacks import ConfusionMatrixPlot, ValidationPanels
from bcd_lightning.callbacks.confusion import confusion_image, normalize_rows
from bcd_lightning.callbacks.panels import DEFAULT_STAGE, IGNORE_COLOUR, TITLE_HEIGHT, boundary_stage, palette
from bcd_lightning.data import SyntheticSegmentation
from bcd_lightning.distill import BoundaryDistillation, BoundaryWeightedKD
from bcd_lightning.distill.functional import boundary_map
from bcd_lightning.evaluation import load_run_checkpoint
from bcd_lightning.lit import SegmentationModule
from bcd_lightning.train import train
from support import FAST, FailingWandb, compose_config, fake_trainer

TILE = 192  # ValidationPanels' default tile height; the 64-px FAST images scale by exactly 3
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiles_of(path: Path, n_tiles: int, tile_w: int = TILE) -> list[np.ndarray]:
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        assert png.size == (n_tiles * tile_w, TITLE_HEIGHT + TILE)
        array = np.asarray(png)
    return [array[TITLE_HEIGHT:, i * tile_w : (i + 1) * tile_w] for i in range(n_tiles)]


def up(array: np.ndarray, factor: int = 3) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor, written independently of PIL."""
    return array.repeat(factor, 0).repeat(factor, 1)


def coloured(mask: torch.Tensor) -> np.ndarray:
    colours = palette(4).numpy()
    out = colours[mask.clamp(0, 3).numpy()]
    out[mask.numpy() == 255] = IGNORE_COLOUR
    return out


# ------------------------------------------------------------------------ a tiny BCD run, wandb disabled


@pytest.fixture(scope="module")
def bcd_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bcd_panels")
    cfg = compose_config(["paths.output_dir=unused"])
    torch.manual_seed(0)
    teacher_file = root / "teacher.pt"
    torch.save(build_model(cfg.teacher.model).state_dict(), teacher_file)
    cfg = compose_config(
        [
            f"paths.log_dir={root / 'logs'}",
            f"paths.output_dir={root / 'run'}",
            *(o for o in FAST if not o.startswith("logger=")),
            "logger=wandb",  # with WANDB_MODE=disabled
            "experiment=embedded/bcd",
            f"teacher.ckpt={teacher_file}",
            "distill.losses.boundary.loss.stages=[3,2]",  # finest distilled stage: 2 (stride 8)
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
        ]
    )
    calls: list[tuple[str, int, dict[str, Any]]] = []
    original = WandbLogger.log_image

    def spy(self: WandbLogger, key: str, images: list, step: int | None = None, **kwargs: Any) -> None:
        calls.append((key, len(images), kwargs))
        original(self, key, images, step=step, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        mp.setattr(WandbLogger, "log_image", spy)
        result = train(cfg)
    return {"result": result, "cfg": cfg, "teacher_file": teacher_file, "wandb_calls": calls}


def test_four_panels_of_six_tiles_and_a_legend(bcd_run: dict[str, Any]) -> None:
    panels = Path(bcd_run["result"]["output_dir"]) / "panels"
    assert sorted(p.name for p in (panels / "epoch_000").iterdir()) == [f"img_{i:02d}.png" for i in range(4)]
    for png in (panels / "epoch_000").iterdir():
        tiles_of(png, 6)
    with Image.open(panels / "legend.png") as legend:
        legend.verify()


def test_tiles_show_image_truth_and_both_models(bcd_run: dict[str, Any]) -> None:
    cfg = bcd_run["cfg"]
    sample = build_datamodule(cfg).val_set[1]
    image, mask = sample["image"], sample["mask"]
    tiles = tiles_of(Path(bcd_run["result"]["output_dir"]) / "panels" / "epoch_000" / "img_01.png", 6)

    rgb = (
        (image * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)).clamp(0, 1) * 255
    ).round()
    assert np.abs(tiles[0].astype(int) - up(rgb.permute(1, 2, 0).numpy().astype(int))).max() <= 1
    assert np.array_equal(tiles[1], up(coloured(mask)))  # ground truth in the palette colours

    # The student as saved after the (only) validation epoch, and the teacher, predict the same tiles.
    student = build_model(cfg.student).eval()
    student.load_state_dict(
        load_run_checkpoint(Path(bcd_run["result"]["output_dir"]) / "checkpoints" / "last.ckpt")[0]
    )
    teacher = build_model(cfg.teacher.model).eval()
    teacher.load_state_dict(torch.load(bcd_run["teacher_file"], weights_only=True))
    with torch.no_grad():
        s_out, t_out = student(image[None]), teacher(image[None])
    assert np.array_equal(tiles[2], up(coloured(t_out.logits[0].argmax(0))))
    assert np.array_equal(tiles[3], up(coloured(s_out.logits[0].argmax(0))))

    # Boundary maps of stage 2 (stride 8: each map pixel covers 8×8 image pixels), one grey scale per panel.
    maps = [boundary_map(out.stages[2])[0] for out in (t_out, s_out)]
    vmax = max(float(m.max()) for m in maps)
    for tile, bmap in zip(tiles[4:], maps, strict=True):
        assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()
        expected = up((bmap / vmax * 255).round().numpy().astype(int), 8 * 3)
        assert np.abs(tile[..., 0].astype(int) - expected).max() <= 1
    assert max(int(t.max()) for t in tiles[4:]) == 255


def test_wandb_disabled_still_receives_panels_overlays_and_confusion(bcd_run: dict[str, Any]) -> None:
    calls = {key: (n, kwargs) for key, n, kwargs in bcd_run["wandb_calls"]}
    assert calls["val/panels"][0] == 4 and calls["val/overlays"][0] == 4
    masks = calls["val/overlays"][1]["masks"][0]
    assert set(masks) == {"ground_truth", "student", "teacher"}
    assert masks["ground_truth"]["class_labels"] == {
        0: "background",
        1: "blob_a",
        2: "blob_b",
        3: "vessel",
        4: "ignore",
    }
    assert masks["student"]["mask_data"].shape == (64, 64)
    assert calls["test/confusion_matrix"][0] == 1


def test_confusion_matrix_png_written_at_test_time(bcd_run: dict[str, Any]) -> None:
    path = Path(bcd_run["result"]["output_dir"]) / "confusion_matrix_test.png"
    with Image.open(path) as png:
        png.verify()
        assert png.format == "PNG"


# ------------------------------------------------------------------------ direct calls, no training


@pytest.fixture(scope="module")
def plain_module() -> SegmentationModule:
    cfg = compose_config(["paths.output_dir=unused"])
    return SegmentationModule(build_model(cfg.student), 4, class_names=["bg", "a", "b", "v"])


def test_plain_module_has_no_teacher_tiles_and_any_size_works(plain_module, tmp_path: Path) -> None:
    dataset = SyntheticSegmentation(num_samples=3, image_size=(48, 80), seed=5)  # not multiples of 32
    trainer = fake_trainer(tmp_path, dataset, current_epoch=6, loggers=[FailingWandb()])
    plain_module.model.train()
    callback = ValidationPanels(num_images=2, dirpath=str(tmp_path / "p"))
    with pytest.warns(UserWarning, match="wandb logging failed"):
        callback.on_validation_epoch_end(trainer, plain_module)
    assert plain_module.model.training  # mode restored
    files = sorted((tmp_path / "p" / "epoch_006").iterdir())
    assert [f.name for f in files] == ["img_00.png", "img_01.png"]
    tile_w = round(80 * TILE / 48)
    tiles = tiles_of(files[1], 4, tile_w)  # image | ground truth | student | student boundary
    with torch.no_grad():
        pred = plain_module.model.eval()(F.pad(dataset[1]["image"][None], (0, 16, 0, 16))).logits[
            0, :, :48, :80
        ]
    plain_module.model.train()
    assert np.array_equal(tiles[1], up(coloured(dataset[1]["mask"]), 4))
    assert np.array_equal(tiles[2], up(coloured(pred.argmax(0)), 4))
    callback.on_validation_epoch_end(trainer, plain_module)  # wandb given up: PNGs only, no new warning


def test_schedule_sanity_check_rank_and_off_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[tuple[int, bool]] = []
    model = nn.Linear(1, 1)
    module = SimpleNamespace(model=model)
    monkeypatch.setattr(
        ValidationPanels,
        "_draw",
        lambda self, trainer, pl: drawn.append((trainer.current_epoch, model.training)),
    )
    every_2 = ValidationPanels(every_n_epochs=2)
    for epoch in range(6):
        every_2.on_validation_epoch_end(fake_trainer(tmp_path, [], current_epoch=epoch), module)
    assert drawn == [(1, False), (3, False), (5, False)]  # drawn in eval mode...
    assert model.training  # ...and put back
    for callback, kw in [
        (ValidationPanels(), {"sanity_checking": True}),
        (ValidationPanels(), {"is_global_zero": False}),
        (ValidationPanels(enabled=False), {}),
        (ValidationPanels(num_images=0), {}),
    ]:
        callback.on_validation_epoch_end(fake_trainer(tmp_path, [], **kw), module)
    assert len(drawn) == 3
    with pytest.raises(ValueError, match="every_n_epochs"):
        ValidationPanels(every_n_epochs=0)


def test_boundary_stage_is_the_finest_distilled_one() -> None:
    assert boundary_stage(SimpleNamespace()) == (DEFAULT_STAGE, 1)
    bkd_only = SimpleNamespace(distill_losses={"bkd": BoundaryWeightedKD(stages=[4, 2], dilation=2)})
    assert boundary_stage(bkd_only) == (2, 2)
    both = SimpleNamespace(
        distill_losses={"bkd": BoundaryWeightedKD(stages=[1]), "b": BoundaryDistillation(stages=[3, 2, 4])}
    )
    assert boundary_stage(both) == (2, 1)  # boundary distillation's stages win over the KD weights'


def test_palette_distinct_and_never_the_ignore_colour() -> None:
    for k in (4, 19, 150):
        colours = [tuple(c) for c in palette(k).tolist()]
        assert len(colours) == k and IGNORE_COLOUR not in colours
        assert len(set(colours[:20])) == min(k, 20)


def test_confusion_rows_normalised_by_hand() -> None:
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    norm = normalize_rows(cm)
    assert norm[0].tolist() == [0.75, 0.25, 0.0] and norm[2].tolist() == [0.25, 0.25, 0.5]
    assert all(math.isnan(v) for v in norm[1].tolist())  # class absent from the ground truth
    image = confusion_image(cm, ["a", "b", "c"], title="t")
    assert image.mode == "RGB" and min(image.size) > 100
    with pytest.raises(ValueError, match="2 class names"):
        confusion_image(cm, ["a", "b"])


def test_confusion_callback_off_or_without_metrics_writes_nothing(tmp_path: Path) -> None:
    trainer = fake_trainer(tmp_path, [])
    ConfusionMatrixPlot(dirpath=str(tmp_path), enabled=False).on_test_epoch_end(trainer, SimpleNamespace())
    ConfusionMatrixPlot(dirpath=str(tmp_path)).on_test_epoch_end(trainer, SimpleNamespace())
    assert not list(tmp_path.glob("*.png"))
