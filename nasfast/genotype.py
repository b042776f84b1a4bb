"""The genotype: one decoder design as data (SPEC section 3). Parse, validate, JSON, sample, count.

Paper order (Appendix A), a JSON-compatible nested list:

    [[[a0, b0], [a1, b1], [a2, b2]],                               # connectivity: 3 blocks
     [o0, [i1, j1, o1, p1], [i2, j2, o2, p2], [i3, j3, o3, p3]]]   # cell

Block k (0, 1, 2) reads pool entries a_k, b_k in [0, 4 + k); cell branch k (1, 2, 3) reads
positions i_k, j_k in [0, 3k - 1) and applies operations o_k, p_k in [0, 11).
"""
import itertools
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch


OPERATIONS = ("conv1x1", "conv3x3", "sep3x3", "sep5x5", "gap", "conv3x3_d3", "conv3x3_d12",
              "sep3x3_d3", "sep5x5_d6", "skip", "zero")
NUM_INPUTS = 4    # encoder outputs in the pool before the first block
NUM_BLOCKS = 3
NUM_BRANCHES = 3
NESTED_FORM = ("[[[a0, b0], [a1, b1], [a2, b2]], "
               "[o0, [i1, j1, o1, p1], [i2, j2, o2, p2], [i3, j3, o3, p3]]]")


