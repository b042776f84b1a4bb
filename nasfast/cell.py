"""The searched cell (SPEC section 3): a first op, then three branches that sum two op outputs."""
from typing import List, Sequence, Tuple

from torch import Tensor, nn

from .cell_operations import make_operation


def cell_outputs(branches: Sequence[Tuple[int, int, int, int]]) -> List[int]:
    """Indices among f[1], f[4], f[7], f[10] that no branch reads: their sum is the cell output."""
    read = {index for i, j, _, _ in branches for index in (i, j)}
    return [k for k in (1, 4, 7, 10) if k not in read]


class Cell(nn.Module):
    def __init__(self, genotype, channels: int, sep_repeats: int = 1, fused=None):
        super().__init__()
        self.first = make_operation(genotype.first_op, channels, sep_repeats, fused)
        self.left = nn.ModuleList()
        self.right = nn.ModuleList()
        inputs = []
        for i, j, o, p in genotype.branches:
            self.left.append(make_operation(o, channels, sep_repeats, fused))
            self.right.append(make_operation(p, channels, sep_repeats, fused))
            inputs += [i, j]
        self.inputs = inputs
        self.outputs = cell_outputs(genotype.branches)

    def forward(self, x: Tensor) -> Tensor:
        f: List[Tensor] = [x, self.first(x)]
        for k, (left, right) in enumerate(zip(self.left, self.right)):
            a = left(f[self.inputs[2 * k]])
            b = right(f[self.inputs[2 * k + 1]])
            f += [a, b, a + b]
        out = f[self.outputs[0]]
        for index in self.outputs[1:]:
            out = out + f[index]
        return out
