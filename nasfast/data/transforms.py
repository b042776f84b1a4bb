"""Turning validated (image, label) arrays into the tensors a model trains and is evaluated on.

A transform is called as `transform(image, label, index)` with an HxWx3 uint8 image and an HxW
uint8 label (255 = ignore), and returns (float image 3xHxW, ImageNet-normalised; long label HxW).

Training augmentation is the paper's: random scale, horizontal mirror, random crop, padding
where the scaled image is smaller than the crop (images with the mean colour, nearly 0 after
normalisation; labels with the ignore index). Without a seed, each call draws from torch's random
generator, as torchvision's random transforms do. With one (as training and the search run it),
its randomness comes from (seed, epoch, index) alone, so an item is the same whichever
DataLoader worker makes it and in whatever order. The epoch lives in shared memory, so
`set_epoch` reaches loader workers that are already running (persistent_workers=True): call it
before each epoch's iterator starts.
"""
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..encoder import IMAGENET_MEAN, IMAGENET_STD

IGNORE_INDEX = 255
MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)
MEAN_COLOUR = np.round(MEAN * 255).astype(np.uint8)
_MEAN_CHW, _STD_CHW = torch.from_numpy(MEAN).view(3, 1, 1), torch.from_numpy(STD).view(3, 1, 1)


def scaled_size(height: int, width: int, scale: float) -> Tuple[int, int]:
    """Each side times `scale`, rounded, and at least one pixel."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resized(array: np.ndarray, scale: float, resample: int) -> np.ndarray:
    """An image (resample bilinear) or a label (nearest) resized to scaled_size."""
    if scale == 1.0:
        return array
    h, w = scaled_size(*array.shape[:2], scale)
    return np.asarray(Image.fromarray(array).resize((w, h), resample))


def normalised(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 to the float 3xHxW a model takes: RGB / 255, ImageNet-normalised. (In torch,
    channels first: numpy's broadcast over a last axis of 3 took 12x longer, same float32 values.)"""
    channels_first = np.ascontiguousarray(image.transpose(2, 0, 1))
    if not channels_first.flags.writeable:  # a 1x1 image, contiguous already: PIL's read-only array
        channels_first = channels_first.copy()
    x = torch.from_numpy(channels_first).float()
    return x.div_(255).sub_(_MEAN_CHW).div_(_STD_CHW)


