import itertools
import json

import pytest
import torch

from nasfast.genotype import OPERATIONS, ZOO, Genotype, count_designs

ARCH0 = [[[3, 3], [3, 2], [3, 0]], [8, [0, 0, 5, 2], [0, 2, 8, 8], [0, 5, 1, 4]]]


def test_parse_every_form_and_round_trip():
    g = Genotype.parse(ARCH0)
    assert g == Genotype.parse("arch0") == Genotype.parse(json.dumps(ARCH0)) == Genotype.parse(g)
    assert g.to_list() == ARCH0
    assert Genotype.parse(g.to_json()) == g
    assert Genotype.from_decisions(g.decisions()) == g
    assert len(OPERATIONS) == 11 and sorted(ZOO) == ["arch0", "arch1", "arch2"]


@pytest.mark.parametrize("bad, field", [
    ([[[4, 3], [3, 2], [3, 0]], ARCH0[1]], r"connectivity\[0\]\[0\].*\[0, 4\)"),
    ([[[3, 3], [3, 5], [3, 0]], ARCH0[1]], r"connectivity\[1\]\[1\].*\[0, 5\)"),
    ([[[3, 3], [3, 2], [6, 0]], ARCH0[1]], r"connectivity\[2\]\[0\].*\[0, 6\)"),
    ([ARCH0[0], [11, [0, 0, 5, 2], [0, 2, 8, 8], [0, 5, 1, 4]]], r"cell\[0\].*\[0, 11\)"),
    ([ARCH0[0], [8, [0, 2, 5, 2], [0, 2, 8, 8], [0, 5, 1, 4]]], r"cell\[1\]\[1\] \(j\).*\[0, 2\)"),
    ([ARCH0[0], [8, [0, 0, 5, 2], [5, 2, 8, 8], [0, 5, 1, 4]]], r"cell\[2\]\[0\] \(i\).*\[0, 5\)"),
    ([ARCH0[0], [8, [0, 0, 5, 2], [0, 2, 8, 8], [0, 8, 1, 4]]], r"cell\[3\]\[1\] \(j\).*\[0, 8\)"),
    ([ARCH0[0], [8, [0, 0, 5, 2], [0, 2, 8, 8], [0, 5, 1, -1]]], r"cell\[3\]\[3\] \(p\)"),
    ([ARCH0[0], [8, [0, 0, 5, 2], [0, 2, 8, 8], [0, 5, 1, 2.0]]], r"cell\[3\]\[3\]"),
    ([ARCH0[0], [8, [0, 0, 5, 2], [0, 2, 8, 8], [0, 5, True, 4]]], r"cell\[3\]\[2\]"),
    ([ARCH0[0], [8, [0, 0, 5, 2], [0, 2, 8, 8]]], r"cell must be a list of 4"),
    ([[[3, 3], [3, 2]], ARCH0[1]], r"connectivity must be a list of 3"),
    ("arch9", r"zoo name"),
    ("[[1, 2]", r"JSON"),
])
def test_invalid_genotypes_name_the_field_and_range(bad, field):
    with pytest.raises(ValueError, match=field):
        Genotype.parse(bad)


def test_random_is_valid_reproducible_and_covers_the_space():
    draws = [Genotype.random(torch.Generator().manual_seed(s)) for s in range(300)]
    assert draws[:5] == [Genotype.random(torch.Generator().manual_seed(s)) for s in range(5)]
    decisions = torch.tensor([g.decisions() for g in draws])
    for column, size in enumerate(Genotype.decision_sizes()):
        assert set(decisions[:, column].tolist()) == set(range(size))  # every value is reachable


def test_canonical_key_equates_mirror_images_only():
    g = Genotype.parse(ARCH0)
    mirror = Genotype.parse([[[3, 3], [2, 3], [0, 3]], [8, [0, 0, 2, 5], [2, 0, 8, 8], [5, 0, 4, 1]]])
    assert g != mirror and g.canonical_key() == mirror.canonical_key()
    other = Genotype.parse([[[3, 3], [3, 2], [3, 0]], [8, [0, 0, 5, 2], [0, 2, 8, 8], [5, 0, 1, 4]]])
    assert other.canonical_key() != g.canonical_key()  # (i, o) halves must swap together


def test_counts_match_brute_force_enumeration():
    raw, canonical = count_designs(canonical=False), count_designs()
    connectivity = list(itertools.product(*[range(4 + k) for k in range(3) for _ in range(2)]))
    assert raw["connectivity"] == len(connectivity) == 14_400
    keys = {tuple(tuple(sorted(c[2 * k:2 * k + 2])) for k in range(3)) for c in connectivity}
    assert canonical["connectivity"] == len(keys) == 3_150
    # Cells, by enumeration of each branch's (input, op) pairs with and without order.
    for k, n in [(1, 22), (2, 55), (3, 88)]:
        halves = [(i, o) for i in range(3 * k - 1) for o in range(11)]
        assert len({tuple(sorted(p)) for p in itertools.product(halves, halves)}) == n * (n + 1) // 2
    assert canonical["cells"] == 11 * 253 * 1540 * 3916 == 16_783_271_120
    assert raw["cells"] == 11 * 22 ** 2 * 55 ** 2 * 88 ** 2
