"""Separable convolution: depthwise k x k (dilated) then pointwise 1 x 1, no BN/ReLU in between.

Native ops (library loaded): `nasfast::sep_conv(x, depthwise, pointwise, dilation)` (differentiable)
and, for inference, `nasfast::sep_conv_bn_relu(x, depthwise, pointwise_folded, bias, dilation)`
= relu(sep_conv(...) + bias) with BN folded into the pointwise weights (differentiable too).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .library import available, kernels_take, native_for, reference_where_unavailable, wants_native

if available():
    @torch.library.register_fake("nasfast::sep_conv")
    def _(x, depthwise, pointwise, dilation):
        _check_separable(x, depthwise, pointwise, dilation)
        return x.new_empty((x.shape[0], pointwise.shape[0], x.shape[2], x.shape[3]))

    @torch.library.register_fake("nasfast::sep_conv_bn_relu")
    def _(x, depthwise, pointwise, bias, dilation):
        _check_separable(x, depthwise, pointwise, dilation)
        torch._check(bias.dim() == 1 and bias.shape[0] == pointwise.shape[0] and bias.dtype == x.dtype,
                     lambda: f"sep_conv_bn_relu: bias must have {pointwise.shape[0]} values of x's dtype, got "
                             f"{bias.dtype} {list(bias.shape)}")
        return x.new_empty((x.shape[0], pointwise.shape[0], x.shape[2], x.shape[3]))

    @torch.library.register_fake("nasfast::sep_conv_backward")
    def _(grad, x, depthwise, pointwise, dilation, output_mask):
        return tuple(t.new_empty(t.shape) if needed else None
                     for t, needed in zip((x, depthwise, pointwise), output_mask))


def _check_separable(x: Tensor, depthwise: Tensor, pointwise: Tensor, dilation: int) -> None:
    """The op's checks (csrc/checks.h), for torch.compile and torch.export to meet them while tracing."""
    torch._check(x.dim() == 4, lambda: f"sep_conv: x must be N x C x H x W, got {list(x.shape)}")
    channels = x.shape[1]
    torch._check(depthwise.dim() == 4 and depthwise.shape[0] == channels and depthwise.shape[1] == 1
                 and depthwise.shape[2] == depthwise.shape[3] and depthwise.shape[2] % 2 == 1,
                 lambda: f"sep_conv: depthwise weight must be C x 1 x k x k with C = {channels} and k odd, got "
                         f"{list(depthwise.shape)}")
    torch._check(pointwise.dim() == 4 and pointwise.shape[2:] == (1, 1) or pointwise.dim() == 2,
                 lambda: f"sep_conv: pointwise weight must be Cout x C x 1 x 1, got {list(pointwise.shape)}")
    torch._check(pointwise.shape[1] == channels, lambda: f"sep_conv: pointwise weight must have {channels} input "
                                                         f"channels, got {list(pointwise.shape)}")
    torch._check(dilation >= 1, lambda: f"sep_conv: dilation must be >= 1, got {dilation}")
    torch._check(x.dtype == depthwise.dtype == pointwise.dtype,
                 lambda: f"sep_conv: x and weights must have the same dtype, got {x.dtype}, {depthwise.dtype} and "
                         f"{pointwise.dtype}")


