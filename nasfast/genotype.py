"""The genotype: a decoder design as data (SPEC section 3). Parse, validate, JSON, sample, count."""
import json
import math
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

OPERATIONS = ("conv1x1", "conv3x3", "sep3x3", "sep5x5", "gap", "conv3x3_d3", "conv3x3_d12",
              "sep3x3_d3", "sep5x5_d6", "skip", "zero")
NUM_BLOCKS = 3
NUM_BRANCHES = 3
NUM_INPUTS = 4  # encoder outputs


def _check_int(value: Any, field: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < high:
        raise ValueError(f"genotype {field} must be an integer in [0, {high}), got {value!r}")
    return value


def _check_list(value: Any, field: str, length: int) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ValueError(f"genotype {field} must be a list of {length} items, got {value!r}")
    return list(value)


@dataclass(frozen=True)
class Genotype:
    connectivity: Tuple[Tuple[int, int], ...]    # block k reads pool[a], pool[b]
    first_op: int                                # o0
    branches: Tuple[Tuple[int, int, int, int], ...]  # (i, j, o, p) per cell branch

    def __post_init__(self):
        for k, pair in enumerate(_check_list(self.connectivity, "connectivity", NUM_BLOCKS)):
            for n, value in enumerate(_check_list(pair, f"connectivity[{k}]", 2)):
                _check_int(value, f"connectivity[{k}][{n}]", NUM_INPUTS + k)
        _check_int(self.first_op, "cell[0] (first operation)", len(OPERATIONS))
        for k, branch in enumerate(_check_list(self.branches, "cell branches", NUM_BRANCHES), 1):
            i, j, o, p = _check_list(branch, f"cell[{k}]", 4)
            for n, (value, high) in enumerate([(i, 3 * k - 1), (j, 3 * k - 1),
                                               (o, len(OPERATIONS)), (p, len(OPERATIONS))]):
                _check_int(value, f"cell[{k}][{n}] ({'ijop'[n]})", high)
        object.__setattr__(self, "connectivity", tuple(tuple(p) for p in self.connectivity))
        object.__setattr__(self, "branches", tuple(tuple(b) for b in self.branches))

    # -- conversions -------------------------------------------------------------------------
    @classmethod
    def parse(cls, x: Any) -> "Genotype":
        """From a Genotype, the paper's nested list (Appendix A order), its JSON text, or a zoo name."""
        if isinstance(x, Genotype):
            return x
        if isinstance(x, str):
            if x in ZOO:
                return ZOO[x]
            try:
                x = json.loads(x)
            except json.JSONDecodeError:
                raise ValueError(f"genotype {x!r} is neither a zoo name ({', '.join(sorted(ZOO))}) "
                                 f"nor JSON of the nested list [[[a0, b0], [a1, b1], [a2, b2]], "
                                 f"[o0, [i1, j1, o1, p1], [i2, j2, o2, p2], [i3, j3, o3, p3]]]") from None
        connectivity, cell = _check_list(x, "(top level: [connectivity, cell])", 2)
        cell = _check_list(cell, "cell", 1 + NUM_BRANCHES)
        return cls(tuple(_check_list(connectivity, "connectivity", NUM_BLOCKS)), cell[0], tuple(cell[1:]))

    def to_list(self) -> list:
        return [[list(p) for p in self.connectivity], [self.first_op] + [list(b) for b in self.branches]]

    def to_json(self) -> str:
        return json.dumps(self.to_list())

    def __str__(self) -> str:
        return self.to_json().replace(" ", "")

    # -- the controller's view: 19 decisions --------------------------------------------------
    @staticmethod
    def decision_sizes() -> List[int]:
        sizes = [NUM_INPUTS + k for k in range(NUM_BLOCKS) for _ in range(2)] + [len(OPERATIONS)]
        for k in range(1, NUM_BRANCHES + 1):
            sizes += [3 * k - 1, 3 * k - 1, len(OPERATIONS), len(OPERATIONS)]
        return sizes

    def decisions(self) -> List[int]:
        return [v for p in self.connectivity for v in p] + [self.first_op] + [v for b in self.branches for v in b]

    @classmethod
    def from_decisions(cls, decisions: List[int]) -> "Genotype":
        d = [int(v) for v in _check_list(decisions, "decisions", len(cls.decision_sizes()))]
        connectivity = tuple((d[2 * k], d[2 * k + 1]) for k in range(NUM_BLOCKS))
        branches = tuple(tuple(d[7 + 4 * k: 11 + 4 * k]) for k in range(NUM_BRANCHES))
        return cls(connectivity, d[6], branches)

    @classmethod
    def random(cls, generator: Optional[torch.Generator] = None) -> "Genotype":
        """Uniform over the valid space: every decision uniform over its range."""
        return cls.from_decisions([int(torch.randint(n, (), generator=generator)) for n in cls.decision_sizes()])

    def canonical_key(self) -> tuple:
        """Equal for designs that differ only by mirror images: the two inputs of a block, or the
        two (input, op) halves of a cell branch, swapped (both are summed)."""
        return (tuple(tuple(sorted(p)) for p in self.connectivity), self.first_op,
                tuple(tuple(sorted([(i, o), (j, p)])) for i, j, o, p in self.branches))


def _pairs(n: int) -> int:
    """Unordered pairs with repetition of n things."""
    return n * (n + 1) // 2


def count_designs(canonical: bool = True) -> dict:
    """The exact size of the search space, raw or up to mirror images.

    Raw: 4^2*5^2*6^2 = 14,400 connectivity patterns and 11*(2*11)^2*(5*11)^2*(8*11)^2
    = 124,717,894,400 ≈ 1.2e11 cells. Up to mirror images (unordered pairs with repetition):
    10*15*21 = 3,150 connectivity patterns and 11*253*1540*3916 = 16,783,271,120 ≈ 1.7e10 cells. The paper's
    "~1e10 cells" agrees; its "120 connectivity patterns" does not follow from the space as
    specified (even 4*5*6 = 120 is the count of ordered single choices per block, not of pairs).
    """
    pair = _pairs if canonical else (lambda n: n * n)
    connectivity = math.prod(pair(NUM_INPUTS + k) for k in range(NUM_BLOCKS))
    cells = len(OPERATIONS) * math.prod(pair((3 * k - 1) * len(OPERATIONS)) for k in range(1, NUM_BRANCHES + 1))
    return {"connectivity": connectivity, "cells": cells, "total": connectivity * cells}


ZOO = {
    "arch0": Genotype(((3, 3), (3, 2), (3, 0)), 8, ((0, 0, 5, 2), (0, 2, 8, 8), (0, 5, 1, 4))),
    "arch1": Genotype(((2, 3), (3, 1), (4, 4)), 2, ((1, 0, 3, 6), (0, 1, 2, 8), (2, 0, 6, 1))),
    "arch2": Genotype(((1, 3), (4, 3), (2, 2)), 5, ((0, 0, 4, 1), (3, 2, 0, 1), (5, 6, 5, 0))),
}
