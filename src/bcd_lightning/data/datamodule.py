"""A LightningDataModule over any map-style segmentation datasets yielding ``{"image", "mask"}``."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence, Sized
from typing import Any, cast

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, default_collate

from bcd_lightning.data.resumable_loader import ResumableDataLoader


def as_sized(dataset: Dataset) -> Sized:
    """A map-style dataset as the ``Sized`` samplers want (``torch.utils.data.Dataset`` declares no ``__len__``)."""
    return cast(Sized, dataset)


def dataset_size(dataset: Dataset) -> int:
    return len(as_sized(dataset))


def trainer_datamodule(trainer: L.Trainer) -> SegDataModule:
    """The datamodule the trainer is fitting with (Lightning sets ``trainer.datamodule`` at fit time)."""
    datamodule = getattr(trainer, "datamodule", None)
    if not isinstance(datamodule, SegDataModule):
        raise TypeError(f"expected the trainer to hold a SegDataModule, got {type(datamodule).__name__}")
    return datamodule


class WithIndex(Dataset):
    """``dataset`` whose items also carry ``"index"``: the sample's position (teacher-output cache key).

    Items that already have an ``"index"`` are passed through unchanged.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return dataset_size(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        return item if "index" in item else {**item, "index": index}


class SegDataModule(L.LightningDataModule):
    """Train / val / test splits for segmentation.

    Args:
        train_set, val_set, test_set: datasets returning ``{"image": [3,H,W] float, "mask": [H,W] long}``;
            ``test_set`` defaults to ``val_set``.
        num_classes, class_names, ignore_index: label space shared by every split.
        batch_size: per-process (per-GPU) batch size; the global batch is ``batch_size × world size``.
        val_batch_size: defaults to ``batch_size``.
        num_workers: data-loading worker processes per GPU.
        pin_memory: ``None`` pins only when CUDA is available.
        drop_last: drop the last incomplete training batch (keeps BatchNorm statistics sane).
        root: where the data lives (configs interpolate it into each split as ``${data.root}``).
        shuffle_seed: seeds the training shuffle (its own generator, saved in checkpoints so a resumed
            run sees the same batches); ``None``: ``torch.initial_seed()``, i.e. the run's ``seed``.
        verify: read every sample of every split before fitting and report all bad files at once
            (:mod:`bcd_lightning.data.verify`; bcd-train runs it).

    ``class_names`` defaults to the training set's ``class_names`` when it has them, and a training set
    that knows its ``num_classes`` must agree with ``num_classes``.
    """

    def __init__(
        self,
        train_set: Dataset,
        val_set: Dataset,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        test_set: Dataset | None = None,
        ignore_index: int = 255,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        drop_last: bool = True,
        root: str | None = None,
        shuffle_seed: int | None = None,
        verify: bool = False,
    ) -> None:
        super().__init__()
        self.root = root
        self.verify = verify
        own = getattr(train_set, "num_classes", None)
        if isinstance(own, int) and own != num_classes:
            raise ValueError(
                f"data.num_classes={num_classes} but the training set {train_set!r} has {own} classes: "
                f"set data.num_classes={own}."
            )
        class_names = class_names or getattr(train_set, "class_names", None) or None
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.train_set, self.val_set = train_set, val_set
        self.test_set = test_set if test_set is not None else val_set
        #: Which split ``test`` scores: ``test``, or ``val`` when there is no test split.
        self.test_split = "test" if test_set is not None else "val"
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(
                f"data.class_names has {len(self.class_names)} names but data.num_classes={num_classes}"
            )
        self.ignore_index = ignore_index
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.drop_last = drop_last
        self.shuffle_seed = shuffle_seed
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict | None = None
        if drop_last and dataset_size(train_set) < batch_size:
            raise ValueError(
                f"data.batch_size={batch_size} is larger than the training set ({dataset_size(train_set)} samples) "
                "with data.drop_last=true: no batch would be left. Lower the batch size or add data."
            )

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        seed = self.shuffle_seed if self.shuffle_seed is not None else torch.initial_seed()
        # Own generators (shuffle order, worker seeds): iterating never draws from the global RNG,
        # and the training loader's position goes into checkpoints (exact resume, see state_dict).
        common: dict[str, Any] = dict(
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(seed + 1),
            collate_fn=functools.partial(collate, key="data.batch_size" if train else "data.val_batch_size"),
        )
        if not train:
            return DataLoader(dataset, sampler=evaluation_sampler(dataset), **common)
        sampler = RandomSampler(as_sized(dataset), generator=torch.Generator().manual_seed(seed))
        return ResumableDataLoader(dataset, sampler=sampler, drop_last=self.drop_last, **common)

    def train_dataloader(self) -> DataLoader:
        # Training batches carry "index" (the sample's position) for the teacher-output cache.
        loader = self._loader(WithIndex(self.train_set), self.batch_size, train=True)
        assert isinstance(loader, ResumableDataLoader)  # what _loader(train=True) builds
        if self._train_loader_state is not None:
            loader.restore(self._train_loader_state)
            self._train_loader_state = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (Lightning saves it in every checkpoint)."""
        if self._train_loader is None:
            return {}
        trainer = getattr(self, "trainer", None)
        length = trainer.num_training_batches if trainer is not None else None
        return {"train_loader": self._train_loader.resume_state(length)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the loader position; applied when ``train_dataloader`` next builds the loader."""
        self._train_loader_state = state_dict.get("train_loader")
        if self._train_loader_state and self._train_loader_state.get("skip"):
            # Lightning warns a mid-epoch resume is inexact for loaders it cannot restore; this one is.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.val_batch_size, train=False)


def evaluation_sampler(dataset: Dataset) -> Sampler:
    """In order; under DDP each rank takes a disjoint share *without padding*.

    Lightning's default DistributedSampler pads the split with repeated samples so every rank gets as
    many (500 Cityscapes images on 8 GPUs: 4 counted twice); the sum-reduced metric states would then be
    inexact. Lightning keeps a sampler that is already a DistributedSampler.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return UnrepeatedDistributedSampler(as_sized(dataset), shuffle=False)
    return SequentialSampler(as_sized(dataset))


def collate(batch: list[dict[str, Any]], key: str = "data.batch_size") -> Any:
    """``default_collate`` with a hint when the samples of one batch differ in size."""
    try:
        return default_collate(batch)
    except RuntimeError as err:
        if "stack expects each tensor to be equal size" not in str(err):
            raise
        from bcd_lightning.utils.config_check import ConfigError

        sizes = sorted({tuple(item["image"].shape[-2:]) for item in batch if "image" in item})
        raise ConfigError(
            f"The images of one batch have different sizes {sizes}, so they cannot be stacked: with "
            f"{key} > 1 every image of a batch must have the same size. Set {key}=1 (e.g. full-resolution "
            "validation) or crop/resize to one size in that split's transform."
        ) from err
