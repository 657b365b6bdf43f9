"""SegDataModule: loaders, batch sizes, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from bcd_lightning.data import SegDataModule, SyntheticSegmentation


def test_loaders_shapes_and_drop_last() -> None:
    dm = SegDataModule(
        train_set=SyntheticSegmentation(10, 64, seed=1),
        val_set=SyntheticSegmentation(5, 64, seed=2),
        num_classes=4,
        batch_size=4,
        val_batch_size=2,
    )
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == 2 and train_batches[0]["image"].shape == (4, 3, 64, 64)
    assert train_batches[0]["mask"].dtype == torch.long
    assert [len(b["mask"]) for b in dm.val_dataloader()] == [2, 2, 1]
    assert dm.test_set is dm.val_set


def test_batch_larger_than_dataset_with_drop_last() -> None:
    ds = TensorDataset(torch.zeros(3))
    with pytest.raises(ValueError, match=r"batch_size=8 is larger than the training set \(3 samples\)"):
        SegDataModule(train_set=ds, val_set=ds, num_classes=2, batch_size=8)


def test_class_names_must_match() -> None:
    ds = TensorDataset(torch.zeros(3))
    with pytest.raises(ValueError, match=r"class_names has 1 names but data\.num_classes=2"):
        SegDataModule(train_set=ds, val_set=ds, num_classes=2, class_names=["a"], batch_size=1)
