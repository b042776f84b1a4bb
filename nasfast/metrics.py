"""Streaming segmentation metrics and the search reward (SPEC section 5)."""
import math
from typing import Dict, Iterable, List

import torch
from torch import Tensor

from .ops import confusion_matrix_update, confusion_matrix_update_reference


class ConfusionMatrix:
    """Counts (label, prediction) pairs over a stream of batches; rows are labels.

    `update(logits_or_pred, target)`: logits N x C x h x w (upsampled bilinearly to the target
    size, then argmax) or integer predictions N x H x W; targets N x H x W with `ignore_index`
    for pixels that do not count. `compute()` gives miou, fwiou, mean_acc, pixel_acc, iou (per
    class) and reward = (miou * fwiou * mean_acc) ** (1/3); classes in `exclude` are left out of
    the three averages (their per-class values are still reported).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, exclude: Iterable[int] = (),
                 fused=None):
        self.num_classes = num_classes
        self._update = confusion_matrix_update if fused is not False else confusion_matrix_update_reference
        self.ignore_index = ignore_index
        self.exclude = tuple(exclude)
        bad = [c for c in self.exclude if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"exclude: classes {bad} are not in [0, {num_classes})")
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, logits_or_pred: Tensor, target: Tensor) -> None:
        if target.dim() == 2:
            target = target[None]
        if logits_or_pred.is_floating_point():
            logits = logits_or_pred if logits_or_pred.dim() == 4 else logits_or_pred[None]
            if logits.shape[1] != self.num_classes:
                raise ValueError(f"logits have {logits.shape[1]} classes, expected {self.num_classes}")
            if logits.shape[0] != target.shape[0]:
                raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ in batch")
            scores = logits
        else:
            scores = logits_or_pred if logits_or_pred.dim() == 3 else logits_or_pred[None]
            if scores.shape != target.shape:
                raise ValueError(f"predictions {tuple(scores.shape)} and targets {tuple(target.shape)} differ in shape")
        matrix = self.matrix if self.matrix.device == scores.device else self.matrix.to(scores.device)
        self._update(matrix, scores, target.to(scores.device), self.ignore_index)
        if matrix is not self.matrix:
            self.matrix.copy_(matrix)

    def all_reduce(self) -> None:
        """Sums the matrices of every process (no-op without torch.distributed)."""
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
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


def _ratio(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b > 0, a / b.clamp(min=1), torch.full_like(a, math.nan))


def _mean(values) -> float:
    values: List[float] = [float(v) for v in values]
    return sum(values) / len(values) if values else math.nan
