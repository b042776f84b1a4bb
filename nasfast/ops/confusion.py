"""Streaming confusion matrix: matrix[label, prediction] += pixel counts, in place.

`scores` are logits N x K x h x w (bilinearly upsampled to the target size, align_corners=False,
then argmax; the native op fuses both, so neither map is materialised) or integer predictions
N x H x W; `target` is N x H x W with `ignore_index` for pixels that do not count.
"""
import torch
from torch import Tensor

from .library import available, kernels_take, native_for
from .upsample_add import upsampled

if available():
    @torch.library.register_fake("nasfast::confusion_matrix_update_")
    def _(matrix, scores, target, ignore_index):
        _checked_size(matrix, scores, target)  # the op's checks, for torch.compile and torch.export while tracing
        return None


def confusion_matrix_update_reference(matrix: Tensor, scores: Tensor, target: Tensor, ignore_index: int) -> None:
    k = _checked_size(matrix, scores, target)
    if target.numel() == 0:  # nothing to count (and no size to upsample to)
        return
    if scores.is_floating_point():
        scores = upsampled(scores, target.shape[-2:]).argmax(1)
    target = target.long()  # compared as integers: a uint8 target never equals an ignore_index of -1
    keep = target != ignore_index
    pred, label = scores[keep].long(), target[keep]
    if label.numel() and (label.min() < 0 or label.max() >= k):
        raise ValueError(f"target values must be in [0, {k}) or {ignore_index}")
    if pred.numel() and (pred.min() < 0 or pred.max() >= k):
        raise ValueError(f"predictions must be in [0, {k})")
    matrix += torch.bincount(label * k + pred, minlength=k * k).reshape(k, k).to(matrix)


def _checked_size(matrix: Tensor, scores: Tensor, target: Tensor) -> int:
    """K, with the native op's checks of the shapes and types, as ValueErrors."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.dtype != torch.int64:
        raise ValueError("matrix must be a K x K int64 tensor")
    k = matrix.shape[0]
    if target.dim() != 3 or target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must be integer N x H x W, got {target.dtype} {list(target.shape)}")
    if scores.is_floating_point():
        if scores.dim() != 4 or scores.shape[0] != target.shape[0] or scores.shape[1] != k:
            raise ValueError(f"logits must be N x K x h x w with K = {k}, got {list(scores.shape)}")
        if scores.shape[2] == 0 or scores.shape[3] == 0:
            raise ValueError("empty logits")
    elif scores.shape != target.shape:
        raise ValueError(f"predictions {list(scores.shape)} and targets {list(target.shape)} differ in shape")
    return k


def confusion_matrix_update(matrix: Tensor, scores: Tensor, target: Tensor, ignore_index: int) -> None:
    """The native op (CPU or CUDA tensors; on the CPU, float32 or float64 logits) when the library
    is loaded, else the reference."""
    if not native_for(scores) or (scores.is_floating_point() and not kernels_take(scores, scores)):
        confusion_matrix_update_reference(matrix, scores, target, ignore_index)
        return
    try:
        torch.ops.nasfast.confusion_matrix_update_(matrix, scores, target, ignore_index)
    except RuntimeError as error:
        message = str(error).splitlines()[0]
        if message.startswith("confusion_matrix_update_: "):  # the op's checks: as the reference's ValueErrors
            raise ValueError(message.replace("confusion_matrix_update_: ", "")) from None
        raise