def _integer(value: Any, field: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < high:
        raise ValueError(f"genotype {field} must be an integer in [0, {high}), got {value!r}")
    return int(value)


def _sequence(value: Any, field: str, length: int, form: str) -> Sequence:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ValueError(f"genotype {field + ' ' if field else ''}must be a list of {length} items {form}, "
                         f"got {value!r}")
    return value


def _positions(k: int) -> int:
    """How many tensors cell branch k (1-based) can read: the input, f1, and 3 per earlier branch."""
    return 3 * k - 1


@dataclass(frozen=True)
class Genotype:
    """A decoder design. Construction validates and normalises to tuples of plain ints."""

    connectivity: Tuple[Tuple[int, int], ...]          # block k sums cells of pool[a_k], pool[b_k]
    first_op: int                                      # o0, applied to the cell input
    branches: Tuple[Tuple[int, int, int, int], ...]    # (i, j, o, p) of cell branches 1..3

    def __post_init__(self):
        blocks = _sequence(self.connectivity, "connectivity", NUM_BLOCKS, "[[a0, b0], [a1, b1], [a2, b2]]")
        connectivity = tuple(
            tuple(_integer(value, f"connectivity[{k}][{n}] (block {k} input {'ab'[n]}{k})", NUM_INPUTS + k)
                  for n, value in enumerate(_sequence(pair, f"connectivity[{k}]", 2, f"[a{k}, b{k}]")))
            for k, pair in enumerate(blocks))
        first_op = _integer(self.first_op, "cell first op o0 (cell[0])", len(OPERATIONS))
        branches = _sequence(self.branches, "cell branches", NUM_BRANCHES, "[i, j, o, p]")
        object.__setattr__(self, "connectivity", connectivity)
        object.__setattr__(self, "first_op", first_op)
        object.__setattr__(self, "branches", tuple(_branch(b, k) for k, b in enumerate(branches, 1)))

    # -- conversions -------------------------------------------------------------------------
    @classmethod
    def parse(cls, x: Any) -> "Genotype":
        """From a Genotype, the paper's nested list, its JSON text, or a zoo name (see ZOO)."""
        if isinstance(x, Genotype):
            return x
        if isinstance(x, str):
            if x.strip() in ZOO:
                return ZOO[x.strip()]
            try:
                x = json.loads(x)
            except json.JSONDecodeError as error:
                shown = x if len(x) <= 80 else x[:77] + "..."
                if x.lstrip()[:1] in ("[", "{"):  # meant as JSON
                    raise ValueError(f"genotype {shown!r} is not valid JSON: {error.msg} at character "
                                     f"{error.pos + 1}") from None
                raise ValueError(f"genotype {shown!r} is neither a zoo name ({', '.join(ZOO)}) "
                                 f"nor the JSON text of {NESTED_FORM}") from None
        connectivity, cell = _sequence(x, "", 2, "[connectivity, cell]")
        cell = _sequence(cell, "cell", 1 + NUM_BRANCHES, "[o0, [i1, j1, o1, p1], [i2, ...], [i3, ...]]")
        return cls(connectivity, cell[0], tuple(cell[1:]))

    def to_list(self) -> list:
        """The paper's nested list (Appendix A order)."""
        cell = [self.first_op] + [list(branch) for branch in self.branches]
        return [[list(pair) for pair in self.connectivity], cell]

    def to_json(self) -> str:
        return json.dumps(self.to_list())

    def __str__(self) -> str:
        return json.dumps(self.to_list(), separators=(",", ":"))

    # -- the controller's view: 19 decisions --------------------------------------------------
    @staticmethod
    def decision_sizes() -> List[int]:
        """Vocabulary of each decision, in controller order:
        a0, b0, a1, b1, a2, b2, o0, i1, j1, o1, p1, i2, j2, o2, p2, i3, j3, o3, p3."""
        sizes = [NUM_INPUTS + k for k in range(NUM_BLOCKS) for _ in "ab"] + [len(OPERATIONS)]
        for k in range(1, NUM_BRANCHES + 1):
            sizes += [_positions(k), _positions(k), len(OPERATIONS), len(OPERATIONS)]
        return sizes

    def decisions(self) -> List[int]:
        connectivity = [v for pair in self.connectivity for v in pair]
        return connectivity + [self.first_op] + [v for branch in self.branches for v in branch]

    @classmethod
    def from_decisions(cls, decisions: Sequence[int]) -> "Genotype":
        """Inverse of decisions(); also takes a numpy array or a tensor of integers."""
        if hasattr(decisions, "tolist"):
            decisions = decisions.tolist()
        d = _sequence(decisions, "decisions", len(cls.decision_sizes()), "(controller order)")
        connectivity = tuple(tuple(d[2 * k: 2 * k + 2]) for k in range(NUM_BLOCKS))
        cell_start = 2 * NUM_BLOCKS + 1
        branches = tuple(tuple(d[cell_start + 4 * k: cell_start + 4 * k + 4]) for k in range(NUM_BRANCHES))
        return cls(connectivity, d[2 * NUM_BLOCKS], branches)

    @classmethod
    def random(cls, generator: Optional[torch.Generator] = None) -> "Genotype":
        """Uniform over the valid space: every decision uniform over its range."""
        sizes = cls.decision_sizes()
        return cls.from_decisions([int(torch.randint(n, (), generator=generator)) for n in sizes])

    def canonical_key(self) -> tuple:
        """Equal exactly for mirror images: designs that differ only by swapping the two inputs of
        a block ([a, b] vs [b, a]) or the two halves of cell branches ((i, j, o, p) vs (j, i, p, o)),
        which are summed, with every later read of a swapped branch's halves (positions 3k-1 and 3k)
        swapped alike, so that the network computes the same function. The smallest of the 8 cells
        that such swaps of the branches make stands for them all."""
        cells = (_swapped(self.branches, swaps) for swaps in itertools.product((False, True), repeat=NUM_BRANCHES))
        return tuple(tuple(sorted(pair)) for pair in self.connectivity), self.first_op, min(cells)


def _swapped(branches, swaps: Sequence[bool]) -> tuple:
    """The branches with the halves of those marked in `swaps` swapped, and the later reads of those halves too."""
    moved: Dict[int, int] = {}  # a position read -> where its tensor is after the swaps so far
    cell = []
    for k, ((i, j, o, p), swap) in enumerate(zip(branches, swaps), 1):
        i, j = moved.get(i, i), moved.get(j, j)
        cell.append((j, i, p, o) if swap else (i, j, o, p))
        if swap:
            moved.update({3 * k - 1: 3 * k, 3 * k: 3 * k - 1})
    return tuple(cell)


def _branch(branch: Any, k: int) -> Tuple[int, int, int, int]:
    values = _sequence(branch, f"cell branch {k} (cell[{k}])", 4, f"[i{k}, j{k}, o{k}, p{k}]")
    fields = [("position", _positions(k)), ("position", _positions(k)),
              ("op", len(OPERATIONS)), ("op", len(OPERATIONS))]
    return tuple(_integer(value, f"cell branch {k} {kind} {'ijop'[n]}{k} (cell[{k}][{n}])", high)
                 for n, (value, (kind, high)) in enumerate(zip(values, fields)))


def _pairs(n: int, canonical: bool) -> int:
    """Ordered pairs of n things, or unordered pairs with repetition (a multiset of two)."""
    return n * (n + 1) // 2 if canonical else n * n


def _cells(num_ops: int, canonical: bool) -> int:
    """Cells of `num_ops` operations; up to mirror images (see Genotype.canonical_key) by Burnside's
    lemma: the mean, over the 8 sets of branches swapped, of the cells that swap leaves unchanged. A
    swapped branch is unchanged when j is the swap of i and p = o; one not swapped when neither of i
    and j is a position that an earlier swap moves."""
    swap_sets = list(itertools.product((False, True), repeat=NUM_BRANCHES)) if canonical else [(False,) * NUM_BRANCHES]
    unchanged = 0
    for swaps in swap_sets:
        cells, moved = num_ops, 0  # the first op; positions that earlier swaps move
        for k, swap in enumerate(swaps, 1):
            cells *= _positions(k) * num_ops if swap else (_positions(k) - moved) ** 2 * num_ops ** 2
            moved += 2 if swap else 0
        unchanged += cells
    return unchanged // len(swap_sets)


def count_designs(canonical: bool = True) -> Dict[str, int]:
    """The exact number of distinct designs: connectivity patterns, cells and their product.

    Raw (every decision sequence): 4²·5²·6² = 14,400 connectivity patterns and
    11·22²·55²·88² = 124,717,894,400 ≈ 1.2e11 cells, 1,795,937,679,360,000 ≈ 1.8e15 designs.
    Up to mirror images (each block's input pair unordered, and the halves of cell branches swapped
    with their later reads; see Genotype.canonical_key): 10·15·21 = 3,150 connectivity patterns and
    16,079,317,199 ≈ 1.6e10 cells, 50,649,849,176,850 ≈ 5.1e13 designs.

    The paper's footnote 1 estimates ~1e10 unique cells (agrees) and 120 unique connectivity
    patterns (does not follow from the space: 120 = 4·5·6 counts one input per block, and
    C(10, 3) = 120 counts sets of three distinct pairs of encoder outputs with a pool that never
    grows; neither is this search space).
    """
    connectivity = math.prod(_pairs(NUM_INPUTS + k, canonical) for k in range(NUM_BLOCKS))
    cells = _cells(len(OPERATIONS), canonical)
    return {"connectivity": connectivity, "cells": cells, "total": connectivity * cells}


# The paper's released models (SPEC section 3, reference figures).
ZOO: Dict[str, Genotype] = {name: Genotype.parse(nested) for name, nested in [
    ("arch0", [[[3, 3], [3, 2], [3, 0]], [8, [0, 0, 5, 2], [0, 2, 8, 8], [0, 5, 1, 4]]]),
    ("arch1", [[[2, 3], [3, 1], [4, 4]], [2, [1, 0, 3, 6], [0, 1, 2, 8], [2, 0, 6, 1]]]),
    ("arch2", [[[1, 3], [4, 3], [2, 2]], [5, [0, 0, 4, 1], [3, 2, 0, 1], [5, 6, 5, 0]]]),
]}


def genotype_name(genotype) -> str:
    """The zoo name of a genotype, else its JSON."""
    genotype = Genotype.parse(genotype)
    return next((name for name, known in ZOO.items() if known == genotype), str(genotype))
