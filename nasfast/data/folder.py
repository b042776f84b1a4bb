"""Your own data: a folder of images, labels and class names (FolderDataset), its layout checked
as a whole so that every problem is said at once."""
import os
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .decode import DataError, read_text
from .segmentation import SegmentationDataset
from .transforms import IGNORE_INDEX


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TOOL_SPLITS = ("train", "val")  # the splits train and search read: either file means "listed splits"


class LayoutProblems(DataError):
    """The problems of a folder dataset's layout, all of them (`problems`); said as the first, with
    their count."""

    def __init__(self, problems: List[str]):
        more = f" (and {len(problems) - 1} more: python -m nasfast.data lists them)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)
        self.problems = problems


def _stripped_lines(path: Path) -> List[str]:
    return [line.strip() for line in read_text(path).splitlines()]


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


def _name(text: str) -> str:
    """A name as names are compared: in Unicode's composed form (macOS writes file names decomposed,
    an editor types them composed: the same name either way)."""
    return unicodedata.normalize("NFC", text)


def _group_by_name(files: List[Path], suffixes: Sequence[str]) -> Dict[str, List[Path]]:
    by_name: Dict[str, List[Path]] = {}
    for path in files:
        if path.suffix.lower() in suffixes:
            by_name.setdefault(_name(path.stem), []).append(path)
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
        names = [_image_name(_name(line), images) for line in lines]
        if not names:
            raise DataError(f"{split_file}: lists no names; write the names of the split's images, one a line")
        return split_file, names
    listed = [name for name in TOOL_SPLITS if (root / f"{name}.txt").is_file()]
    if listed:
        raise DataError(f"{split_file}: not found, but {root} has {', '.join(f'{n}.txt' for n in listed)}: with "
                        f"split files, each split needs its own (write {split_file.name}, one image name a line)")
    if not images:
        raise DataError(f"{root / 'images'}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return None, sorted(images)


def _image_name(listed: str, images: Dict[str, Path]) -> str:
    """The listed name, or the name of a listed file name ("x.jpg" or "images/x.jpg" for the image x;
    images\\x.jpg as Windows writes it)."""
    if listed not in images and "\\" in listed:
        listed = listed.replace("\\", "/")
    if listed.startswith("images/") and listed not in images:
        listed = listed[len("images/"):]
    name, suffix = os.path.splitext(listed)
    return name if listed not in images and suffix.lower() in IMAGE_SUFFIXES and name in images else listed


def _label_paths(labels: Path, names: List[str]) -> List[Path]:
    """labels/<name>.png, the extension in any case."""
    files = _visible_files(labels)  # one listing: a folder may hold thousands
    pngs = _files_by_name(files, (".png",))
    jpegs = {_name(p.stem): p for p in files if p.suffix.lower() in (".jpg", ".jpeg")}
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
        absent = [folder for folder in ("images", "labels") if not (root / folder).is_dir()]
        if absent:  # else each image would be a problem of its own
            raise LayoutProblems([_absent_folder(root, folder) for folder in absent])
        problems: List[str] = []  # each check runs, so that all are said at once
        by_name = _group_by_name(_visible_files(root / "images"), IMAGE_SUFFIXES)
        _note_problem(problems, _refuse_shared_names, by_name)
        images = {name: paths[0] for name, paths in by_name.items()}
        listed = _note_problem(problems, _split_names, root, split, images)
        if listed is None:
            raise LayoutProblems(problems)
        self.split_file, names = listed
        problems += _listing_problems(root, self.split_file, names, images)
        labels = _note_problem(problems, _label_paths, root / "labels", names)
        if problems:
            raise LayoutProblems(problems)
        super().__init__(list(zip((images[n] for n in names), labels)), transform)
        self.root = root

    def unused_files(self) -> List[str]:
        """What images/ and labels/ hold that no split can use, each with why: files of types not
        read, broken links, labels of no image."""
        images, notes = set(), []  # the names of images/ (listed first), for the labels'
        for folder, kinds in (("images", IMAGE_SUFFIXES), ("labels", (".png",))):
            for path in sorted((self.root / folder).iterdir()):
                if path.name.startswith(".") or path.is_dir():
                    continue
                if not path.exists():
                    notes.append(f"{path}: a link to {os.readlink(path)}, which is not there")
                elif path.suffix.lower() not in kinds:
                    notes.append(f"{path}: not read ({folder} are {', '.join(kinds)})")
                elif folder == "images":
                    images.add(_name(path.stem))
                elif _name(path.stem) not in images:
                    notes.append(f"{path}: no image of that name in {self.root / 'images'}")
        return notes


def _listing_problems(root: Path, split_file: Optional[Path], names: List[str], images: Dict[str, Path]) -> List[str]:
    """Names the split file lists twice, and names without an image."""
    problems = []
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        problems.append(f"{split_file}: {len(twice)} names listed more than once, e.g. {twice[:5]}")
    missing = [n for n in dict.fromkeys(names) if n not in images]
    if missing:
        hint = ("; a line names one image (its label is found by name)" if any(" labels/" in n for n in missing) else
                "; subfolders of images/ are not searched" if any("/" in n for n in missing) else "")
        names_text = f"{len(missing)} name{'s' if len(missing) > 1 else ''}"
        problems.append(f"{root / 'images'}: no image for {names_text}, e.g. {missing[:5]}{hint}")
    return problems


def _absent_folder(root: Path, folder: str) -> str:
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = f"; {root} has {', '.join(others[:5])}{', ...' if len(others) > 5 else ''}" if others else ""
    return (f"{root / folder}: no such folder (a folder dataset holds classes.txt, images/ and labels/: the "
            f"README's Data section){found}")


def _note_problem(problems: List[str], check: Callable, *args):
    """check(*args), or None with its DataError's message added to `problems`."""
    try:
        return check(*args)
    except DataError as error:
        problems.append(str(error))
        return None
