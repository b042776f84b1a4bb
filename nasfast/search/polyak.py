"""Polyak averaging of a module's weights (an exponential moving average)."""
import torch
from torch import nn


class Polyak:
    """An exponential moving average of a module's parameters, kept as tensors beside it and given
    to it by apply(). Buffers (batch-norm statistics) are not averaged: the module keeps its own.
    A copy of the whole module took longer than a small candidate's training steps."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.parameters = list(module.parameters())  # the module's own, as an optimizer holds them
        self.average = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        """One step, average += (1 - decay) (parameter - average), in one multi-tensor op: a decoder
        has hundreds of parameters (on a GPU, as many kernel launches a step otherwise)."""
        if self.average:
            torch._foreach_lerp_(self.average, self.parameters, 1.0 - self.decay)

    @torch.no_grad()
    def apply(self) -> None:
        """Gives the module the averaged parameters, one copy_ each: their version counters move, so
        what was derived from the old values (a folded batch norm) is made again."""
        for parameter, average in zip(self.parameters, self.average):
            parameter.copy_(average)
