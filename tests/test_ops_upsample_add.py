import copy
import pickle

import pytest
import torch

from conftest import DEVICES
import nasfast.ops as ops
from nasfast.ops import UpsampleAdd, upsample_add, upsample_add_reference

needs_ops = pytest.mark.skipif(not ops.available(), reason="native ops library not built")
DOWN_AND_UP = ((6, 10), (11, 7))  # fewer rows than low, more columns
SIZES = [  # (high, low): integer, non-integer and odd scales, equal sizes, 1x1
    ((8, 8), (4, 4)), ((23, 30), (12, 15)), ((45, 60), (12, 15)), ((7, 9), (7, 9)),
    ((5, 6), (1, 1)), ((128, 128), (16, 16)), ((13, 17), (5, 3)), DOWN_AND_UP,
]


def inputs(high, low, dtype=torch.float32, batch=2, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *high, generator=g, dtype=dtype),
            torch.randn(batch, channels, *low, generator=g, dtype=dtype))


@needs_ops
@pytest.mark.parametrize("high, low", SIZES)
def test_values_match_reference(high, low):
    h, l = inputs(high, low)
    torch.testing.assert_close(torch.ops.nasfast.upsample_add(h, l), upsample_add_reference(h, l))


@needs_ops
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_channels_last_values_and_gradients(device):
    h, l = (t.to(device) for t in inputs((24, 32), (9, 11), channels=4))
    for view in (lambda x: x.transpose(2, 3), lambda x: x.to(memory_format=torch.channels_last),
                 lambda x: x[:, ::2]):
        a, b = view(h), view(l)
        torch.testing.assert_close(torch.ops.nasfast.upsample_add(a, b), upsample_add_reference(a, b))
        grad = torch.randn(a.shape, device=device).to(memory_format=torch.channels_last)  # laid out otherwise
        grads = []
        for op in (torch.ops.nasfast.upsample_add, upsample_add_reference):
            leaves = h.detach().clone().requires_grad_(), l.detach().clone().requires_grad_()
            op(*map(view, leaves)).backward(grad)  # through the views, as the inputs are laid out
            grads.append([leaf.grad for leaf in leaves])
        torch.testing.assert_close(grads[0], grads[1])


@needs_ops
@pytest.mark.parametrize("high, low", SIZES[:5] + [DOWN_AND_UP])
def test_gradcheck_float64(high, low):
    h, l = inputs(high, low, dtype=torch.float64, batch=1, channels=2)
    h.requires_grad_(), l.requires_grad_()
    assert torch.autograd.gradcheck(torch.ops.nasfast.upsample_add, (h, l))


@needs_ops
def test_gradients_match_reference():
    h, l = inputs((45, 60), (12, 15))
    grad = torch.randn_like(h)
    results = []
    for f in (torch.ops.nasfast.upsample_add, upsample_add_reference):
        a, b = h.clone().requires_grad_(), l.clone().requires_grad_()
        f(a, b).backward(grad)
        results.append((a.grad, b.grad))
    torch.testing.assert_close(results[0], results[1])


@needs_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("high, low", [((23, 30), (12, 15)), ((7, 9), (7, 9))])
def test_opcheck(high, low, device):
    h, l = (t.to(device) for t in inputs(high, low))
    torch.library.opcheck(torch.ops.nasfast.upsample_add.default, (h, l.requires_grad_()))
    torch.library.opcheck(torch.ops.nasfast.upsample_add.default, (h.requires_grad_(), l))
    torch.library.opcheck(torch.ops.nasfast.upsample_add_backward_low.default, (h.detach(), list(l.shape)))


@needs_ops
def test_bad_arguments_are_rejected():
    h, l = inputs((8, 8), (4, 4))
    bad = [((h, l[:, :2]), "batch and channels"), ((h, l.double()), "dtypes differ"), ((h[0], l[0]), "4-d"),
           ((h.half(), l.half()), "float32 or float64"), ((h, l[:, :, :0]), "empty")]
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.nasfast.upsample_add(*args)
    for low_size in ([4, 4], [1, 3, 4, 4], [2, 3, 0, 4]):  # read past its end, or other N x C (direct calls only)
        with pytest.raises(RuntimeError, match="low_size N x C x h x w with h, w > 0"):
            torch.ops.nasfast.upsample_add_backward_low(h, low_size)


