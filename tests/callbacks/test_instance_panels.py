"""Instance panels: decoded PNGs checked pixel by pixel against hand-made predictions and ground truth
(fills, contours, thresholds, crowd grey), the tile layout, the files, the schedule, the models' modes,
the global RNG states and wandb (disabled, failing); one run of a real tiny Mask R-CNN."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor, nn

import support
from bcd_lightning.callbacks import InstancePanels
from bcd_lightning.callbacks import instance_panels as module_under_test
from bcd_lightning.callbacks.instance_panels import (
    CROWD_COLOUR,
    draw_instances,
    instance_colours,
    instance_contours,
)
from bcd_lightning.callbacks.panels import TITLE_HEIGHT, palette
from bcd_lightning.data.files import DatasetError
from bcd_lightning.detection.data import SyntheticDetection, collate
from bcd_lightning.detection.models import build_detector
from bcd_lightning.utils.config_check import ConfigError
from support import FailingWandb

CONF = Path(__file__).resolve().parents[2] / "src" / "bcd_lightning" / "conf" / "callbacks"
TILE = 192  # default tile height: 64-px images scale by exactly 3
GREY = 51  # the test images' value (0.2 * 255)
FIRST = tuple(palette(1)[0].tolist())  # the best-scoring prediction's colour: the palette's first


def square(size: int, y0: int, y1: int, x0: int, x1: int, value: float = 1.0) -> Tensor:
    mask = torch.zeros(size, size)
    mask[y0:y1, x0:x1] = value
    return mask


def prediction() -> dict[str, Tensor]:
    """One drawn instance (rows 16..31, cols 20..35), one under the score threshold (rows 40..55), and
    one whose pixels all lie under the mask threshold (cols 44..59): only the first may appear."""
    masks = torch.stack(
        [square(64, 16, 32, 20, 36, 0.9), square(64, 40, 56, 4, 20, 0.9), square(64, 4, 12, 44, 60, 0.45)]
    )[:, None]
    return {
        "boxes": torch.tensor([[20.0, 16, 36, 32], [4, 40, 20, 56], [44, 4, 60, 12]]),
        "labels": torch.tensor([1, 2, 1]),
        "scores": torch.tensor([0.9, 0.3, 0.8]),
        "masks": masks,
    }


def ground_truth() -> dict[str, Tensor]:
    """Instance rows 4..11 / cols 4..11 and a crowd instance rows 40..55 / cols 40..55."""
    masks = torch.stack([square(64, 4, 12, 4, 12), square(64, 40, 56, 40, 56)]).to(torch.uint8)
    return {
        "boxes": torch.tensor([[4.0, 4, 12, 12], [40, 40, 56, 56]]),
        "labels": torch.tensor([1, 2]),
        "iscrowd": torch.tensor([0, 1]),
        "masks": masks,
    }


class FakeDetector(nn.Module):
    """Returns fixed predictions; draws from every global RNG and records its mode, as a model could."""

    def __init__(self, pred: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.pred = pred if pred is not None else prediction()
        self.calls: list[tuple[bool, bool, bool, int]] = []

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        self.calls.append((self.training, self.norm.training, torch.is_grad_enabled(), len(images)))
        torch.rand(3)
        np.random.rand()
        random.random()
        return [{k: v.clone() for k, v in self.pred.items()} for _ in images]


def dataset(n: int = 3, target: dict[str, Tensor] | None = None) -> list[tuple[Tensor, dict[str, Tensor]]]:
    return [(torch.full((3, 64, 64), GREY / 255), target or ground_truth()) for _ in range(n)]


def fake_module(teacher: bool) -> Any:
    return SimpleNamespace(
        model=FakeDetector(),
        teacher=FakeDetector() if teacher else None,
        device=torch.device("cpu"),
        class_names=["a", "b"],
    )


def numpy_keys() -> np.ndarray:
    return np.array(cast(tuple[Any, ...], np.random.get_state())[1])


def tiles_of(path: Path, n_tiles: int, tile_w: int = TILE) -> list[np.ndarray]:
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        assert png.size == (n_tiles * tile_w, TITLE_HEIGHT + TILE)
        array = np.asarray(png)
    return [array[TITLE_HEIGHT:, i * tile_w : (i + 1) * tile_w] for i in range(n_tiles)]


def blend(colour: tuple[int, ...], under: Any = GREY, alpha: float = 0.4) -> np.ndarray:
    """``colour`` at opacity ``alpha`` over ``under``, unrounded."""
    return (1 - alpha) * np.asarray(under, dtype=float) + alpha * np.array(colour, dtype=float)


def check_instance(tile: np.ndarray, y0: int, y1: int, x0: int, x1: int, colour: tuple[int, ...]) -> None:
    """Image rows y0..y1-1 / cols x0..x1-1, shown 3x: a 1-px opaque ring, a blended interior."""
    ys, xs, ye, xe = 3 * y0, 3 * x0, 3 * y1 - 1, 3 * x1 - 1  # display square, inclusive corners
    region = tile[ys : ye + 1, xs : xe + 1]
    ring = np.ones(region.shape[:2], dtype=bool)
    ring[1:-1, 1:-1] = False
    assert (region[ring] == colour).all()
    interior = region[1:-1, 1:-1]
    assert (interior == np.round(blend(colour))).all() and not (interior == colour).all(-1).any()


# ------------------------------------------------------------------------ pixel facts of the drawing


@pytest.fixture
def drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    titles: list[list[str]] = []
    compose = module_under_test.compose_panel

    def spy(tiles: Any, tile_height: int) -> Image.Image:
        titles.append([t for t, _ in tiles])
        return compose(tiles, tile_height)

    monkeypatch.setattr(module_under_test, "compose_panel", spy)
    module = fake_module(teacher=True)
    module.model.train()
    module.teacher.eval()  # as a FrozenDetector always is
    trainer = fake_trainer(tmp_path, dataset(3), current_epoch=4)
    InstancePanels(max_images=2, dirpath=str(tmp_path / "p")).on_validation_epoch_end(trainer, module)
    return {"module": module, "titles": titles, "dir": tmp_path / "p" / "epoch_004"}


def test_files_and_four_titled_tiles_with_a_teacher(drawn: dict[str, Any]) -> None:
    assert sorted(p.name for p in drawn["dir"].iterdir()) == ["img_00.png", "img_01.png"]
    assert not list(drawn["dir"].glob("*.tmp*"))  # atomic writes leave nothing behind
    for png in drawn["dir"].iterdir():
        tiles_of(png, 4)
    # The score-0.8 detection counts though its mask is empty at the 0.5 mask threshold.
    expected = ["image", "ground truth (1 inst, 1 crowd)", "teacher (2 inst)", "student (2 inst)"]
    assert drawn["titles"] == [expected] * 2


def test_prediction_fill_contour_and_thresholds(drawn: dict[str, Any]) -> None:
    image, _, teacher, student = tiles_of(drawn["dir"] / "img_01.png", 4)
    assert (image == GREY).all()
    for tile in (teacher, student):
        check_instance(tile, 16, 32, 20, 36, FIRST)
        outside = np.ones(tile.shape[:2], dtype=bool)
        outside[48:96, 60:108] = False
        assert (tile[outside] == GREY).all()  # score 0.3 and probability 0.45 instances are not drawn


def test_ground_truth_instances_and_crowd_in_grey(drawn: dict[str, Any]) -> None:
    truth = tiles_of(drawn["dir"] / "img_00.png", 4)[1]
    check_instance(truth, 4, 12, 4, 12, FIRST)
    check_instance(truth, 40, 56, 40, 56, CROWD_COLOUR)
    outside = np.ones(truth.shape[:2], dtype=bool)
    outside[12:36, 12:36] = outside[120:168, 120:168] = False
    assert (truth[outside] == GREY).all()


def test_models_ran_in_eval_without_grad_and_got_their_modes_back(drawn: dict[str, Any]) -> None:
    student, teacher = drawn["module"].model, drawn["module"].teacher
    assert student.calls == [(False, False, False, 2)]  # one batched forward of the 2 fixed images
    assert teacher.calls == [(False, False, False, 2)]
    assert student.training and student.norm.training
    assert not teacher.training  # it was in eval mode and stays there


def test_without_teacher_three_tiles_and_rng_untouched(tmp_path: Path) -> None:
    module = fake_module(teacher=False)
    module.model.eval()
    module.model.norm.train()  # mixed modes come back as they were, module by module
    trainer = fake_trainer(tmp_path, dataset(2))
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = (torch.get_rng_state(), numpy_keys(), random.getstate())
    InstancePanels(dirpath=str(tmp_path / "p")).on_validation_epoch_end(trainer, module)
    assert module.model.calls  # the model did draw random numbers...
    assert torch.equal(torch.get_rng_state(), before[0])  # ...and the callback put every state back
    assert np.array_equal(numpy_keys(), before[1]) and random.getstate() == before[2]
    assert not module.model.training and module.model.norm.training
    files = sorted((tmp_path / "p" / "epoch_000").iterdir())
    assert [f.name for f in files] == ["img_00.png", "img_01.png"]  # max_images 4, only 2 images
    check_instance(tiles_of(files[0], 3)[2], 16, 32, 20, 36, FIRST)


def test_overlapping_predictions_best_score_on_top_with_its_contour(tmp_path: Path) -> None:
    pred = {
        "boxes": torch.tensor([[0.0, 0, 16, 16], [8, 8, 24, 24]]),
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.6, 0.95]),  # the second one is the best
        "masks": torch.stack([square(64, 0, 16, 0, 16), square(64, 8, 24, 8, 24)])[:, None],
    }
    module: Any = SimpleNamespace(model=FakeDetector(pred), teacher=None, device=torch.device("cpu"))
    InstancePanels(max_images=1, dirpath=str(tmp_path)).on_validation_epoch_end(
        fake_trainer(tmp_path, dataset(1)), module
    )
    tile = tiles_of(tmp_path / "epoch_000" / "img_00.png", 3)[2]
    best, second = FIRST, tuple(palette(2)[1].tolist())  # shown 3x: best rows/cols 24..71, other 0..47
    assert (tile[24, 24:72] == best).all()  # the best's top contour crosses the other's fill and contour
    assert (tile[0, 0:48] == second).all() and (tile[0:48, 0] == second).all()  # the other's, outside
    assert (tile[47, 26:47] == second).all()  # contours come after all fills: visible over the best's fill
    assert (tile[30, 30] == np.round(blend(best, blend(second)))).all()  # best filled over the other
    assert (tile[60, 60] == np.round(blend(best))).all() and (tile[10, 10] == np.round(blend(second))).all()


def test_contours_by_hand() -> None:
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 1:4, 1:4] = True  # 3x3 square: 8 ring pixels, the centre is interior
    masks[1, 0:3, 0:2] = True  # touches the frame: the outside counts as background, all 6 are contour
    contours = instance_contours(masks)
    expected0 = masks[0].clone()
    expected0[2, 2] = False
    assert torch.equal(contours[0], expected0)
    assert torch.equal(contours[1], masks[1])
    assert instance_contours(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 5, 5)


def test_box_outlines_by_hand() -> None:
    image = np.full((10, 10, 3), GREY, dtype=np.uint8)
    masks = torch.zeros(1, 10, 10, dtype=torch.bool)
    masks[0, 7, 7] = True  # a one-pixel mask: all contour
    out = draw_instances(image, masks, [(255, 0, 0)], boxes=torch.tensor([[1.0, 2, 6, 6]]))
    outline = np.zeros((10, 10), dtype=bool)
    outline[2:6, 1:6] = True  # box x 1..5, y 2..5 (xyxy pixel edges): its 1-px outline, interior untouched
    outline[3:5, 2:5] = False
    outline[7, 7] = True
    assert (out[outline] == (255, 0, 0)).all() and (out[~outline] == GREY).all()
    assert np.array_equal(draw_instances(image, masks[:0], []), image)  # no instances: the image


def test_instance_colours_distinct_and_never_grey() -> None:
    colours = instance_colours(60)
    assert len(set(colours)) == 60 and all(not (r == g == b) for r, g, b in colours)
    assert CROWD_COLOUR not in colours and colours[0] == FIRST


# ------------------------------------------------------------------------ schedule, wandb, errors, config


def test_schedule_sanity_check_rank_and_off_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    monkeypatch.setattr(
        InstancePanels, "_draw", lambda self, trainer, pl: drawn.append(trainer.current_epoch)
    )
    module = fake_module(teacher=False)
    every_2 = InstancePanels(every_n_epochs=2)
    for epoch in range(6):
        every_2.on_validation_epoch_end(fake_trainer(tmp_path, [], current_epoch=epoch), module)
    assert drawn == [1, 3, 5]
    for callback, kw in [
        (InstancePanels(), {"sanity_checking": True}),
        (InstancePanels(), {"is_global_zero": False}),
        (InstancePanels(enabled=False), {}),
        (InstancePanels(max_images=0), {}),
    ]:
        callback.on_validation_epoch_end(fake_trainer(tmp_path, [], **kw), module)
    assert drawn == [1, 3, 5]


def test_wandb_disabled_receives_the_panels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list, dict[str, Any]]] = []
    original = WandbLogger.log_image

    def spy(self: WandbLogger, key: str, images: list, step: int | None = None, **kwargs: Any) -> None:
        calls.append((key, images, kwargs))
        original(self, key, images, step=step, **kwargs)

    monkeypatch.setattr(WandbLogger, "log_image", spy)
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    trainer = fake_trainer(tmp_path, dataset(3), loggers=[logger], current_epoch=2)
    try:
        InstancePanels(dirpath=str(tmp_path / "p")).on_validation_epoch_end(
            trainer, fake_module(teacher=False)
        )
    finally:  # no wandb run or settings may outlive the test (a later run would join it, disabled)
        import wandb

        logger.experiment.finish()
        wandb.teardown()
    assert [(key, len(images)) for key, images, _ in calls] == [("val/instance_panels", 3)]
    assert calls[0][2]["caption"][1] == "val image 1 — epoch 2"
    assert all(img.size == (3 * TILE, TITLE_HEIGHT + TILE) for img in calls[0][1])


def test_failing_wandb_warns_once_and_pngs_continue(tmp_path: Path) -> None:
    callback = InstancePanels(dirpath=str(tmp_path))
    module = fake_module(teacher=False)
    with pytest.warns(UserWarning, match="InstancePanels: wandb logging failed"):
        callback.on_validation_epoch_end(fake_trainer(tmp_path, dataset(1), loggers=[FailingWandb()]), module)
    trainer = fake_trainer(tmp_path, dataset(1), loggers=[FailingWandb()], current_epoch=1)
    callback.on_validation_epoch_end(trainer, module)  # no second warning (pytest's filterwarnings=error)
    assert (tmp_path / "epoch_001" / "img_00.png").is_file()


def test_missing_masks_are_named(tmp_path: Path) -> None:
    boxes_only = {k: v for k, v in ground_truth().items() if k != "masks"}
    with pytest.raises(DatasetError, match=r"validation sample 0 of list has none.*masks=True"):
        InstancePanels().on_validation_epoch_end(
            fake_trainer(tmp_path, dataset(1, boxes_only)), fake_module(teacher=False)
        )
    no_masks = {k: v for k, v in prediction().items() if k != "masks"}
    module: Any = SimpleNamespace(model=FakeDetector(no_masks), teacher=None, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"student's outputs have no 'masks'.*mask_rcnn"):
        InstancePanels(dirpath=str(tmp_path)).on_validation_epoch_end(
            fake_trainer(tmp_path, dataset(1)), module
        )
    assert module.model.training  # mode restored on the error path too


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_images", -1),
        ("every_n_epochs", 0),
        ("score_threshold", 1.5),
        ("mask_threshold", 1.0),
        ("alpha", 1.0),
    ],
)
def test_bad_arguments_are_named(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"callbacks\.instance_panels\.{key} must be .*got {value}"):
        kwargs: dict[str, Any] = {key: value}
        InstancePanels(**kwargs)


def test_instance_config_is_detection_plus_mask_map_and_panels(tmp_path: Path) -> None:
    detection = OmegaConf.to_container(OmegaConf.load(CONF / "detection.yaml"))
    instance = OmegaConf.load(CONF / "instance.yaml")
    assert isinstance(instance, DictConfig)
    panels = instance.pop("instance_panels")
    plain = OmegaConf.to_container(instance)
    assert isinstance(plain, dict) and isinstance(detection, dict)
    assert plain["model_checkpoint"]["monitor"] == "val/mask_map"
    assert plain["model_checkpoint"]["mode"] == "max"
    detection["model_checkpoint"]["monitor"] = "val/mask_map"
    assert plain == detection
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "panels": panels})
    callback = instantiate(cfg.panels)
    assert isinstance(callback, InstancePanels)
    assert (callback.max_images, callback.every_n_epochs, callback.score_threshold) == (4, 1, 0.5)
    assert callback.dirpath == f"{tmp_path}/panels"


# ------------------------------------------------------------------------ a real tiny Mask R-CNN


def test_real_mask_rcnn_draws_what_it_predicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_detector(
        dict(
            arch="mask_rcnn",
            backbone="mobilenet_v3_small",
            fpn_channels=32,
            min_size=64,
            max_size=64,
            mask_head_layers=[16],
            mask_dim_reduced=16,
            num_classes=3,
            rpn_pre_nms_top_n_test=50,
            rpn_post_nms_top_n_test=10,
        )
    ).train()
    data = SyntheticDetection(num_samples=2, image_size=64, masks=True)
    titles: list[list[str]] = []
    compose = module_under_test.compose_panel
    monkeypatch.setattr(
        module_under_test,
        "compose_panel",
        lambda tiles, h: titles.append([t for t, _ in tiles]) or compose(tiles, h),
    )
    module: Any = SimpleNamespace(model=model, teacher=None, device=torch.device("cpu"))
    InstancePanels(dirpath=str(tmp_path), score_threshold=0.0).on_validation_epoch_end(
        fake_trainer(tmp_path, data), module
    )
    assert model.training
    with torch.no_grad():
        outputs = model.eval()([data[i][0] for i in range(2)])
    n_truth = [len(data[i][1]["labels"]) for i in range(2)]
    assert titles == [
        ["image", f"ground truth ({n_truth[i]} inst)", f"student ({len(outputs[i]['scores'])} inst)"]
        for i in range(2)
    ]
    for i in range(2):
        image, _, student = tiles_of(tmp_path / "epoch_000" / f"img_{i:02d}.png", 3)
        assert ((outputs[i]["masks"] > 0.5).any().item()) == (student != image).any()


def fake_trainer(tmp_path: Path, data: Any, **kw: Any) -> Any:
    return support.fake_trainer(tmp_path, data, collate_fn=collate, **kw)
