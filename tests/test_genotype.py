import itertools
import json

import numpy as np
import pytest
import torch

from nasfast.cli import UsageError
from nasfast.cell import Cell
from nasfast.genotype import OPERATIONS, ZOO, Genotype, _cells, _swapped, count_designs

ARCH0 = [[[3, 3], [3, 2], [3, 0]], [8, [0, 0, 5, 2], [0, 2, 8, 8], [0, 5, 1, 4]]]
SIZES = [4, 4, 5, 5, 6, 6, 11, 2, 2, 11, 11, 5, 5, 11, 11, 8, 8, 11, 11]


def with_value(nested, path, value):
    """A deep copy of `nested` with the item at `path` (a tuple of indices) replaced."""
    copy = json.loads(json.dumps(nested))
    *parents, last = path
    target = copy
    for index in parents:
        target = target[index]
    target[last] = value
    return copy


def test_parse_every_form():
    g = Genotype.parse(ARCH0)
    assert g.connectivity == ((3, 3), (3, 2), (3, 0))
    assert g.first_op == 8 and g.branches == ((0, 0, 5, 2), (0, 2, 8, 8), (0, 5, 1, 4))
    assert Genotype.parse("arch0") == Genotype.parse(" arch0\n") == g
    assert Genotype.parse(json.dumps(ARCH0)) == g
    assert Genotype.parse(g) is g
    numpy_ints = json.loads(json.dumps(ARCH0), parse_int=np.int64)
    assert Genotype.parse(numpy_ints) == g
    assert all(type(v) is int for v in Genotype.parse(numpy_ints).decisions())  # plain ints inside
    assert Genotype.parse((((3, 3), (3, 2), (3, 0)), (8, (0, 0, 5, 2), (0, 2, 8, 8), (0, 5, 1, 4)))) == g
    assert list(ZOO) == ["arch0", "arch1", "arch2"]
    assert ZOO["arch1"].to_list() == [[[2, 3], [3, 1], [4, 4]], [2, [1, 0, 3, 6], [0, 1, 2, 8], [2, 0, 6, 1]]]
    assert ZOO["arch2"].to_list() == [[[1, 3], [4, 3], [2, 2]], [5, [0, 0, 4, 1], [3, 2, 0, 1], [5, 6, 5, 0]]]
    assert OPERATIONS == ("conv1x1", "conv3x3", "sep3x3", "sep5x5", "gap", "conv3x3_d3", "conv3x3_d12",
                          "sep3x3_d3", "sep5x5_d6", "skip", "zero")


def test_round_trips_and_text_forms():
    for g in list(ZOO.values()) + [Genotype.random(torch.Generator().manual_seed(s)) for s in range(20)]:
        assert Genotype.parse(g.to_json()) == g
        assert Genotype.parse(str(g)) == g
        assert Genotype.parse(g.to_list()) == g
        assert Genotype.from_decisions(g.decisions()) == g
        assert json.loads(g.to_json()) == g.to_list()
    assert str(ZOO["arch0"]) == "[[[3,3],[3,2],[3,0]],[8,[0,0,5,2],[0,2,8,8],[0,5,1,4]]]"
    assert ZOO["arch0"].decisions() == [3, 3, 3, 2, 3, 0, 8, 0, 0, 5, 2, 0, 2, 8, 8, 0, 5, 1, 4]
    assert Genotype.from_decisions(torch.tensor(ZOO["arch0"].decisions())) == ZOO["arch0"]


def test_is_a_hashable_immutable_value():
    g = Genotype.parse(ARCH0)
    assert len({g, Genotype.parse("arch0"), ZOO["arch1"]}) == 2
    with pytest.raises(AttributeError):
        g.first_op = 1
    direct = Genotype([[3, 3], [3, 2], [3, 0]], 8, [[0, 0, 5, 2], [0, 2, 8, 8], [0, 5, 1, 4]])
    assert direct == g and hash(direct) == hash(g)  # lists normalised to tuples


