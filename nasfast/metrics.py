"""Streaming segmentation metrics and the search reward (SPEC section 5)."""
import math
import numbers
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from . import ops
from .ops.library import wants_native


class ConfusionMatrix:
    """Counts (label, prediction) pairs over a stream of batches; rows are labels.

    `update(logits_or_pred, target)`: logits N x C x h x w (upsampled bilinearly to the target
    size, then argmax; the native op fuses both) or integer predictions N x H x W; targets
    N x H x W with `ignore_index` for pixels that do not count; tensors or numpy arrays.
    `compute()` gives miou, fwiou, mean_acc, pixel_acc, iou and acc (per class) and
    reward = (miou * fwiou * mean_acc) ** (1/3);
    classes in `exclude` are left out of the three averages (their per-class values are still
    reported), and so is a class whose value is `ignore_index` (its pixels are never counted: it
    could score no hit). The int64 matrix lives on the device of the updates. `fused` (None: when the ops
    library is loaded) picks the native update or the pure-PyTorch one.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, exclude: Iterable[int] = (),
                 fused: Optional[bool] = None):
        if not _is_int(num_classes) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if not _is_int(ignore_index):
            raise TypeError(f"ignore_index must be an int, the label value not counted (255 by default), got "
                            f"{ignore_index!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.exclude = _classes(exclude, num_classes)
        if 0 <= ignore_index < num_classes and ignore_index not in self.exclude:
            self.exclude += (int(ignore_index),)
        self._update = ops.confusion_matrix_update if wants_native(fused) else ops.confusion_matrix_update_reference
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, logits_or_pred: Tensor, target: Tensor) -> None:
        logits_or_pred, target = torch.as_tensor(logits_or_pred), torch.as_tensor(target)
        if target.dim() == 2:
            target = target[None]
        if target.dim() != 3 or target.is_floating_point():
            raise ValueError(f"targets must be integer N x H x W (or H x W), got {target.dtype} {tuple(target.shape)}")
        if logits_or_pred.is_floating_point():
            scores = logits_or_pred if logits_or_pred.dim() == 4 else logits_or_pred[None]
            if not scores.is_cuda and scores.dtype not in (torch.float32, torch.float64):
                scores = scores.float()  # half precision on the CPU: upsampled in float32 (exact)
            if scores.dim() != 4 or scores.shape[1] != self.num_classes:
                raise ValueError(f"logits {tuple(logits_or_pred.shape)}: "
                                 f"expected N x {self.num_classes} (classes) x h x w")
            if scores.shape[0] != target.shape[0]:
                raise ValueError(f"logits {tuple(scores.shape)} and targets {tuple(target.shape)} differ in batch")
        else:
            scores = logits_or_pred if logits_or_pred.dim() == 3 else logits_or_pred[None]
            if scores.shape != target.shape:
                raise ValueError(f"predictions {tuple(scores.shape)} and targets {tuple(target.shape)} differ in shape")
        if self.matrix.device != scores.device:
            self.matrix = self.matrix.to(scores.device)
        self._update(self.matrix, scores, target.to(scores.device), self.ignore_index)

    def all_reduce(self) -> None:
        """Sums the matrices of every process (no-op without torch.distributed)."""
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl" and not self.matrix.is_cuda:  # a process that had no batch
                self.matrix = self.matrix.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> Dict[str, object]:
        m = self.matrix.double().cpu()
        tp = m.diag()
        labelled = m.sum(1)           # TP + FN = the class's label pixels
        predicted = m.sum(0)          # TP + FP
        union = labelled + predicted - tp
        iou = _ratio(tp, union)
        acc = _ratio(tp, labelled)
        keep = [c for c in range(self.num_classes) if c not in self.exclude]
        miou = _mean(iou[c] for c in keep if union[c] > 0)
        mean_acc = _mean(acc[c] for c in keep if labelled[c] > 0)
        weight = sum(float(labelled[c]) for c in keep)
        fwiou = sum(float(labelled[c] * iou[c]) for c in keep if labelled[c] > 0) / weight if weight else math.nan
        total = float(m.sum())
        return {
            "miou": miou, "fwiou": fwiou, "mean_acc": mean_acc,
            "pixel_acc": float(tp.sum()) / total if total else math.nan,
            "iou": iou.tolist(), "acc": acc.tolist(),
            "reward": (miou * fwiou * mean_acc) ** (1 / 3) if min(miou, fwiou, mean_acc) >= 0 else math.nan,
        }


@torch.no_grad()
def metrics_of(forward: Callable[[Tensor], Tensor], batches: Iterable[Tuple[Tensor, Tensor]], num_classes: int,
               ignore_index: int = 255, exclude: Iterable[int] = ()) -> Dict[str, object]:
    """ConfusionMatrix.compute() over the predictions of `forward` for the (inputs, labels) batches;
    NonFiniteScores where a score is NaN or infinite."""
    matrix = ConfusionMatrix(num_classes, ignore_index, exclude)
    batches_seen, non_finite = 0, 0
    for inputs, labels in batches:
        scores = forward(inputs)
        non_finite = (~torch.isfinite(scores)).any().int() + non_finite  # on the device: read once, at the end
        matrix.update(scores, labels)
        batches_seen += 1
    bad = int(non_finite)
    if bad:
        raise NonFiniteScores(f"the model's scores are NaN or infinite in {bad} batch{'es' if bad > 1 else ''} "
                              f"of {batches_seen}: its weights have diverged")
    return matrix.compute()


class NonFiniteScores(ValueError):
    """Scores with NaN or infinite values: their argmax (class 0 for NaN) would score as predictions."""


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _classes(exclude, num_classes: int) -> Tuple[int, ...]:
    """`exclude` (a class or classes) as a tuple of ints, checked."""
    classes = (exclude,) if _is_int(exclude) else exclude
    try:
        classes = tuple(classes)
    except TypeError:
        classes = None
    if classes is None or not all(map(_is_int, classes)):
        raise TypeError(f"exclude must be a class index or a sequence of them, got {exclude!r}")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"exclude: classes {bad} are not in [0, {num_classes})")
    return tuple(int(c) for c in classes)


def _ratio(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b > 0, a / b.clamp(min=1), torch.full_like(a, math.nan))


def _mean(values) -> float:
    values: List[float] = [float(v) for v in values]
    return sum(values) / len(values) if values else math.nan
