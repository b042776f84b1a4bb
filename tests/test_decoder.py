import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DEVICES
from nasfast.cell import Cell, cell_outputs
from nasfast.complexity import count_params
from nasfast.decoder import Decoder
from nasfast.genotype import OPERATIONS, Genotype
from nasfast.cell_operations import GlobalPooling, make_operation
import nasfast.ops

SHAPES_512 = [(24, 128, 128), (32, 64, 64), (96, 32, 32), (320, 16, 16)]
# A 256 x 256 image's: each design still runs cells on a map of 32 or more, wider than the 25 pixels
# that sep5x5_d6 and conv3x3_d12 reach across (inside and border), and on maps narrower than that.
SHAPES_256 = [(c, h // 2, w // 2) for c, h, w in SHAPES_512]
# SPEC section 3, reference figures (C=64, R=2, 21 classes, no auxiliary heads).
REFERENCE = {"arch0": (817_109, 128), "arch1": (997_333, 64), "arch2": (1_040_341, 64)}
# SPEC section 3's table of operations, written out here (not read back from nasfast):
# id -> (name, kind, kernel size, dilation). conv: conv k x k (dilation d, no bias) -> BN -> ReLU;
# sep: R x [depthwise k x k (dilation d) -> pointwise 1x1 -> BN -> ReLU]; gap: pool -> conv 1x1 -> BN -> ReLU -> back.
SPEC_OPERATIONS = {
    0: ("conv1x1", "conv", 1, 1), 1: ("conv3x3", "conv", 3, 1), 2: ("sep3x3", "sep", 3, 1),
    3: ("sep5x5", "sep", 5, 1), 4: ("gap", "gap", 1, 1), 5: ("conv3x3_d3", "conv", 3, 3),
    6: ("conv3x3_d12", "conv", 3, 12), 7: ("sep3x3_d3", "sep", 3, 3), 8: ("sep5x5_d6", "sep", 5, 6),
    9: ("skip", "skip", None, None), 10: ("zero", "zero", None, None),
}


def features(shapes=SHAPES_512, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *s, generator=g) for s in shapes]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_params_and_output_size(name):
    params, side = REFERENCE[name]
    decoder = Decoder(name, num_classes=21, channels=64, sep_repeats=2, aux=None).eval()
    assert count_params(decoder) == params
    assert decoder.output_stride == 512 // side
    with torch.no_grad():
        assert decoder(features()).shape == (1, 21, side, side)


def test_cell_output_is_the_sum_of_unread_branch_results():
    assert cell_outputs([(0, 0, 5, 2), (0, 2, 8, 8), (0, 5, 1, 4)]) == [1, 4, 7, 10]
    assert cell_outputs([(0, 1, 9, 9), (4, 0, 9, 10), (7, 1, 9, 9)]) == [10]


@pytest.mark.parametrize("branches, factor", [
    # skip (9) and zero (10) make the arithmetic visible: f1 = x (first op is skip).
    ([[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9]], 7),   # f1 + f4 + f7 + f10 = x + 2x + 2x + 2x
    ([[0, 1, 9, 9], [4, 0, 9, 10], [7, 1, 9, 9]], 3),  # only f10 = f7 + f1 = 2x + x is unread
    ([[1, 1, 10, 10], [0, 0, 10, 10], [0, 0, 10, 9]], 1),  # zeros everywhere but the last skip
])
def test_cell_semantics(branches, factor):
    genotype = Genotype.parse([[[0, 0], [0, 0], [0, 0]], [9] + branches])
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(Cell(genotype, channels=4)(x), factor * x)


def test_aux_heads_one_per_block_and_training_only():
    for aux, extra in [("cell", True), ("classifier", True), (None, False)]:
        decoder = Decoder("arch1", aux=aux).eval()
        logits, outputs = decoder.forward_with_aux(features())
        assert len(outputs) == (3 if extra else 0)
        torch.testing.assert_close(logits, decoder(features()))
        for out in outputs:
            assert out.shape[:2] == (1, 21)
    with_cell = count_params(Decoder("arch1", aux="cell"))
    plain = count_params(Decoder("arch1", aux="classifier"))
    none = count_params(Decoder("arch1", aux=None))
    assert with_cell > plain > none


def test_gradients_reach_every_parameter_through_main_and_aux_outputs():
    decoder = Decoder("arch0", aux="cell")  # arch0 never reads encoder output 1 (SPEC counts its adapter)
    logits, aux = decoder.forward_with_aux(features(batch=2))
    (logits.mean() + sum(a.mean() for a in aux)).backward()
    missing = {n for n, p in decoder.named_parameters() if p.grad is None}
    assert missing == {n for n, _ in decoder.adapters[1].named_parameters(prefix="adapters.1")}


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="aux"):
        Decoder("arch0", aux="bogus")
    with pytest.raises(ValueError, match="in_channels"):
        Decoder("arch0", in_channels=(24, 32, 96))
    for option in ("num_classes", "channels", "sep_repeats"):
        for value in (0, 1.5, True):  # True was taken as 1 (create_model("arch0", True): a deep TypeError)
            with pytest.raises(ValueError, match=f"{option} must be an int of at least 1, got {value}"):
                Decoder("arch0", **{option: value})
    features = [torch.randn(1, c, 32 // s, 32 // s) for c, s in zip((24, 32, 96, 320), (4, 8, 16, 32))]
    for decoder in (Decoder("arch0"), torch.jit.script(Decoder("arch0", fused=False))):
        with pytest.raises(Exception, match="the decoder takes 4 feature maps, got 3"):
            decoder(features[:3])


def test_features_at_other_strides_than_in_strides_are_refused():
    """Swapped, they gave logits at a coarser stride than the design's, without an error."""
    maps = features(SHAPES_256)
    reversed_strides = Decoder("arch0", in_strides=(32, 16, 8, 4))
    for decoder in (reversed_strides, torch.jit.script(reversed_strides)):
        with pytest.raises(Exception, match=r"feature maps 0 and 1 \(64x64 and 32x32\) are not at strides 32 and 16: "
                                            r"give the features in the order of in_strides \[32, 16, 8, 4\], or"):
            decoder(maps)
    decoder = Decoder("arch0").eval()
    for h, w in ((360, 480), (90, 120), (33, 47), (17, 5), (1, 1)):  # either rounding of odd sizes is taken
        for rounded in (lambda x, s: -(-x // s), lambda x, s: max(1, x // s)):
            sizes = [(c, rounded(h, s), rounded(w, s)) for c, s in zip((24, 32, 96, 320), (4, 8, 16, 32))]
            stride = decoder.output_stride
            assert decoder(features(sizes)).shape[-2:] == (rounded(h, stride), rounded(w, stride))


@pytest.mark.parametrize("seed", range(6))
def test_scripted_decoder_equals_eager_on_random_genotypes(seed):
    genotype = Genotype.random(torch.Generator().manual_seed(seed))
    decoder = Decoder(genotype, num_classes=11, aux="cell").eval()
    scripted = torch.jit.script(decoder)
    x = features([(24, 45, 60), (32, 23, 30), (96, 12, 15), (320, 6, 8)], batch=2, seed=seed)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), decoder(x))
        got, got_aux = scripted.forward_with_aux(x)
        want, want_aux = decoder.forward_with_aux(x)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_aux, want_aux):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not nasfast.ops.available(), reason="native ops library not built")
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_fused_decoder_matches_reference_decoder(name):
    reference = Decoder(name, num_classes=21, channels=64, sep_repeats=2, aux="cell", fused=False)
    fused = Decoder(name, num_classes=21, channels=64, sep_repeats=2, aux="cell", fused=True)
    fused.load_state_dict(reference.state_dict())
    x = features(batch=2)
    for mode in (True, False):
        reference.train(mode)
        fused.train(mode)
        torch.testing.assert_close(fused(x), reference(x), rtol=1e-4, atol=1e-4)



