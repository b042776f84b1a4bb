"""Bilinear upsample-and-add: out = high + upsample(low, size of high), align_corners=False."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .library import available


def upsample_add_reference(high: Tensor, low: Tensor) -> Tensor:
    return high + F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)


def upsample_add(high: Tensor, low: Tensor) -> Tensor:
    if available():
        return torch.ops.nasfast.upsample_add(high, low)
    return upsample_add_reference(high, low)


class UpsampleAdd(nn.Module):
    """Module form; `fused` is decided at construction (None: use the library when loaded)."""

    def __init__(self, fused=None):
        super().__init__()
        self.fused = available() if fused is None else bool(fused)

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        return upsample_add_reference(high, low)
