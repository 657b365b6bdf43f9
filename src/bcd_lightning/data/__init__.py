"""Datasets and the datamodule."""

from bcd_lightning.data.datamodule import SegDataModule
from bcd_lightning.data.synthetic import CLASS_NAMES, SyntheticSegmentation

__all__ = ["CLASS_NAMES", "SegDataModule", "SyntheticSegmentation"]
