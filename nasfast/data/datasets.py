"""Segmentation datasets: CamVid, PASCAL VOC 2012 (+SBD), and a folder of image/label pairs.

Every item is validated as it loads: a file that is missing, unreadable or truncated, a label
whose size differs from its image, or a label value that is neither a class nor the ignore
index raises `DataError` naming the file and the problem.
"""
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

IGNORE_INDEX = 255


class DataError(ValueError):
    """A data file that cannot be used, with its path and the reason."""


def find_data_root(name: str, data_root: Optional[str] = None) -> Path:
    """--data-root when given, else $NASFAST_DATA/<name>, else ~/.cache/nasfast/<name>."""
    if data_root is not None:
        places = [Path(data_root)]
    else:
        places = [Path(os.environ["NASFAST_DATA"]) / name] if os.environ.get("NASFAST_DATA") else []
        places.append(Path.home() / ".cache" / "nasfast" / name)
    for place in places:
        if place.is_dir():
            return place
    raise FileNotFoundError(
        f"dataset {name!r} not found; looked in: {', '.join(map(str, places))}.\n"
        f"Download it once (see README, 'Data') and pass --data-root DIR, or set NASFAST_DATA "
        f"to the folder that holds {name}/.")


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{path}: {what} file is missing")
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: unreadable or truncated {what} ({error})") from None
    return image


class SegmentationDataset(torch.utils.data.Dataset):
    """(image path, label path) pairs; items are `transform(image, label, index)` or, without
    a transform, (float image 3xHxW in [0, 1], long label HxW)."""

    num_classes: int
    class_names: Sequence[str] = ()
    exclude: Tuple[int, ...] = ()   # classes left out of the search reward's averages
    ignore_index = IGNORE_INDEX

    def __init__(self, pairs: List[Tuple[Path, Path]], transform: Optional[Callable] = None,
                 label_map: Optional[dict] = None):
        self.pairs = pairs
        self.transform = transform
        self.lookup = np.arange(256, dtype=np.uint8)
        for source, target in (label_map or {}).items():
            self.lookup[source] = target

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """The validated image (HxWx3 uint8) and label (HxW uint8, ignore = 255)."""
        image_path, label_path = self.pairs[index]
        image = np.array(_open(image_path, "image").convert("RGB"))
        label_image = _open(label_path, "label")
        if label_image.mode not in ("L", "P"):
            raise DataError(f"{label_path}: label must be a one-channel image (mode L or P), got mode {label_image.mode}")
        label = self.lookup[np.array(label_image)]
        if label.shape != image.shape[:2]:
            raise DataError(f"{label_path}: label size {label.shape[1]}x{label.shape[0]} differs from its "
                            f"image {image_path} ({image.shape[1]}x{image.shape[0]})")
        values = np.unique(label)
        bad = values[(values >= self.num_classes) & (values != self.ignore_index)]
        if bad.size:
            raise DataError(f"{label_path}: label values {bad.tolist()} are neither classes "
                            f"[0, {self.num_classes}) nor the ignore index {self.ignore_index}")
        return image, label

    def __getitem__(self, index: int):
        image, label = self.load(index)
        if self.transform is not None:
            return self.transform(image, label, index)
        return (torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(label).long())


def _read_list(path: Path) -> List[str]:
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class CamVid(SegmentationDataset):
    """The SegNet 360x480 release: `<split>.txt` lists `image label` paths relative to root.
    11 classes; label value 11 (unlabelled) becomes the ignore index."""
    num_classes = 11
    class_names = ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
                   "pedestrian", "bicyclist")

    def __init__(self, root, split: str = "train", transform=None):
        root = Path(root)
        pairs = []
        for line in _read_list(root / f"{split}.txt"):
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{root / f'{split}.txt'}: expected 'image label' per line, got {line!r}")
            pairs.append((root / parts[0].lstrip("/"), root / parts[1].lstrip("/")))
        super().__init__(pairs, transform, label_map={11: IGNORE_INDEX})


class VOC(SegmentationDataset):
    """PASCAL VOC 2012 with the SBD augmented labels (the paper's setup). Layout under root:
    JPEGImages/<id>.jpg, SegmentationClassAug/<id>.png (or SegmentationClass/), and the id lists
    ImageSets/Segmentation/<split>.txt (train_aug: 10,582 ids; val: 1,449). 21 classes with the
    background (0) left out of the search reward; 255 marks boundaries (ignored)."""
    num_classes = 21
    exclude = (0,)
    class_names = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
                   "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
                   "sheep", "sofa", "train", "tvmonitor")

    def __init__(self, root, split: str = "train_aug", transform=None):
        root = Path(root)
        labels = root / "SegmentationClassAug"
        if not labels.is_dir():
            labels = root / "SegmentationClass"
        ids = _read_list(root / "ImageSets" / "Segmentation" / f"{split}.txt")
        super().__init__([(root / "JPEGImages" / f"{i}.jpg", labels / f"{i}.png") for i in ids], transform)


class FolderDataset(SegmentationDataset):
    """Your own data: root/classes.txt (one class name per line), root/images/<name>.<jpg|png>,
    root/labels/<name>.png (class indices, 255 = ignore), and optionally root/<split>.txt
    listing the names of a split (otherwise every image is in every split)."""

    def __init__(self, root, split: str = "train", transform=None):
        root = Path(root)
        self.class_names = tuple(_read_list(root / "classes.txt"))
        self.num_classes = len(self.class_names)
        images = {p.stem: p for p in sorted((root / "images").glob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
        names = _read_list(root / f"{split}.txt") if (root / f"{split}.txt").exists() else sorted(images)
        if not names:
            raise DataError(f"{root / 'images'}: no .jpg or .png images")
        missing = [n for n in names if n not in images]
        if missing:
            raise DataError(f"{root / 'images'}: no image for {missing[:5]}")
        super().__init__([(images[n], root / "labels" / f"{n}.png") for n in names], transform)


DATASETS = {"camvid": (CamVid, "train", "val"), "voc": (VOC, "train_aug", "val"), "folder": (FolderDataset, "train", "val")}


def make_dataset(name: str, root: Optional[str] = None, split: Optional[str] = None, transform=None) -> SegmentationDataset:
    """A dataset by name ("camvid", "voc", "folder"), found with `find_data_root`; split
    defaults to the training split."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    cls, train_split, _ = DATASETS[name]
    return cls(find_data_root(name, root), split or train_split, transform)
