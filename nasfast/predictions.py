"""Predicted label maps as image files (evaluate --predictions DIR): one palette PNG per image, of
the image's own size, whose pixel values are the predicted class indices (usable as labels) and
whose colours are PASCAL VOC's colour map (class 0 black, 1 dark red, 2 dark green, ...)."""
import io
import os
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

from .cli import UsageError
from .files import is_replaceable_png, write_atomic
from .ops.upsample_add import upsampled


def colour_map(size: int = 256) -> List[int]:
    """PASCAL VOC's palette: the bits of a class index spread over red, green and blue, highest first."""
    palette = []
    for index in range(size):
        red = green = blue = 0
        for bit in range(8):
            red |= ((index >> (3 * bit)) & 1) << (7 - bit)
            green |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
            blue |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
        palette += [red, green, blue]
    return palette


def prediction_paths(directory: Path, root: Path, images: Sequence[Path]) -> List[Path]:
    """Where each image's predictions go: DIR/<its path under the data root>.png (DIR/<its name>.png
    for an image elsewhere). UsageError where two images would share one."""
    def target(image: Path) -> Path:
        try:
            return directory / image.relative_to(root).with_suffix(".png")
        except ValueError:
            return directory / image.with_suffix(".png").name
    paths = [target(Path(os.path.abspath(image))) for image in images]
    if len(set(paths)) < len(paths):
        raise UsageError(f"--predictions {directory}: two images would write the same file; images of the same "
                         f"name outside the data root {root}")
    return paths


def refuse_to_replace(directory: Path, paths: Sequence[Path], data_files: Sequence[Path],
                      option: str = "--predictions", data: str = "the dataset's images and labels") -> None:
    """UsageError where a predictions file would replace one of `data_files`, or a file that is not
    an earlier prediction (a palette PNG we wrote: a label may be one too), or where a folder it
    needs is a file."""
    files = {os.path.realpath(path) for path in data_files}
    clash = next((path for path in paths if os.path.realpath(path) in files), None)
    if clash is not None:
        raise UsageError(f"{option} {directory} would write {clash}, one of {data}: choose a folder outside them")
    other = next((path for path in paths if os.path.lexists(path) and not _is_prediction(path)), None)
    if other is not None:
        raise UsageError(f"{option} {directory} would replace {other}, which is not an earlier prediction of "
                         f"nasfast: choose another folder, or move it")
    top = Path(os.path.abspath(directory))
    folders = {folder for path in paths for folder in path.parents if folder == top or top in folder.parents}
    blocking = next((folder for folder in sorted(folders) if os.path.lexists(folder) and not folder.is_dir()), None)
    if blocking is not None:
        needed = "is a file" if blocking == top else f"needs the folder {blocking}, which is a file"
        raise UsageError(f"{option} {directory} {needed}: choose another folder, or move it")


MARK = ("Software", "nasfast predictions")  # a text chunk of each PNG written, telling it from a label


def _is_prediction(path: Path) -> bool:
    return is_replaceable_png(str(path), lambda image: image.mode == "P" and image.info.get(MARK[0]) == MARK[1])


PALETTE = colour_map()


def make_folders(paths: Sequence[Path]) -> None:
    """The folders of the predictions' `paths`, made before the first is written: one removed
    while they are written is then an error, not made again for the rest alone."""
    for folder in sorted({path.parent for path in paths}):
        folder.mkdir(parents=True, exist_ok=True)


def write_prediction(logits: Tensor, path: Path, size: Tuple[int, int]) -> None:
    """One image's logits (classes x h x w) upsampled to its `size` (width, height; bilinear, as
    scoring does), its most likely classes written to `path` as a palette PNG: the whole file or
    none (a partial one would not be taken for a prediction to replace)."""
    width, height = size
    classes = upsampled(logits[None].float(), [height, width]).argmax(1)[0].to(torch.uint8).cpu().numpy()
    image = Image.fromarray(np.ascontiguousarray(classes))
    image.putpalette(PALETTE)  # a palette image now, its values the classes
    png, text = io.BytesIO(), PngInfo()
    text.add_text(*MARK)
    image.save(png, format="PNG", pnginfo=text)
    write_atomic(str(path), png.getvalue(), durable=False)  # thousands of files: not worth a wait each


class PredictionWriter:
    """Called with each batch's logits, in the order of `paths`: writes each image's prediction
    (write_prediction)."""

    def __init__(self, paths: Sequence[Path], sizes: Sequence[Tuple[int, int]]):
        self._items: Iterator[Tuple[Path, Tuple[int, int]]] = iter(zip(paths, sizes))
        self.written = 0

    def __call__(self, logits: Tensor) -> None:
        for one in logits:
            write_prediction(one, *next(self._items))
            self.written += 1
