"""Model size: parameters and multiply-adds of convolutions."""
import numbers
from typing import List, Sequence, Union

import torch
from torch import nn

from .ops import SeparableConvBNReLU

Shape = Sequence[int]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _example(shape: Shape, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(shape, (list, tuple)) or len(shape) not in (3, 4) or \
            not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in shape):
        given = f"a tensor of shape {tuple(shape.shape)}" if isinstance(shape, torch.Tensor) else repr(shape)
        raise ValueError(f"input_shape must be (C, H, W) or (1, C, H, W) of positive ints (a list of them for "
                         f"the decoder), got {given}")
    shape = tuple(shape)
    return like.new_zeros(shape if len(shape) == 4 else (1,) + shape)


def _conv_madds(conv: nn.Conv2d, output_numel: int) -> int:
    kh, kw = conv.kernel_size
    return output_numel * (conv.in_channels // conv.groups) * kh * kw


def count_madds(module: nn.Module, input_shape: Union[Shape, List[Shape]]) -> int:
    """Multiply-adds of every Conv2d in one forward pass at batch size 1.

    `input_shape` is (C, H, W) or (1, C, H, W), or a list of such shapes for a module taking a
    list of tensors (the decoder).
    """
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError("count_madds counts with forward hooks, which a TorchScript module does not run: count the "
                        "model before scripting it")
    total = 0

    def conv_hook(conv: nn.Conv2d, inputs, output):
        nonlocal total
        total += _conv_madds(conv, output[0].numel())

    def separable_hook(block: SeparableConvBNReLU, inputs, output):
        # The block applies its convolutions' weights directly (or through a fused op), so its
        # Conv2d children never run as modules.
        nonlocal total
        total += _conv_madds(block.depthwise, output[0].numel())
        total += _conv_madds(block.pointwise, output[0].numel())

    nested = isinstance(input_shape, (list, tuple)) and len(input_shape) > 0 and \
        isinstance(input_shape[0], (list, tuple))
    like = next((p for p in module.parameters() if p.is_floating_point()), torch.zeros(()))  # dtype and device
    example = [_example(s, like) for s in input_shape] if nested else _example(input_shape, like)
    separables = [m for m in module.modules() if isinstance(m, SeparableConvBNReLU)]
    counted_by_block = {id(c) for b in separables for c in (b.depthwise, b.pointwise)}
    handles = [b.register_forward_hook(separable_hook) for b in separables]
    handles += [m.register_forward_hook(conv_hook) for m in module.modules()
                if isinstance(m, nn.Conv2d) and id(m) not in counted_by_block]
    modes = [(m, m.training) for m in module.modules()]  # each its own: a frozen part stays in eval
    try:
        module.eval()
        with torch.no_grad():
            module(example)
    finally:
        for m, training in modes:
            m.training = training
        for h in handles:
            h.remove()
    return total
