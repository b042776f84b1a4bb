"""Datasets (CamVid, PASCAL VOC + SBD, a folder of your own) and their transforms."""
from .datasets import (DATASETS, VOC, CamVid, DataError, FolderDataset, SegmentationDataset, find_data_root,
                       make_dataset)
from .transforms import IGNORE_INDEX, EvalTransform, TrainTransform

__all__ = ["CamVid", "VOC", "FolderDataset", "SegmentationDataset", "DataError", "DATASETS", "IGNORE_INDEX",
           "find_data_root", "make_dataset", "TrainTransform", "EvalTransform"]
