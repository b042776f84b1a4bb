"""Turning (image, label) arrays into training and evaluation tensors.

Training augmentation is the paper's: random scale, horizontal mirror, random crop (padding
images with the mean, labels with the ignore index). Its randomness comes from
(seed, epoch, index) alone, so results do not depend on DataLoader workers or order; call
`set_epoch` at the start of each epoch.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..encoder import IMAGENET_MEAN, IMAGENET_STD
from .datasets import IGNORE_INDEX

MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)


def resize(image: np.ndarray, label: np.ndarray, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    if scale == 1.0:
        return image, label
    h, w = label.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return (np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
            np.asarray(Image.fromarray(label).resize(size, Image.NEAREST)))


def to_tensors(image: np.ndarray, label: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    x = (image.astype(np.float32) / 255 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy()), torch.from_numpy(label.astype(np.int64))


def pad(image: np.ndarray, label: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pads bottom/right up to height x width: images with the mean colour, labels with ignore."""
    h, w = label.shape
    if h >= height and w >= width:
        return image, label
    padded_image = np.empty((max(h, height), max(w, width), 3), dtype=np.uint8)
    padded_image[:] = np.round(MEAN * 255).astype(np.uint8)
    padded_label = np.full(padded_image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
    padded_image[:h, :w], padded_label[:h, :w] = image, label
    return padded_image, padded_label


class TrainTransform:
    def __init__(self, crop_size: int, scale_range: Sequence[float] = (0.5, 2.0), base_scale: float = 1.0,
                 mirror: bool = True, seed: int = 0):
        self.crop_size, self.scale_range, self.base_scale = crop_size, tuple(scale_range), base_scale
        self.mirror, self.seed, self.epoch = mirror, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, image: np.ndarray, label: np.ndarray, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, label = resize(image, label, self.base_scale * rng.uniform(*self.scale_range))
        if self.mirror and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image, label = pad(image, label, self.crop_size, self.crop_size)
        h, w = label.shape
        top = rng.integers(0, h - self.crop_size + 1)
        left = rng.integers(0, w - self.crop_size + 1)
        crop = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        return to_tensors(image[crop], label[crop])


class EvalTransform:
    """Resizes by `scale`; pads to `size` (height, width) when given, so that items batch."""

    def __init__(self, scale: float = 1.0, size: Optional[Tuple[int, int]] = None):
        self.scale, self.size = scale, size

    def __call__(self, image: np.ndarray, label: np.ndarray, index: int):
        image, label = resize(image, label, self.scale)
        if self.size is not None:
            image, label = pad(image, label, *self.size)
        return to_tensors(image, label)
