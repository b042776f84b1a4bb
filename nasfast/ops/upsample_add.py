"""Bilinear upsample-and-add: out = high + upsample(low, size of high), align_corners=False."""
from typing import List

import torch
from torch import Tensor, nn

from .library import available, kernels_take, native_for, reference_where_unavailable, wants_native

if available():
    @torch.library.register_fake("nasfast::upsample_add")
    def _(high, low):  # the op's checks, for torch.compile and torch.export to meet them while tracing
        torch._check(high.dim() == 4 and low.dim() == 4 and high.shape[:2] == low.shape[:2],
                     lambda: f"upsample_add: batch and channels must match, got {list(high.shape)} and "
                             f"{list(low.shape)}")
        torch._check(high.dtype == low.dtype, lambda: f"upsample_add: dtypes differ ({high.dtype} and {low.dtype})")
        torch._check(low.shape[2] > 0 and low.shape[3] > 0, lambda: f"upsample_add: low must not be empty, got "
                                                                    f"{list(low.shape)}")
        return torch.empty_like(high, memory_format=torch.contiguous_format)

    @torch.library.register_fake("nasfast::upsample_add_backward_low")
    def _(grad, low_size):
        return grad.new_empty(low_size)


def upsampled(x: Tensor, size: List[int]) -> Tensor:
    """x bilinearly upsampled (align_corners=False) to `size`, or x itself when it has that size.
    The ATen op itself: scripted, F.interpolate would carry its Python body into an export, every
    mode and the ops of the newest torch with it, which older runtimes (a Jetson's) cannot load."""
    return x if x.shape[-2:] == size else torch._C._nn.upsample_bilinear2d(x, size, False, None)


def upsample_add_reference(high: Tensor, low: Tensor) -> Tensor:
    if high.dim() != 4 or low.dim() != 4 or high.shape[:2] != low.shape[:2]:  # as the native op: no broadcasting
        raise ValueError(f"upsample_add: high and low must be N x C x H x W and N x C x h x w, got the shapes "
                         f"{list(high.shape)} and {list(low.shape)}")
    return high + upsampled(low, high.shape[-2:])


def upsample_add(high: Tensor, low: Tensor) -> Tensor:
    """The native op when the library is loaded and takes these tensors, else the reference."""
    if native_for(high) and kernels_take(high, low):
        return torch.ops.nasfast.upsample_add(high, low)
    return upsample_add_reference(high, low)


class UpsampleAdd(nn.Module):
    """Module form. `UpsampleAdd(fused)` picks the class once, at construction: a reference
    module never refers to the native op, so it scripts without the library. Inputs the kernels
    do not take (library.kernels_take) run the reference."""

    def __new__(cls, fused=None):
        if cls is UpsampleAdd and wants_native(fused):
            cls = FusedUpsampleAdd
        return super().__new__(cls)

    def __getnewargs__(self):
        return (False,)  # copy and pickle keep the class as it is

    def __init__(self, fused=None):
        super().__init__()

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        return upsample_add_reference(high, low)


@reference_where_unavailable(UpsampleAdd)
class FusedUpsampleAdd(UpsampleAdd):
    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        if not kernels_take(high, low):
            return upsample_add_reference(high, low)
        return torch.ops.nasfast.upsample_add(high, low)
