"""Separable convolution: depthwise k x k (dilated) then pointwise 1 x 1, no BN/ReLU in between."""
import torch.nn.functional as F
from torch import Tensor, nn

from .library import available


def separable_conv_reference(x: Tensor, depthwise: Tensor, pointwise: Tensor, dilation: int) -> Tensor:
    pad = dilation * (depthwise.shape[-1] // 2)
    y = F.conv2d(x, depthwise, padding=pad, dilation=dilation, groups=x.shape[1])
    return F.conv2d(y, pointwise)


def separable_conv(x: Tensor, depthwise: Tensor, pointwise: Tensor, dilation: int) -> Tensor:
    return separable_conv_reference(x, depthwise, pointwise, dilation)


class SeparableConvBNReLU(nn.Module):
    """depthwise k x k (dilation d) -> pointwise 1 x 1 -> BN -> ReLU, all C -> C, no biases."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, fused=None):
        super().__init__()
        self.dilation = dilation
        self.fused = available() if fused is None else bool(fused)
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, padding=dilation * (kernel_size // 2),
                                   dilation=dilation, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = separable_conv_reference(x, self.depthwise.weight, self.pointwise.weight, self.dilation)
        return F.relu(self.bn(y))
