"""A LightningDataModule over any map-style segmentation datasets yielding ``{"image", "mask"}``."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


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
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.train_set, self.val_set = train_set, val_set
        self.test_set = test_set if test_set is not None else val_set
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
        if drop_last and len(train_set) < batch_size:
            raise ValueError(
                f"data.batch_size={batch_size} is larger than the training set ({len(train_set)} samples) "
                "with data.drop_last=true: no batch would be left. Lower the batch size or add data."
            )

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.val_batch_size, train=False)
