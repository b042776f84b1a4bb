"""Streaming confusion matrix: matrix[label, prediction] += pixel counts, in place.

`scores` are logits N x K x h x w (bilinearly upsampled to the target size, then argmax) or
predicted labels N x H x W; `target` is N x H x W with `ignore_index` for pixels that do not count.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from .library import available

if available():
    @torch.library.register_fake("nasfast::confusion_matrix_update_")
    def _(matrix, scores, target, ignore_index):
        return None


def confusion_matrix_update_reference(matrix: Tensor, scores: Tensor, target: Tensor, ignore_index: int) -> None:
    k = matrix.shape[0]
    if scores.is_floating_point():
        if scores.shape[-2:] != target.shape[-2:]:
            scores = F.interpolate(scores, size=target.shape[-2:], mode="bilinear", align_corners=False)
        scores = scores.argmax(1)
    keep = target != ignore_index
    pred, label = scores[keep].long(), target[keep].long()
    if label.numel() and (label.min() < 0 or label.max() >= k):
        raise ValueError(f"target values must be in [0, {k}) or {ignore_index}")
    matrix += torch.bincount(label * k + pred, minlength=k * k).reshape(k, k).to(matrix)


def confusion_matrix_update(matrix: Tensor, scores: Tensor, target: Tensor, ignore_index: int) -> None:
    """The native op for CPU tensors when the library is loaded, else the reference."""
    if available() and scores.device.type == "cpu" and matrix.device.type == "cpu":
        try:
            torch.ops.nasfast.confusion_matrix_update_(matrix, scores, target, ignore_index)
        except RuntimeError as error:
            if "target values" in str(error):
                raise ValueError(str(error).splitlines()[0]) from None
            raise
    else:
        confusion_matrix_update_reference(matrix, scores, target, ignore_index)
