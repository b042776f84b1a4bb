"""The pieces of a training step that the search's candidates and the full training share: the
losses, one descent step, and the check that the loss stays finite."""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def segmentation_loss(logits: Tensor, aux: List[Tensor], labels: Tensor, ignore_index: int,
                      aux_weight: float) -> Tensor:
    def ce(x: Tensor) -> Tensor:
        x = F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(x, labels, ignore_index=ignore_index)

    loss = ce(logits)
    for a in aux:
        loss = loss + aux_weight * ce(a)
    return loss


def descend(loss: Tensor, *optimizers: torch.optim.Optimizer) -> None:
    """One gradient step of every optimizer on loss."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


def distillation_loss(logits: Tensor, teacher: Tensor, size) -> Tensor:
    """The mean squared error between the student's and the teacher's logits, each upsampled to
    `size`, the labels' (SPEC section 3: losses upsample the logits to the label size)."""
    def resized(x: Tensor) -> Tensor:
        return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.mse_loss(resized(logits), resized(teacher))


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