def test_the_reference_refuses_to_broadcast_as_the_native_op_does():
    h, l = inputs((8, 8), (4, 4))
    for args in ((h, l[:1]), (h, l[:, :2]), (h[0], l[0])):
        with pytest.raises(ValueError, match="high and low must be N x C x H x W and N x C x h x w"):
            upsample_add_reference(*args)


@needs_ops
def test_modules_keep_their_class_when_copied():
    for fused in (True, False):
        module = UpsampleAdd(fused=fused)
        for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
            assert type(copied) is type(module)


@needs_ops
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("high, low", SIZES)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.float16, 1e-2)])
def test_cuda_matches_reference(high, low, dtype, tolerance):
    h, l = (t.cuda() for t in inputs(high, low, dtype=torch.float64))
    grad = torch.randn_like(h)
    results = []
    for f, cast in ((torch.ops.nasfast.upsample_add, dtype), (upsample_add_reference, torch.float64)):
        a, b = h.to(cast).requires_grad_(), l.to(cast).requires_grad_()
        out = f(a, b)
        out.backward(grad.to(cast))
        results.append([t.double() for t in (out, a.grad, b.grad)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * 10)
    if dtype == torch.float64:
        h64, l64 = h[:1, :2].requires_grad_(), l[:1, :2].requires_grad_()
        assert torch.autograd.gradcheck(torch.ops.nasfast.upsample_add, (h64, l64))


@needs_ops
def test_module_picks_the_implementation_at_construction_and_scripts():
    h, l = inputs((23, 30), (12, 15))
    fused, reference = UpsampleAdd(fused=True), UpsampleAdd(fused=False)
    assert type(fused).__name__ == "FusedUpsampleAdd" and type(reference) is UpsampleAdd
    for module in (fused, reference):
        torch.testing.assert_close(torch.jit.script(module)(h, l), upsample_add_reference(h, l))
    assert "nasfast::upsample_add" in str(torch.jit.script(fused).graph)


@needs_ops
def test_half_precision_and_mixed_dtypes_on_the_cpu_run_the_reference():
    h, l = inputs((23, 30), (12, 15))
    for high, low in ((h.bfloat16(), l.bfloat16()), (h.bfloat16(), l.float()), (h.half(), l.half())):
        for add in (UpsampleAdd(fused=True), upsample_add):
            torch.testing.assert_close(add(high, low), upsample_add_reference(high, low))


def test_reference_module_scripts_without_the_library():
    assert "nasfast::" not in str(torch.jit.script(UpsampleAdd(fused=False)).graph)


@needs_ops
def test_second_derivatives_are_refused_not_silently_zero():
    high = torch.randn(1, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    low = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    out = torch.ops.nasfast.upsample_add(high, low).pow(2).sum()
    with pytest.raises(RuntimeError, match="upsample_add: second derivatives .* fused=False"):
        torch.autograd.grad(out, low, create_graph=True)


@needs_ops
def test_fused_modules_run_their_references_on_devices_without_kernels(monkeypatch):
    """The library has CPU and CUDA kernels only: on another device (MPS, XPU; here "meta") the
    modules built fused called the native ops, which raise there (on meta, their fake kernels
    answer: the ops are replaced by a failure to see that none is called)."""
    from nasfast.decoder import Decoder

    class NoKernels:
        def __getattr__(self, name):
            pytest.fail(f"nasfast::{name} was called on the meta device")

    decoder = Decoder("arch0", fused=True).to("meta")
    features = [torch.empty(2, c, 64 // s, 64 // s, device="meta") for c, s in zip((24, 32, 96, 320), (4, 8, 16, 32))]
    monkeypatch.setattr(torch.ops, "nasfast", NoKernels())
    for training in (True, False):
        assert decoder.train(training)(features).shape == (2, 21, 16, 16)
