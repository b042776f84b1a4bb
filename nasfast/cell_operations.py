"""The 11 cell operations of SPEC section 3 (all C -> C channels, stride 1, "same" padding)."""
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .genotype import OPERATIONS
from .ops import SeparableConvBNReLU


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class GlobalPooling(nn.Module):
    """Global average pool -> conv 1x1 -> BN -> ReLU -> bilinear back to the input size."""

    def __init__(self, channels: int):
        super().__init__()
        self.project = ConvBNReLU(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(F.adaptive_avg_pool2d(x, 1))
        # Bilinear upsampling of a 1x1 map is its value everywhere, so it is broadcast: F.interpolate
        # would blend the value with itself per pixel, and its backward cost 8x the broadcast's.
        return y.expand_as(x)


class Zero(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


def separable(channels: int, kernel_size: int, dilation: int, repeats: int, fused) -> nn.Module:
    return nn.Sequential(*[SeparableConvBNReLU(channels, kernel_size, dilation, fused=fused)
                           for _ in range(repeats)])


# name -> builder(channels, sep_repeats, fused), for each of genotype.OPERATIONS
BUILDERS: Dict[str, Callable[[int, int, object], nn.Module]] = {
    "conv1x1": lambda c, r, f: ConvBNReLU(c, c, 1),
    "conv3x3": lambda c, r, f: ConvBNReLU(c, c, 3),
    "sep3x3": lambda c, r, f: separable(c, 3, 1, r, f),
    "sep5x5": lambda c, r, f: separable(c, 5, 1, r, f),
    "gap": lambda c, r, f: GlobalPooling(c),
    "conv3x3_d3": lambda c, r, f: ConvBNReLU(c, c, 3, dilation=3),
    "conv3x3_d12": lambda c, r, f: ConvBNReLU(c, c, 3, dilation=12),
    "sep3x3_d3": lambda c, r, f: separable(c, 3, 3, r, f),
    "sep5x5_d6": lambda c, r, f: separable(c, 5, 6, r, f),
    "skip": lambda c, r, f: nn.Identity(),
    "zero": lambda c, r, f: Zero(),
}


def make_operation(op_id: int, channels: int, sep_repeats: int = 1, fused=None) -> nn.Module:
    """Operation `op_id` of a genotype (an index into genotype.OPERATIONS)."""
    return BUILDERS[OPERATIONS[op_id]](channels, sep_repeats, fused)