# Every position of the nested list with its out-of-range value, the field the error must name,
# and the allowed range. The limits are SPEC section 3's: block k reads [0, 4 + k), branch k
# reads [0, 3k - 1), ops are in [0, 11).
FIELDS = [((0, k, n), 4 + k, rf"connectivity\[{k}\]\[{n}\] \(block {k} input {'ab'[n]}{k}\)")
          for k in range(3) for n in range(2)]
FIELDS += [((1, 0), 11, r"cell first op o0 \(cell\[0\]\)")]
FIELDS += [((1, k, n), (3 * k - 1, 3 * k - 1, 11, 11)[n],
            rf"cell branch {k} {('position', 'position', 'op', 'op')[n]} {'ijop'[n]}{k} "
            rf"\(cell\[{k}\]\[{n}\]\)")
           for k in range(1, 4) for n in range(4)]


@pytest.mark.parametrize("path, high, field", FIELDS)
def test_every_field_is_range_checked_by_name(path, high, field):
    Genotype.parse(with_value(ARCH0, path, high - 1))  # the largest allowed value is fine
    for bad in (high, -1, 1.0, True, "1", None):
        with pytest.raises(ValueError, match=rf"{field} must be an integer in \[0, {high}\), got {bad!r}"):
            Genotype.parse(with_value(ARCH0, path, bad))


@pytest.mark.parametrize("bad, message", [
    ([[[3, 3], [3, 2]], ARCH0[1]], r"connectivity must be a list of 3 items"),
    ([[[3, 3], [3, 2], [3]], ARCH0[1]], r"connectivity\[2\] must be a list of 2 items \[a2, b2\]"),
    ([[[3, 3], [3, 2], 3], ARCH0[1]], r"connectivity\[2\] must be a list of 2 items"),
    ([ARCH0[0], [8, [0, 0, 5, 2], [0, 2, 8, 8]]], r"cell must be a list of 4 items"),
    ([ARCH0[0], [8, [0, 0, 5, 2], [0, 2, 8, 8], [0, 5, 1]]], r"cell branch 3 \(cell\[3\]\) must be a list of 4"),
    ([ARCH0[0], [8, [0, 0, 5, 2], "0288", [0, 5, 1, 4]]], r"cell branch 2 \(cell\[2\]\) must be a list of 4"),
    (ARCH0 + [[]], r"genotype must be a list of 2 items \[connectivity, cell\]"),
    ({"connectivity": ARCH0[0]}, r"genotype must be a list of 2 items"),
    (None, r"genotype must be a list of 2 items"),
    ("arch9", r"neither a zoo name \(arch0, arch1, arch2\) nor the JSON text"),
    ("[[1, 2]", r"genotype '\[\[1, 2\]' is not valid JSON: Expecting ',' delimiter at character 8"),
    ('"arch0x"', r"genotype must be a list of 2 items"),
])
def test_malformed_genotypes_are_rejected_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        Genotype.parse(bad)


def test_from_decisions_checks_length_and_ranges():
    with pytest.raises(ValueError, match="decisions must be a list of 19 items"):
        Genotype.from_decisions([0] * 18)
    decisions = [0] * 19
    decisions[15] = 8  # i3 reads positions [0, 8)
    with pytest.raises(ValueError, match=r"cell branch 3 position i3 \(cell\[3\]\[0\]\).*\[0, 8\)"):
        Genotype.from_decisions(decisions)
    with pytest.raises(ValueError, match=r"connectivity\[0\]\[0\]"):
        Genotype.from_decisions([0.5] + [0] * 18)


def test_decision_sizes_follow_the_validity_rules():
    assert Genotype.decision_sizes() == SIZES
    largest = Genotype.from_decisions([n - 1 for n in SIZES])  # every maximum is valid...
    assert largest.decisions() == [n - 1 for n in SIZES]
    for position, n in enumerate(SIZES):  # ...and one more is not
        with pytest.raises(ValueError, match=rf"\[0, {n}\)"):
            Genotype.from_decisions([n if k == position else 0 for k in range(19)])


