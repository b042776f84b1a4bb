"""python -m nasfast.data: checks a dataset before a long run. Reads every image and label of its
training and validation splits once, lists the problems of a folder's layout and the files that
cannot be used (all are read; the first 20 are named, then how many more), and counts the pixels of
each class, warning of classes without any and of images in both splits."""
import argparse
import sys
from typing import List, Optional, Tuple

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..cli import counted, loader_workers, non_negative_int, path_text, run
from ..progress import progress_bar
from .datasets import DATASETS, absent_classes_warning, find_data_root, make_dataset, split_warning
from .decode import DataError
from .folder import FolderDataset, LayoutProblems
from .segmentation import SegmentationDataset
from .transforms import IGNORE_INDEX

PROG = "python -m nasfast.data"
SHOWN_PROBLEMS = 20


class _LabelPixels(Dataset):
    """Item i: (the pixels of each label value in item i of `dataset`, None), or (None, its problem)."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[Optional[np.ndarray], Optional[str]]:
        try:
            return self.dataset.label_pixels(index), None
        except DataError as error:
            return None, str(error)


def census(dataset: SegmentationDataset, workers: int, show_progress: bool, what: str) -> Tuple[np.ndarray, List[str]]:
    """The pixels of each label value 0-255 over the split's usable items, and the problems of the others."""
    loader = DataLoader(_LabelPixels(dataset), batch_size=None, num_workers=loader_workers(workers))
    pixels, problems = np.zeros(256, np.int64), []
    for counts, problem in progress_bar(loader, desc=f"reading {what}", unit="image", leave=False,
                                        disable=not show_progress):
        if problem:
            problems.append(problem)
        else:
            pixels += np.asarray(counts)
    return pixels, problems


def pixel_table(splits: List[Tuple[str, np.ndarray]], class_names) -> str:
    """The share of each class's pixels (and of the ignored ones) in each split."""
    width = max(len(name) for name in list(class_names) + ["ignored"])
    columns = [max(8, len(split)) for split, _ in splits]  # "100.00%", or the split's name
    rows = [f"  {'':<{width}}" + "".join(f" {split:>{w}}" for (split, _), w in zip(splits, columns))]
    values = [(name, c) for c, name in enumerate(class_names)] + [("ignored", IGNORE_INDEX)]
    for name, value in values:
        shares = (100 * pixels[value] / max(pixels.sum(), 1) for _, pixels in splits)
        rows.append(f"  {name:<{width}}" + "".join(f" {share:>{w - 1}.2f}%" for share, w in zip(shares, columns)))
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="camvid",
                        help="camvid, voc or folder (your own data; see the README's Data section) [camvid]")
    parser.add_argument("--data-root", type=path_text,
                        help="dataset directory [$NASFAST_DATA/<dataset>, else ~/.cache/nasfast/<dataset>]")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="processes reading the files [2]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    root = find_data_root(args.dataset, args.data_root)
    _, train_split, val_split = DATASETS[args.dataset]
    splits, layout = [], []
    for split in (train_split, val_split):
        try:
            splits.append((split, make_dataset(args.dataset, str(root), split)))
        except LayoutProblems as error:  # each said once: a split shares the images and labels of the other
            layout += [problem for problem in error.problems if problem not in layout]
    if layout:
        print(f"{args.dataset} data in {root}: the layout has {counted(len(layout), 'problem')}:", file=sys.stderr)
        for problem in layout:
            print(f"  {problem}", file=sys.stderr)
        print("(the files themselves are read once the layout is mended: run this again then)", file=sys.stderr)
        return 2
    class_names = splits[0][1].class_names
    print(f"{args.dataset} data in {root}: {len(class_names)} classes, "
          + ", ".join(f"{len(data)} {split} images" for split, data in splits))
    split_pixels, problems, warnings = read_splits(splits, args.workers, not args.no_progress)
    print("pixels per class:\n" + pixel_table(split_pixels, class_names))
    for warning in filter(None, warnings + [split_warning(splits[0][1], splits[1][1], root)]):
        print(warning, file=sys.stderr)
    unused = splits[0][1].unused_files() if isinstance(splits[0][1], FolderDataset) else []
    if unused:
        print(f"warning: {counted(len(unused), 'file')} in no split:", file=sys.stderr)
        print_some(unused)
    if problems:
        print(f"{counted(len(problems), 'file')} cannot be used:", file=sys.stderr)
        print_some(problems)
        return 2
    print("every file can be used")
    return 0


def print_some(lines: List[str]) -> None:
    """The first SHOWN_PROBLEMS lines, indented, and how many more there are."""
    for line in lines[:SHOWN_PROBLEMS]:
        print(f"  {line}", file=sys.stderr)
    if len(lines) > SHOWN_PROBLEMS:
        print(f"  ... and {len(lines) - SHOWN_PROBLEMS} more", file=sys.stderr)


def read_splits(splits, workers: int, show_progress: bool):
    """Each split's pixel counts, the problems of every file (each once), and the warnings of classes
    without a pixel. A split of the same images as the one before (no split files) is not read again."""
    split_pixels, problems, warnings, read = [], [], [], {}
    for split, data in splits:
        key = tuple(data.pairs)
        if key not in read:
            read[key] = census(data, workers, show_progress, split)
            warnings.append(absent_classes_warning(read[key][0], data.class_names, f"the {split} labels"))
        split_pixels.append((split, read[key][0]))
        problems += read[key][1]
    return split_pixels, list(dict.fromkeys(problems)), warnings


if __name__ == "__main__":
    sys.exit(run(main, PROG))
