"""The pieces of a training step that the search's candidates and the full training share: the
losses, one descent step, and the check that the loss stays finite."""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import upsample_cross_entropy
from .ops.upsample_add import upsampled


def segmentation_loss(logits: Tensor, aux: List[Tensor], labels: Tensor, ignore_index: int, aux_weight: float,
                      teacher: Optional[Tensor] = None, distillation: float = 0.0) -> Tensor:
    """Cross-entropy of the logits and, weighted, of each auxiliary output, all upsampled to the
    labels' size (SPEC section 3); with a teacher, plus `distillation` times the mean squared error
    between the student's and the teacher's logits, both at that size too."""
    if teacher is None or distillation <= 0:
        loss = upsample_cross_entropy(logits, labels, ignore_index)
    else:
        student = upsampled(logits, labels.shape[-2:])  # for both losses
        loss = F.cross_entropy(student, labels, ignore_index=ignore_index)
        loss = loss + distillation * F.mse_loss(student, upsampled(teacher, labels.shape[-2:]))
    for a in aux:
        loss = loss + aux_weight * upsample_cross_entropy(a, labels, ignore_index)
    return loss


def has_labelled_pixel(labels: Tensor, ignore_index: int) -> bool:
    """Whether a batch's labels hold a pixel to learn from. Training skips a batch without one (a
    random crop of sparsely labelled images can be all ignore_index): its mean loss is 0 / 0."""
    return bool((labels != ignore_index).any())


def descend(loss: Tensor, *optimizers: torch.optim.Optimizer) -> None:
    """One gradient step of every optimizer on loss."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


class NonFiniteLoss(RuntimeError):
    """A loss that became NaN or infinite: the training cannot go on."""

    def __init__(self, value: float, stage: int, step: int):
        super().__init__(f"non-finite loss ({value}) at stage {stage}, step {step}")
        self.value, self.step = value, step


def check_loss(loss: Tensor, stage: int, step: int) -> float:
    """The loss's value; NonFiniteLoss when it is NaN or infinite."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(value, stage, step)
    return value


class LateLossCheck:
    """check_loss one step late, before the next step is queued: reading a loss waits for the GPU,
    and by then the next batch has been made on the CPU while the GPU ran the step. Calling it
    returns the loss it checked (None when none was waiting)."""

    def __init__(self, stage: int):
        self.stage, self.pending = stage, None

    def __call__(self) -> Optional[float]:
        if self.pending is None:
            return None
        loss, step = self.pending
        self.pending = None
        return check_loss(loss, self.stage, step)

    def defer(self, loss: Tensor, step: int) -> None:
        self.pending = (loss.detach(), step)