def test_random_is_valid_uniform_and_reproducible():
    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([Genotype.random(generator).decisions() for _ in range(2000)])
    again = torch.Generator().manual_seed(0)
    assert [Genotype.random(again).decisions() for _ in range(5)] == draws[:5].tolist()
    seeded = [Genotype.random(torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert seeded[0] != seeded[1]
    for column, n in enumerate(SIZES):
        counts = torch.bincount(draws[:, column], minlength=n)
        assert len(counts) == n  # never out of range
        expected = len(draws) / n
        # every value occurs, each within 5 standard deviations of the uniform count
        assert (counts - expected).abs().max() < 5 * (expected * (1 - 1 / n)) ** 0.5, (column, counts)


def mirror_images(g: Genotype):
    """All 64 designs that swap any of the 3 block input pairs and the 3 branch halves of g (with
    the later reads of those halves)."""
    for swaps in itertools.product([False, True], repeat=6):
        connectivity = [(b, a) if s else (a, b) for (a, b), s in zip(g.connectivity, swaps[:3])]
        yield Genotype(connectivity, g.first_op, _swapped(g.branches, swaps[3:]))


def test_canonical_key_is_equal_exactly_for_mirror_images():
    generator = torch.Generator().manual_seed(3)
    for g in list(ZOO.values()) + [Genotype.random(generator) for _ in range(20)]:
        mirrors = set(mirror_images(g))
        assert {m.canonical_key() for m in mirrors} == {g.canonical_key()}
        # every design one decision away, and unrelated ones, share the key only if a mirror image
        neighbours = [Genotype.from_decisions(g.decisions()[:k] + [v] + g.decisions()[k + 1:])
                      for k, n in enumerate(SIZES) for v in range(n)]
        for h in neighbours + [Genotype.random(generator) for _ in range(50)]:
            assert (h.canonical_key() == g.canonical_key()) == (h in mirrors), (g, h)
    # swapping the positions of a branch without its ops is a different design
    g = Genotype.parse(ARCH0)
    other = Genotype.parse(with_value(ARCH0, (1, 3), [5, 0, 1, 4]))
    assert other.canonical_key() != g.canonical_key()
    # every branch swapped: branch 2 reads f[2] (branch 1's first half, now f[3]), branch 3 f[5] (now f[6])
    mirror = Genotype.parse([[[3, 3], [2, 3], [0, 3]], [8, [0, 0, 2, 5], [3, 0, 8, 8], [6, 0, 4, 1]]])
    assert mirror != g and mirror.canonical_key() == g.canonical_key()
    unrelabelled = Genotype.parse([[[3, 3], [2, 3], [0, 3]], [8, [0, 0, 2, 5], [2, 0, 8, 8], [5, 0, 4, 1]]])
    assert unrelabelled.canonical_key() != g.canonical_key()


def _outputs_with_the_same_weights(g: Genotype, h: Genotype, traded, x):
    """The outputs of g's cell and h's given the same weights, the two ops of each branch marked in
    `traded` trading places."""
    torch.manual_seed(0)
    cell, other = Cell(g, channels=4).eval(), Cell(h, channels=4).eval()
    other.first.load_state_dict(cell.first.state_dict())
    for k, trade in enumerate(traded):
        left, right = (cell.right[k], cell.left[k]) if trade else (cell.left[k], cell.right[k])
        other.left[k].load_state_dict(left.state_dict())
        other.right[k].load_state_dict(right.state_dict())
    with torch.no_grad():
        return cell(x), other(x)


def test_a_mirror_image_computes_the_same_function_and_a_swap_without_the_later_reads_does_not():
    x = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(5)
    for g in list(ZOO.values()) + [Genotype.random(generator) for _ in range(6)]:
        for swaps in itertools.product([False, True], repeat=3):
            mirror = Genotype(g.connectivity, g.first_op, _swapped(g.branches, swaps))
            torch.testing.assert_close(*_outputs_with_the_same_weights(g, mirror, swaps, x), rtol=0, atol=0)
    # branch 1's halves swapped while branch 2 still reads f[2] and f[3] where they were (the
    # mistake of an earlier canonical_key): 3 conv(x) + 3 x against conv(x) + 5 x
    g = Genotype([[0, 1]] * 3, 9, [[0, 1, 0, 9], [2, 2, 9, 9], [0, 0, 9, 9]])
    h = Genotype([[0, 1]] * 3, 9, [[1, 0, 9, 0], [2, 2, 9, 9], [0, 0, 9, 9]])
    assert g.canonical_key() != h.canonical_key()
    assert not torch.allclose(*_outputs_with_the_same_weights(g, h, (True, False, False), x))


def test_count_designs_matches_brute_force_enumeration():
    raw, canonical = count_designs(canonical=False), count_designs()
    base = Genotype.parse(ARCH0)

    # The whole connectivity space, cell fixed.
    connectivities = [Genotype([c[0:2], c[2:4], c[4:6]], base.first_op, base.branches)
                      for c in itertools.product(range(4), range(4), range(5), range(5), range(6), range(6))]
    assert raw["connectivity"] == len(set(connectivities)) == 14_400
    assert canonical["connectivity"] == len({g.canonical_key() for g in connectivities}) == 3_150

    # The cells: every decision sequence, and up to mirror images by Burnside's lemma, against a
    # reduced cell space (one op) enumerated whole. (With two ops, 819,200 cells, the count
    # enumerated, 121,760, matched too: 12 s, too long to repeat here.)
    assert raw["cells"] == 11 * 22 ** 2 * 55 ** 2 * 88 ** 2 == 124_717_894_400
    cells = [Genotype(base.connectivity, 0, [(i1, j1, 0, 0), (i2, j2, 0, 0), (i3, j3, 0, 0)])
             for i1, j1, i2, j2, i3, j3 in itertools.product(*[range(n) for n in (2, 2, 5, 5, 8, 8)])]
    assert len(set(cells)) == _cells(1, canonical=False) == 6_400
    assert len({g.canonical_key() for g in cells}) == _cells(1, canonical=True) == 1_139
    assert _cells(2, canonical=True) == 121_760
    assert canonical["cells"] == _cells(11, canonical=True) == 16_079_317_199

    for counts in (raw, canonical):
        assert counts["total"] == counts["connectivity"] * counts["cells"]
    assert 1e10 <= canonical["cells"] < 1e11  # the paper's "~1e10 unique cells"


def test_a_zoo_name_is_the_zoo_s_design_unless_a_file_or_search_of_that_name_makes_it_ambiguous(tmp_path,
                                                                                                  monkeypatch):
    """A training run trained into --out arch0 hid the zoo's arch0 from every command run beside it."""
    from nasfast.designs import genotype_from_option, recorded_classes
    from nasfast.search.config import preset
    from nasfast.search.summary import closing_summary
    monkeypatch.chdir(tmp_path)
    (tmp_path / "arch0").mkdir()
    (tmp_path / "arch0" / "best.pt").write_bytes(b"a training run's")
    assert genotype_from_option("arch0") == ZOO["arch0"] and recorded_classes("arch0") is None
    record = {"index": 0, "genotype": ZOO["arch1"].to_list(), "status": "ok", "reward": 0.4, "stage1_reward": 0.4,
              "stage2_reward": None, "gate": "stop", "params": 1, "madds": 1, "seconds": 1.0}
    (tmp_path / "arch1").mkdir()
    (tmp_path / "arch1" / "candidates.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "arch2").write_text(ZOO["arch0"].to_json())
    for name, what in (("arch1", "search"), ("arch2", "file")):
        with pytest.raises(ValueError, match=rf"^--genotype {name}: the zoo design, or the {what} \./{name}\? Give "
                                             rf"\./{name} for the {what}'s, or run from another directory"):
            genotype_from_option(name)
    assert genotype_from_option("./arch1") == ZOO["arch1"] and genotype_from_option("./arch2") == ZOO["arch0"]
    config = preset("tiny")  # the search's closing command names such a RUN_DIR as ./arch1
    assert "--genotype ./arch1 " in closing_summary([record], 1, "arch1", config, None)


def test_a_genotype_file_is_read_as_json_whatever_it_begins_with(tmp_path):
    """A file of broken JSON not beginning with "[" was said to be "neither a zoo name nor the JSON"."""
    from nasfast.designs import genotype_from_option
    (tmp_path / "broken.json").write_text('{"oops": \n')
    with pytest.raises(ValueError, match=r"genotype file .*broken.json: genotype '\{\"oops\": \\n' is not valid "
                                         r"JSON: Expecting value at character 11"):
        genotype_from_option(str(tmp_path / "broken.json"))
    (tmp_path / "name.txt").write_text("arch2\n")  # a zoo name in a file: still taken
    assert genotype_from_option(str(tmp_path / "name.txt")) == ZOO["arch2"]


def test_an_option_names_a_search_for_its_best_design_and_long_text_is_cut(tmp_path):
    from nasfast.designs import genotype_from_option, recorded_classes
    rest = dict(stage1_reward=None, stage2_reward=None, gate=None, params=None, madds=None, seconds=1.0)
    records = [{"index": 0, "genotype": ZOO["arch0"].to_list(), "status": "ok", "reward": 0.31, **rest},
               {"index": 1, "genotype": ZOO["arch1"].to_list(), "status": "ok", "reward": 0.42, **rest},
               {"index": 2, "genotype": ZOO["arch2"].to_list(), "status": "failed", "reward": None, **rest}]
    (tmp_path / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert genotype_from_option(str(tmp_path)) == ZOO["arch1"]
    assert genotype_from_option(str(tmp_path / "candidates.jsonl")) == ZOO["arch1"]
    (tmp_path / "failed.jsonl").write_text(json.dumps(records[2]) + "\n")
    with pytest.raises(ValueError, match=r"failed.jsonl: none of its 1 candidates finished \(python -m nasfast.report"):
        genotype_from_option(str(tmp_path / "failed.jsonl"))
    (tmp_path / "log.jsonl").write_text(json.dumps({"epoch": 0, "val_miou": 0.4}) + "\n")  # a training's log
    with pytest.raises(ValueError, match="log.jsonl: not the candidates.jsonl of a search"):
        genotype_from_option(str(tmp_path / "log.jsonl"))
    with pytest.raises(ValueError, match="nothing.jsonl: no such search log"):
        genotype_from_option(str(tmp_path / "nothing.jsonl"))
    with pytest.raises(FileNotFoundError, match="genotype file .*/typo: no such file"):
        genotype_from_option(str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="genotype file missing.json: no such file"):
        genotype_from_option("missing.json")  # a name in the working directory
    (tmp_path / "bom.json").write_text("\ufeff" + ZOO["arch1"].to_json(), encoding="utf-8")
    assert genotype_from_option(str(tmp_path / "bom.json")) == ZOO["arch1"]
    torch.save({"genotype": ZOO["arch2"].to_list(), "num_classes": 11}, tmp_path / "best.pt")  # a training's
    assert genotype_from_option(str(tmp_path / "best.pt")) == ZOO["arch2"]
    assert recorded_classes(str(tmp_path / "best.pt")) == 11 and recorded_classes("arch2") is None
    torch.save({"num_classes": 11}, tmp_path / "classes.pt")  # the only key asked for
    assert recorded_classes(str(tmp_path / "classes.pt")) == 11
    torch.save({"genotype": [[1, 2]]}, tmp_path / "odd.pt")
    with pytest.raises(UsageError, match=r"odd.pt is damaged or edited: its genotype is not a design \("):
        genotype_from_option(str(tmp_path / "odd.pt"))
    torch.save({"next_index": 3}, tmp_path / "state.pt")
    with pytest.raises(UsageError, match=r"state.pt is not a checkpoint of .* \(it lacks genotype"):
        genotype_from_option(str(tmp_path / "state.pt"))
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "model.pt"))
    with pytest.raises(ValueError, match=r"TorchScript file .*model.pt has no nasfast.json"):
        genotype_from_option(str(tmp_path / "model.pt"))
    with pytest.raises(ValueError) as error:
        Genotype.parse("x" * 5000)
    assert len(str(error.value)) < 300 and "xxx..." in str(error.value)
