"""Polyak averaging of a module's weights (an exponential moving average)."""
import copy

import torch
from torch import nn


class Polyak:
    """Keeps an averaged copy of `module`'s parameters; buffers (BN statistics) are copied."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.average = copy.deepcopy(module).eval()
        for p in self.average.parameters():
            p.requires_grad_(False)
        self._averaged = list(self.average.parameters()), list(self.average.buffers())
        self._source = None  # (module, its parameters, its buffers), from the first update with it

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One step of the average, in two multi-tensor ops rather than one op per tensor: a decoder
        has hundreds (on a GPU, as many kernel launches a step). As an optimizer does, it keeps the
        module's tensors from the first update (walking the module took longer than the ops)."""
        if self._source is None or self._source[0] is not module:
            self._source = module, list(module.parameters()), list(module.buffers())
        (_, parameters, buffers), (averaged_parameters, averaged_buffers) = self._source, self._averaged
        if parameters:
            torch._foreach_lerp_(averaged_parameters, parameters, 1.0 - self.decay)
        if buffers:
            torch._foreach_copy_(averaged_buffers, buffers)
