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

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for avg, p in zip(self.average.parameters(), module.parameters()):
            avg.lerp_(p.detach(), 1.0 - self.decay)
        for avg, b in zip(self.average.buffers(), module.buffers()):
            avg.copy_(b)
