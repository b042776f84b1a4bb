"""A search's teacher (SPEC section 5, distillation): a TorchScript network whose logits stage 1
learns from, loaded and checked once, and the file a resumed search must find again."""
import os
from typing import Any, Dict, Optional, Sequence

import torch

from ..checkpoint import check_classes, export_info, refuse_damaged
from .cache import crc32


def load_teacher(path: Optional[str], device: torch.device, class_names: Sequence[str]):
    """The teacher's logits as a function of images; it is tried on one small image first, so that
    a teacher of another dataset is refused before the caching, not in every candidate (and an
    export of python -m nasfast.export must name the dataset's classes)."""
    if path is None:
        return None
    num_classes = len(class_names)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher {path}: no such TorchScript file")
    refuse_damaged(path, "copy it again, or export it again")
    try:
        teacher = torch.jit.load(path, map_location=device).eval()
    except RuntimeError as error:
        reason = str(error).splitlines()[0].split(". ")[0]  # its first sentence
        raise ValueError(f"teacher {path} is not a TorchScript file ({reason})") from None
    with torch.no_grad():
        try:
            logits = teacher(torch.zeros(1, 3, 64, 64, device=device))
        except RuntimeError as error:
            raise ValueError(f"teacher {path} fails on a 64x64 image: {str(error).splitlines()[0][:120]}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != num_classes:
        got = f"{tuple(logits.shape)} logits" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"teacher {path} gives {got} for a 1x3x64x64 image; the dataset needs N x {num_classes} "
                         f"x H x W logits")
    if not torch.isfinite(logits).all():
        raise ValueError(f"teacher {path} gives non-finite logits (NaN or inf) for a 1x3x64x64 image")
    try:
        info = export_info(path)
    except ValueError:  # not an export of nasfast's: its logits were all there was to check
        return teacher
    check_classes(f"teacher {path}", class_names, info)
    return teacher


def teacher_crc32(path: str) -> int:
    """The teacher file's CRC-32: what a resumed search checks, as it may give the file elsewhere."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher {path}: no such TorchScript file (moved? give --teacher where it is now)")
    return crc32(path)


def check_same_teacher(path: Optional[str], found: Dict[str, Any], recorded: Optional[Dict[str, Any]],
                       run_dir: str) -> None:
    """A resumed search's teacher must be the file it began with, wherever it is now."""
    if path and recorded and recorded.get("teacher") is not None and found["teacher"] != recorded["teacher"]:
        raise ValueError(f"teacher {path} is not the file the search in {run_dir} began with (its bytes differ): "
                         f"give --teacher that file")
