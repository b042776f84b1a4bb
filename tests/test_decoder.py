import pytest
import torch
import torch.nn.functional as F

from nasfast.cell import Cell, cell_outputs
from nasfast.complexity import count_params
from nasfast.decoder import Decoder
from nasfast.genotype import Genotype
from nasfast.operations import GlobalPooling
import nasfast.ops

SHAPES_512 = [(24, 128, 128), (32, 64, 64), (96, 32, 32), (320, 16, 16)]
# A 256 x 256 image's: each design still runs cells on a map of 32 or more, wider than the 25 pixels
# that sep5x5_d6 and conv3x3_d12 reach across (inside and border), and on maps narrower than that.
SHAPES_256 = [(c, h // 2, w // 2) for c, h, w in SHAPES_512]
# SPEC section 3, reference figures (C=64, R=2, 21 classes, no auxiliary heads).
REFERENCE = {"arch0": (817_109, 128), "arch1": (997_333, 64), "arch2": (1_040_341, 64)}


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
        for value in (0, 1.5):
            with pytest.raises(ValueError, match=f"{option} must be an int of at least 1, got {value}"):
                Decoder("arch0", **{option: value})
    features = [torch.randn(1, c, 32 // s, 32 // s) for c, s in zip((24, 32, 96, 320), (4, 8, 16, 32))]
    for decoder in (Decoder("arch0"), torch.jit.script(Decoder("arch0", fused=False))):
        with pytest.raises(Exception, match="the decoder takes 4 feature maps, got 3"):
            decoder(features[:3])


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


ON_CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                         reason="needs a CUDA GPU")])


@pytest.mark.skipif(not nasfast.ops.available(), reason="native ops library not built")
@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
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