def _depthwise_reference(x: Tensor, depthwise: Tensor, dilation: int) -> Tensor:
    pad = dilation * (depthwise.shape[-1] // 2)
    return F.conv2d(x, depthwise, padding=pad, dilation=dilation, groups=x.shape[1])


def separable_conv_reference(x: Tensor, depthwise: Tensor, pointwise: Tensor, dilation: int) -> Tensor:
    return F.conv2d(_depthwise_reference(x, depthwise, dilation), pointwise)


def separable_conv_bn_relu_reference(x: Tensor, depthwise: Tensor, pointwise: Tensor, bias: Tensor,
                                     dilation: int) -> Tensor:
    return F.relu(F.conv2d(_depthwise_reference(x, depthwise, dilation), pointwise, bias))


def separable_conv(x: Tensor, depthwise: Tensor, pointwise: Tensor, dilation: int) -> Tensor:
    """The native op when the library is loaded and takes these tensors (kernels_take: their dtype
    and device), else the reference. For square kernels of odd size: the native op refuses others,
    and with them the reference's output would not keep the input's size."""
    if native_for(x) and kernels_take(x, depthwise):
        return torch.ops.nasfast.sep_conv(x, depthwise, pointwise, dilation)
    return separable_conv_reference(x, depthwise, pointwise, dilation)


def separable_conv_bn_relu(x: Tensor, depthwise: Tensor, pointwise: Tensor, bias: Tensor, dilation: int) -> Tensor:
    """relu(separable_conv(x, depthwise, pointwise) + bias): the inference form, BN folded."""
    if native_for(x) and kernels_take(x, depthwise):
        return torch.ops.nasfast.sep_conv_bn_relu(x, depthwise, pointwise, bias, dilation)
    return separable_conv_bn_relu_reference(x, depthwise, pointwise, bias, dilation)


def fold_batch_norm(pointwise: Tensor, running_mean: Tensor, running_var: Tensor, eps: float,
                    weight: Optional[Tensor], bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Pointwise weights and bias such that conv(., w) + b == BN(conv(., pointwise)) in eval mode."""
    scale = torch.rsqrt(running_var + eps)
    shift = -running_mean * scale
    if weight is not None:
        scale = scale * weight
        shift = shift * weight
    if bias is not None:
        shift = shift + bias
    return pointwise * scale.view(-1, 1, 1, 1), shift


class SeparableConvBNReLU(nn.Module):
    """depthwise k x k (dilation d) -> pointwise 1 x 1 -> BN -> ReLU, all C -> C, no biases.

    `fused` (None: when the ops library is loaded) picks the class once, at construction: a
    reference module never refers to the native ops, so it scripts without the library. The
    fused one runs `sep_conv` then BN + ReLU in training, and one `sep_conv_bn_relu` in eval (BN
    folded at each call; `folded()` folds it once, as the export does). Both have the same
    submodules and state dict. On CUDA tensors the fused module trains with cuDNN unless built
    with fused=True, and infers with the native kernel: at the decoder's shapes cuDNN's
    forward+backward was faster at 21 of 32, the native folded block at 29 of 32
    (bench/RESULTS.md, H100). Inputs the kernels do not take
    (library.kernels_take) run the reference.
    """

    def __new__(cls, channels=None, kernel_size=None, dilation=1, fused=None):
        if cls is SeparableConvBNReLU and channels is not None and wants_native(fused):
            cls = FusedSeparableConvBNReLU
        return super().__new__(cls)

    def __getnewargs__(self):
        return ()  # copy and pickle keep the class as it is

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, fused=None):
        super().__init__()
        if kernel_size % 2 != 1 or dilation < 1:
            raise ValueError(f"SeparableConvBNReLU: expected an odd kernel_size and dilation >= 1, "
                             f"got {kernel_size} and {dilation}")
        self.dilation = dilation
        self.trains_native_on_cuda = fused is True
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, padding=dilation * (kernel_size // 2),
                                   dilation=dilation, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.reference_forward(x)

    def reference_forward(self, x: Tensor) -> Tensor:
        y = separable_conv_reference(x, self.depthwise.weight, self.pointwise.weight, self.dilation)
        return F.relu(self.bn(y))

    def folded(self) -> nn.Module:
        """This block for inference (what the export writes): its batch norm's eval-mode transform
        folded into the pointwise weights and a bias, on the native ops where the block is."""
        native = isinstance(self, FusedSeparableConvBNReLU)
        return (FusedFoldedSeparableConvReLU if native else FoldedSeparableConvReLU)(self)


@reference_where_unavailable(SeparableConvBNReLU)
class FusedSeparableConvBNReLU(SeparableConvBNReLU):
    def forward(self, x: Tensor) -> Tensor:
        if not kernels_take(x, self.depthwise.weight):
            return self.reference_forward(x)
        running_mean, running_var = self.bn.running_mean, self.bn.running_var
        if self.training or running_mean is None or running_var is None:
            if x.is_cuda and not self.trains_native_on_cuda:
                return self.reference_forward(x)
            y = torch.ops.nasfast.sep_conv(x, self.depthwise.weight, self.pointwise.weight, self.dilation)
            return F.relu(self.bn(y))
        # Folded at each call, from the weights as they are now (a fold kept between calls missed
        # weights written through .data, and put constants into a trace); folded once: folded().
        pointwise, bias = fold_batch_norm(self.pointwise.weight, running_mean, running_var, self.bn.eps,
                                          self.bn.weight, self.bn.bias)
        return torch.ops.nasfast.sep_conv_bn_relu(x, self.depthwise.weight, pointwise, bias, self.dilation)


class FoldedSeparableConvReLU(nn.Module):
    """relu(pointwise(depthwise(x)) + bias): a SeparableConvBNReLU for inference, its batch norm
    folded (SeparableConvBNReLU.folded). The fold is done once, not at each call."""

    def __init__(self, block: SeparableConvBNReLU):
        super().__init__()
        self.dilation = block.dilation
        self.depthwise = block.depthwise
        bn = block.bn
        with torch.no_grad():
            pointwise, bias = fold_batch_norm(block.pointwise.weight, bn.running_mean, bn.running_var, bn.eps,
                                              bn.weight, bn.bias)
        self.pointwise = nn.Parameter(pointwise)
        self.bias = nn.Parameter(bias)

    def forward(self, x: Tensor) -> Tensor:
        return separable_conv_bn_relu_reference(x, self.depthwise.weight, self.pointwise, self.bias, self.dilation)


@reference_where_unavailable(FoldedSeparableConvReLU)
class FusedFoldedSeparableConvReLU(FoldedSeparableConvReLU):
    def forward(self, x: Tensor) -> Tensor:
        if not kernels_take(x, self.depthwise.weight):
            return separable_conv_bn_relu_reference(x, self.depthwise.weight, self.pointwise, self.bias, self.dilation)
        return torch.ops.nasfast.sep_conv_bn_relu(x, self.depthwise.weight, self.pointwise, self.bias, self.dilation)
