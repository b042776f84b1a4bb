"""The base of every dataset: (image, label) file pairs. Every item is validated as it loads: a
file that is missing, unreadable or truncated, a label whose size differs from its image, or a
label value that is neither a class nor the ignore index raises `DataError` naming the file and
the problem."""
import inspect
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .decode import QUARTER_TURNS, DataError, decode, label_values, orientation, to_rgb, turned_size
from .transforms import IGNORE_INDEX, EvalTransform


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

    @property
    def transform(self) -> Callable:
        return self._transform

    @transform.setter
    def transform(self, transform: Callable) -> None:
        """TypeError for a transform that cannot be called as transform(image, label, index)."""
        try:
            inspect.signature(transform).bind(None, None, 0)
        except ValueError:  # no signature to read (a builtin): it is tried as it is
            pass
        except TypeError:
            raise TypeError(f"transform {transform!r} cannot be called as transform(image, label, index); one of "
                            f"(image, label) can be wrapped: lambda image, label, index: f(image, label)") from None
        self._transform = transform

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
        image = to_rgb(decode(image_path, "image"))
        values = label_values(decode(label_path, "label"), label_path)
        if values.shape != image.shape[:2]:
            with Image.open(image_path) as stored:
                turned = " as its EXIF orientation turns it" if orientation(stored) in QUARTER_TURNS else ""
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
        if -len(self) <= index < 0:  # as a list counts: the transform seeds its randomness with the index
            index += len(self)
        image, label = self.load(index)
        return self.transform(image, label, index)

    def image_size(self, index: int) -> Tuple[int, int]:
        """(width, height) of an image as loaded (turned by its EXIF orientation), from its file's header."""
        path = self.pairs[index][0]
        try:
            with Image.open(path) as image:
                return turned_size(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"{path}: unreadable image ({error})") from None
