"""Datasets and transforms."""
from .datasets import (CamVid, DataError, FolderDataset, IGNORE_INDEX, SegmentationDataset, VOC,
                       find_data_root, make_dataset)
from .transforms import EvalTransform, TrainTransform

__all__ = ["CamVid", "VOC", "FolderDataset", "SegmentationDataset", "DataError", "IGNORE_INDEX",
           "find_data_root", "make_dataset", "TrainTransform", "EvalTransform"]