def to_tensors(image: np.ndarray, label: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 and HxW uint8 to a normalised float 3xHxW and a long HxW."""
    return normalised(image), torch.from_numpy(label.astype(np.int64))


def padded(array: np.ndarray, height: int, width: int, fill, centre: bool = False) -> np.ndarray:
    """`array` padded with `fill` up to at least height x width, at the bottom and right or evenly
    around (`centre`)."""
    h, w = array.shape[:2]
    if h >= height and w >= width:
        return array
    top, left = ((max(height - h, 0) // 2, max(width - w, 0) // 2) if centre else (0, 0))
    out = np.empty((max(h, height), max(w, width)) + array.shape[2:], dtype=array.dtype)
    out[:] = fill
    out[top:top + h, left:left + w] = array
    return out


def _pair(size: Union[int, Sequence[int]], what: str) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        pair = (size, size)
    else:
        pair = tuple(size) if isinstance(size, (list, tuple)) else ()  # 64.0 is no pair
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in pair):
        raise ValueError(f"{what} must be a positive int or a (height, width) pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])


class TrainTransform:
    """Random scale in `scale_range` (times `base_scale`), mirror with probability 1/2 when
    `mirror`, pad (evenly around, as the authors do) and random crop to `crop_size` (an int or
    (height, width)). With `seed` None, each call draws anew from torch's random generator (which
    torch.manual_seed, and a DataLoader for each worker, seed). With a seed, item `index` of epoch
    `epoch` draws from `np.random.default_rng([seed, epoch, index])`, the same at every call:
    `seed` may be changed between epochs (for new workers), `epoch` with `set_epoch`."""

    def __init__(self, crop_size: Union[int, Sequence[int]], scale_range: Sequence[float] = (0.5, 2.0),
                 base_scale: float = 1.0, mirror: bool = True, seed: Optional[int] = None):
        self.crop_size = _pair(crop_size, "crop_size")
        self.scale_range = tuple(scale_range)
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        if base_scale <= 0:
            raise ValueError(f"base_scale must be positive, got {base_scale}")
        self.base_scale, self.mirror, self.seed = base_scale, mirror, seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __call__(self, image: np.ndarray, label: np.ndarray, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(2 ** 62, ())) if self.seed is None else
                                    [self.seed, self.epoch, index])
        scale = self.base_scale * rng.uniform(*self.scale_range)
        mirrored = self.mirror and rng.random() < 0.5
        crop_h, crop_w = self.crop_size
        source_h, source_w = label.shape
        h, w = scaled_size(source_h, source_w, scale)
        # The scaled (and mirrored) image, padded evenly around up to the crop, cropped at random.
        # Only the part the crop keeps is resized: PIL's box gives the pixels of resizing it all,
        # up to rounding (labels agree at 99.7% of pixels, images within 2 levels: measured).
        top = rng.integers(0, max(h, crop_h) - crop_h + 1) - max(crop_h - h, 0) // 2
        left = rng.integers(0, max(w, crop_w) - crop_w + 1) - max(crop_w - w, 0) // 2
        rows, cols = (max(top, 0), min(top + crop_h, h)), (max(left, 0), min(left + crop_w, w))
        x0, x1 = (w - cols[1], w - cols[0]) if mirrored else cols  # in the scaled image before mirroring
        box = (x0 * source_w / w, rows[0] * source_h / h, x1 * source_w / w, rows[1] * source_h / h)
        size = (cols[1] - cols[0], rows[1] - rows[0])
        at = (slice(rows[0] - top, rows[1] - top), slice(cols[0] - left, cols[1] - left))
        out_image = np.empty((crop_h, crop_w, 3), dtype=np.uint8)
        out_image[:] = MEAN_COLOUR
        out_label = np.full((crop_h, crop_w), IGNORE_INDEX, dtype=np.uint8)
        for out, source, resample in ((out_image, image, Image.BILINEAR), (out_label, label, Image.NEAREST)):
            part = np.asarray(Image.fromarray(source).resize(size, resample, box=box))
            out[at] = part[:, ::-1] if mirrored else part
        return to_tensors(out_image, out_label)


class EvalTransform:
    """Normalises; resizes the image by `scale` first when it is not 1. The label keeps its own
    size, at which the scores are counted (the logits are upsampled to it), unless
    `resize_labels` (for training on them: nearest). With `size` (height, width, before the
    resizing), pads at the bottom and right up to it, the image to `size` times `scale`, so that
    items of different sizes batch (the padding is ignored in the labels)."""

    def __init__(self, scale: float = 1.0, size: Optional[Tuple[int, int]] = None, resize_labels: bool = False):
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale, self.size, self.resize_labels = scale, None if size is None else _pair(size, "size"), resize_labels

    def __call__(self, image: np.ndarray, label: np.ndarray, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.size is not None and (label.shape[0] > self.size[0] or label.shape[1] > self.size[1]):
            raise ValueError(f"item {index}: {label.shape[0]}x{label.shape[1]}, larger than the padded size "
                             f"{self.size[0]}x{self.size[1]}")
        image = resized(image, self.scale, Image.BILINEAR)
        if self.resize_labels:
            label = resized(label, self.scale, Image.NEAREST)
        if self.size is not None:
            image_size = scaled_size(*self.size, self.scale)
            image = padded(image, *image_size, MEAN_COLOUR)
            label = padded(label, *(image_size if self.resize_labels else self.size), IGNORE_INDEX)
        return to_tensors(image, label)