@pytest.mark.skipif(not nasfast.ops.available(), reason="native ops library not built")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_fused_decoder_values_and_gradients_match_reference_in_float64(name, device):
    """In float64, so that a wrong gradient cannot hide behind float32 rounding (which batch norm
    in training mode amplifies to ~1e-3 relative on some weights)."""
    reference = Decoder(name, num_classes=21, channels=64, sep_repeats=2, aux="cell", fused=False).to(device).double()
    fused = Decoder(name, num_classes=21, channels=64, sep_repeats=2, aux="cell", fused=True).to(device).double()
    fused.load_state_dict(reference.state_dict())
    x = [f.to(device).double() for f in features(SHAPES_256, batch=2)]
    want, want_aux = reference.forward_with_aux(x)
    got, got_aux = fused.forward_with_aux(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    (want.square().mean() + sum(a.mean() for a in want_aux)).backward()
    (got.square().mean() + sum(a.mean() for a in got_aux)).backward()
    for (n, a), b in zip(fused.named_parameters(), reference.parameters()):
        assert (a.grad is None) == (b.grad is None), n
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10, msg=lambda m: f"{n}: {m}")
    fused.eval()
    reference.eval()
    torch.testing.assert_close(torch.jit.script(fused)(x), reference(x), rtol=1e-10, atol=1e-10)


