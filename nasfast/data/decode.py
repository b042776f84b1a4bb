"""Reading a dataset's files: images turned as their EXIF orientation says, labels as class
indices, text lists in the encodings editors write; each problem a `DataError` naming the file."""
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image, ImageOps


class DataError(ValueError):
    """A data file that cannot be used, with its path and the reason."""


EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)  # orientations that swap width and height


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: as stored), without decoding a PNG to look for a late eXIf chunk."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return image.getexif().get(EXIF_ORIENTATION, 1)


def turned_size(image: Image.Image) -> Tuple[int, int]:
    """(width, height) of an opened image once loaded, turned as its EXIF orientation says. Pillow
    turns a TIFF itself, and gives its size turned already."""
    if orientation(image) not in QUARTER_TURNS:
        return image.size
    if image.format == "TIFF" and image.size != (image.tag_v2.get(256), image.tag_v2.get(257)):
        return image.size  # 256, 257: the stored width and height
    return image.size[::-1]


def missing_file(path, what: str) -> DataError:
    """The error for a dataset's image or label file that is not there."""
    return DataError(f"{path}: {what} file is missing")


def decode(path: Path, what: str) -> Image.Image:
    """The fully decoded image (PIL reads lazily, so a truncated file only fails on load()), turned
    as its EXIF orientation says: as viewers and labelling tools show a camera's photo."""
    if not path.is_file():
        raise missing_file(path, what)
    try:
        with Image.open(path) as image:
            if what == "label" and _colour_of_16_bits(image):
                raise DataError(f"{path}: a 16-bit colour label (as OpenCV writes a 3-channel uint16 array), which "
                                f"Pillow reads as 8 bits a channel, losing the class indices; save it as a 16-bit "
                                f"grey PNG (one channel) or an 8-bit one")
            image.load()
            if orientation(image) != 1:
                image = ImageOps.exif_transpose(image)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable or truncated {what} ({error})") from None
    return image


def _colour_of_16_bits(image: Image.Image) -> bool:
    """Whether the file stores colour (or grey and alpha) at 16 bits a sample: Pillow keeps only each
    sample's high byte of those (its modes RGB, RGBA hold 8)."""
    return any(isinstance(tile[3], str) and tile[3].split(";")[0] in ("RGB", "RGBA", "LA") and ";16" in tile[3]
               for tile in image.tile)


def to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I"):  # 16-bit grey ("I;16", or "I" from older Pillow): convert would clip it
        grey = (np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def label_values(label: Image.Image, path: Path) -> np.ndarray:
    """The label's values (HxW): uint8 from an 8-bit (L, P) or 1-bit image, or from an RGB one whose
    channels are equal (grey saved in colour); wider integers from a 16 or 32-bit one. An alpha
    channel that is opaque everywhere is dropped."""
    mode = label.mode  # as the file has it, for the error
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
                    f"palette), got mode {mode}; save it as an 8-bit grey PNG of class indices{hint}")


def _equal_channels(pixels: np.ndarray) -> bool:
    return bool((pixels[:, :, 1:] == pixels[:, :, :1]).all())


def read_text(path: Path) -> str:
    """A text file written as UTF-8 (a byte order mark is dropped) or UTF-16 with its byte order mark
    (Windows' Notepad)."""
    data = path.read_bytes()
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
