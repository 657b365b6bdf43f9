"""Datasets, joint transforms and the datamodule."""

from bcd_lightning.data.ade20k import ADE20K
from bcd_lightning.data.camvid import CamVid
from bcd_lightning.data.cityscapes import Cityscapes
from bcd_lightning.data.datamodule import SegDataModule
from bcd_lightning.data.files import DatasetError, PairedSegmentation
from bcd_lightning.data.folder import FolderSegmentation
from bcd_lightning.data.synthetic import CLASS_NAMES, SyntheticSegmentation
from bcd_lightning.data.transforms import EvalTransform, TrainTransform
from bcd_lightning.data.voc import PascalVOC

__all__ = [
    "ADE20K",
    "CLASS_NAMES",
    "CamVid",
    "Cityscapes",
    "DatasetError",
    "EvalTransform",
    "FolderSegmentation",
    "PairedSegmentation",
    "PascalVOC",
    "SegDataModule",
    "SyntheticSegmentation",
    "TrainTransform",
]