def test_gap_broadcasts_its_pooled_map_as_bilinear_upsampling_would():
    gap = GlobalPooling(4)
    x = torch.randn(2, 4, 9, 13, requires_grad=True)
    grad = torch.randn(2, 4, 9, 13)
    results = []
    for upsample in (None, lambda y: F.interpolate(y, size=(9, 13), mode="bilinear", align_corners=False)):
        x.grad = None
        out = gap(x) if upsample is None else upsample(gap.project(F.adaptive_avg_pool2d(x, 1)))
        out.backward(grad)
        results.append((out, x.grad))
    torch.testing.assert_close(results[0], results[1])
    assert torch.equal(results[0][0], results[0][0][:, :, :1, :1].expand(-1, -1, 9, 13))


def randomise_batch_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so that in eval mode each batch norm
    (and where it sits against its ReLU) shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            bn.running_mean.copy_(0.5 * torch.randn(n, generator=g))
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            bn.weight.copy_(0.5 + torch.rand(n, generator=g))
            bn.bias.copy_(0.5 * torch.randn(n, generator=g))
    return module


def bn_relu(x, bn: nn.BatchNorm2d):
    """BN (eval mode: running statistics) then ReLU."""
    return F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))


def assert_conv(conv, channels: int, kernel: int, dilation: int, groups: int = 1):
    """A C -> C conv, stride 1, no bias, with "same" padding d * (k // 2)."""
    assert isinstance(conv, nn.Conv2d) and conv.bias is None
    assert (conv.in_channels, conv.out_channels, conv.groups, conv.stride) == (channels, channels, groups, (1, 1))
    assert (conv.kernel_size, conv.dilation) == ((kernel, kernel), (dilation, dilation))
    assert conv.padding == (dilation * (kernel // 2),) * 2


@pytest.mark.parametrize("repeats", [1, 2])
@pytest.mark.parametrize("op_id", sorted(SPEC_OPERATIONS))
def test_each_operation_id_is_built_as_spec_section_3_s_table_defines_it(op_id, repeats):
    """Kernel size, dilation, padding, groups, no bias, BN and ReLU after the conv, R separable repeats."""
    name, kind, kernel, dilation = SPEC_OPERATIONS[op_id]
    assert OPERATIONS[op_id] == name
    op = make_operation(op_id, 4, sep_repeats=repeats, fused=False)
    if kind == "conv":
        assert [type(m) for m in op.children()] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
        assert_conv(op[0], 4, kernel, dilation)
    elif kind == "sep":  # R x [depthwise -> pointwise -> BN -> ReLU], nothing between depthwise and pointwise
        assert len(op) == repeats
        for block in op:
            assert [type(m) for m in block.children()] == [nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]
            assert_conv(block.depthwise, 4, kernel, dilation, groups=4)
            assert_conv(block.pointwise, 4, 1, 1)
    elif kind == "gap":
        assert [type(m) for m in op.project.children()] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
        assert_conv(op.project[0], 4, 1, 1)
    else:
        assert list(op.parameters()) == []


def spec_operation(op_id: int, op: nn.Module, x):
    """SPEC section 3's table in torch.nn.functional, on the op's own weights (eval mode)."""
    _, kind, kernel, dilation = SPEC_OPERATIONS[op_id]
    same = dilation * (kernel // 2) if kernel else 0
    if kind == "conv":
        return bn_relu(F.conv2d(x, op[0].weight, padding=same, dilation=dilation), op[1])
    if kind == "sep":
        for block in op:  # depthwise k x k, dilation d -> pointwise 1x1 -> BN -> ReLU
            x = F.conv2d(x, block.depthwise.weight, padding=same, dilation=dilation, groups=x.shape[1])
            x = bn_relu(F.conv2d(x, block.pointwise.weight), block.bn)
        return x
    if kind == "gap":  # global average pool -> conv 1x1 -> BN -> ReLU -> bilinear back to the input size
        pooled = bn_relu(F.conv2d(x.mean((2, 3), keepdim=True), op.project[0].weight), op.project[1])
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return x if kind == "skip" else torch.zeros_like(x)


@pytest.mark.parametrize("repeats", [1, 2])
@pytest.mark.parametrize("op_id", sorted(SPEC_OPERATIONS))
def test_each_operation_computes_what_spec_section_3_s_table_says(op_id, repeats):
    """On a map wider than the 25 pixels that dilation 12 (3x3) and 6 (5x5) reach across."""
    torch.manual_seed(op_id)
    op = randomise_batch_norms(make_operation(op_id, 4, sep_repeats=repeats, fused=False), seed=op_id).eval()
    x = torch.randn(2, 4, 29, 31, generator=torch.Generator().manual_seed(op_id))
    with torch.no_grad():
        got = op(x)
        torch.testing.assert_close(got, spec_operation(op_id, op, x))
    assert got.shape == x.shape and (op_id == 10 or got.abs().sum() > 0)


def upsample(x, size):
    """SPEC section 3: bilinear, align_corners=False."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def spec_decoder(decoder: Decoder, features):
    """SPEC section 3's decoder, step by step, on the decoder's own layers: (logits, auxiliary outputs)."""
    genotype = decoder.genotype
    # 1. Adapters: each encoder output -> conv 1x1 -> BN -> ReLU to C channels. The pool: these 4 maps.
    pool = [adapter(f) for adapter, f in zip(decoder.adapters, features)]
    aux = []
    for k, (a, b) in enumerate(genotype.connectivity):
        # 2. Block k: pool[a_k] and pool[b_k], each through its own copy of the cell, then its own
        # conv 1x1 -> BN -> ReLU; the lower-resolution result is upsampled bilinearly to the higher
        # resolution and the two are summed. The sum is appended to the pool as index 4 + k.
        block = decoder.blocks[k]
        x, y = block.project_a(block.cell_a(pool[a])), block.project_b(block.cell_b(pool[b]))
        finer, coarser = (x, y) if x.shape[-1] >= y.shape[-1] else (y, x)
        pool.append(finer + upsample(coarser, finer.shape[-2:]))
        # Auxiliary head, after the block's summation: an auxiliary cell -> conv 3x3 -> classes.
        aux.append(decoder.aux[k].classifier(decoder.aux[k].cell(pool[4 + k])))
    # 3. Head: the block outputs that no later block reads, upsampled to the largest of them and
    # concatenated in index order, then conv 1x1 (n.C -> C) -> BN -> ReLU -> conv 3x3 (C -> classes).
    read = {i for pair in genotype.connectivity for i in pair}
    unread = [pool[i] for i in range(4, 4 + len(genotype.connectivity)) if i not in read]
    largest = max((m.shape[-2:] for m in unread), key=lambda size: size[0] * size[1])
    fuse, classify = decoder.head
    return classify(fuse(torch.cat([upsample(m, largest) for m in unread], dim=1))), aux


def without_skip_or_zero(seed: int) -> Genotype:
    """A random design whose cells hold only operations that change their input (ids 0 to 8)."""
    genotype = Genotype.random(torch.Generator().manual_seed(seed))
    branches = [(i, j, o % 9, p % 9) for i, j, o, p in genotype.branches]
    return Genotype(genotype.connectivity, genotype.first_op % 9, branches)


@pytest.mark.parametrize("genotype", ["arch0", "arch1", "arch2"] + [without_skip_or_zero(s) for s in range(3)],
                         ids=["arch0", "arch1", "arch2", "random0", "random1", "random2"])
def test_decoder_computes_spec_section_3_step_by_step(genotype):
    """Adapters; per block proj(cell(x)), the coarser map upsampled (bilinear, align_corners=False) and added;
    the unread block outputs upsampled to the finest and concatenated in index order; the head. Auxiliary
    heads read each block's sum, at its resolution."""
    torch.manual_seed(0)
    decoder = Decoder(genotype, num_classes=5, channels=8, sep_repeats=2, aux="cell", fused=False)
    decoder = randomise_batch_norms(decoder).eval()
    x = features([(24, 16, 24), (32, 8, 12), (96, 4, 6), (320, 2, 3)], batch=2)  # a 64 x 96 image's
    with torch.no_grad():
        logits, aux = decoder.forward_with_aux(x)
        want, want_aux = spec_decoder(decoder, x)
    torch.testing.assert_close(logits, want)
    assert logits.shape == (2, 5, 64 // decoder.output_stride, 96 // decoder.output_stride)
    assert len(aux) == 3
    for got, expected in zip(aux, want_aux):
        torch.testing.assert_close(got, expected)
