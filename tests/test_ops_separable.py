import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import DEVICES
import nasfast.ops as ops
from nasfast.ops import SeparableConvBNReLU, separable_conv_reference
from nasfast.ops.separable import FusedSeparableConvBNReLU, fold_batch_norm, separable_conv_bn_relu_reference

needs_ops = pytest.mark.skipif(not ops.available(), reason="native ops library not built")
SEARCH_SPACE = [(3, 1), (5, 1), (3, 3), (5, 6)]  # (kernel, dilation) of SPEC ops 2, 3, 7, 8
SHAPES = [(2, 3, 7, 9), (1, 4, 13, 11), (3, 2, 6, 7), (1, 3, 1, 1)]  # odd sizes, maps smaller than the reach


def weights(channels, out_channels, k, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(channels, 1, k, k, generator=g, dtype=dtype),
            torch.randn(out_channels, channels, 1, 1, generator=g, dtype=dtype))


def inputs(shape, k, out_channels=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    return (x,) + weights(shape[1], out_channels or shape[1], k, dtype, seed)


@needs_ops
@pytest.mark.parametrize("k, d", SEARCH_SPACE)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_match_reference(k, d, shape):
    x, dw, pw = inputs(shape, k, out_channels=5)
    torch.testing.assert_close(torch.ops.nasfast.sep_conv(x, dw, pw, d), separable_conv_reference(x, dw, pw, d))
    bias = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(torch.ops.nasfast.sep_conv_bn_relu(x, dw, pw, bias, d),
                               separable_conv_bn_relu_reference(x, dw, pw, bias, d))


@needs_ops
@pytest.mark.parametrize("k, d", SEARCH_SPACE + [(7, 2), (1, 1)])
def test_gradcheck_float64(k, d):
    x, dw, pw = (t.requires_grad_() for t in inputs((2, 3, 8, 7), k, out_channels=4))
    assert torch.autograd.gradcheck(lambda *a: torch.ops.nasfast.sep_conv(*a, d), (x, dw, pw))
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.nasfast.sep_conv_bn_relu(*a, d), (x, dw, pw, bias))


@pytest.fixture
def four_threads():
    torch.set_num_threads(4)  # conftest's restore_torch_threads sets it back


def _gradients(f, tensors, grad, requires=(True, True, True)):
    leaves = [t.detach().clone().requires_grad_(r) for t, r in zip(tensors, requires)]
    f(*leaves).backward(grad)
    return [t.grad for t in leaves]


@needs_ops
@pytest.mark.parametrize("k, d", SEARCH_SPACE)
def test_float32_forward_and_gradients_over_several_bands_and_tasks(k, d, four_threads):
    # 5 images of 70 x 40 on 4 threads: several bands of rows per image, and backward tasks
    # (min(threads, images) of them) of two images; on 5 or more threads each task had one.
    x, dw, pw = inputs((5, 6, 70, 40), k, dtype=torch.float32, seed=k + d)
    grad = torch.randn(5, 6, 70, 40)
    fused = lambda *a: torch.ops.nasfast.sep_conv(*a, d)  # noqa: E731
    reference = lambda *a: separable_conv_reference(*a, d)  # noqa: E731
    torch.testing.assert_close(fused(x, dw, pw), reference(x, dw, pw), rtol=1e-4, atol=1e-4)
    for requires in [(True, True, True), (False, True, True), (True, False, False), (False, False, True)]:
        got = _gradients(fused, (x, dw, pw), grad, requires)
        expected = _gradients(reference, (x, dw, pw), grad, requires)
        for a, b in zip(got, expected):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


@needs_ops
@pytest.mark.parametrize("channels, out_channels", [(1, 1), (1, 16), (16, 1)])
def test_one_channel_gradients_on_several_threads(channels, out_channels, four_threads):
    # Matrices of one row or column take BLAS, not the vector tiles, inside the worker threads,
    # which do not inherit the caller's autograd state (it refused mm's out= there, once).
    x, dw, pw = inputs((4, channels, 9, 10), 3, out_channels=out_channels)
    grad = torch.randn(4, out_channels, 9, 10, dtype=torch.float64)
    fused = lambda *a: torch.ops.nasfast.sep_conv(*a, 1)  # noqa: E731
    got = _gradients(fused, (x, dw, pw), grad)
    expected = _gradients(lambda *a: separable_conv_reference(*a, 1), (x, dw, pw), grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@needs_ops
@pytest.mark.parametrize("k, d", SEARCH_SPACE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wide_maps_match_reference(k, d, dtype):
    # Maps and channel counts large enough for the CPU's vector tiles, of 256-bit vectors (float32:
    # depthwise 16 columns x 4 rows d apart, pointwise 6 channels x 16 pixels) and of 512-bit ones
    # (32 columns; 8 channels x 32 pixels): one tile of each exactly, and sizes whose last tiles
    # overlap in columns and channels, over more than the 2048 pixels of a pointwise block.
    for shape, out_channels in [((2, 6, 4 * d, 16), 6), ((2, 8, 4 * d, 32), 8), ((1, 7, 4 * d + 57, 37), 11)]:
        x, dw, pw = inputs(shape, k, out_channels=out_channels, dtype=dtype, seed=k * d)
        bias = torch.randn(out_channels, dtype=dtype)
        tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
        torch.testing.assert_close(torch.ops.nasfast.sep_conv(x, dw, pw, d), separable_conv_reference(x, dw, pw, d),
                                   **tolerance)
        torch.testing.assert_close(torch.ops.nasfast.sep_conv_bn_relu(x, dw, pw, bias, d),
                                   separable_conv_bn_relu_reference(x, dw, pw, bias, d), **tolerance)
        grad = torch.randn(shape[0], out_channels, *shape[2:], dtype=dtype)
        got = _gradients(lambda *a: torch.ops.nasfast.sep_conv(*a, d), (x, dw, pw), grad)
        expected = _gradients(lambda *a: separable_conv_reference(*a, d), (x, dw, pw), grad)
        # float32 weight gradients sum up to 2257 products, in an order that in the reference
        # depends on its threads' timing: 1.4e-4 apart relatively was seen.
        gradient_tolerance = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else {}
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, **gradient_tolerance)


@needs_ops
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_channels_last(device):
    x, dw, pw = (t.to(device) for t in inputs((2, 4, 12, 10), 5))
    bias = torch.randn(4, dtype=torch.float64, device=device)
    cases = [(x.to(memory_format=torch.channels_last), dw, pw),
             (x.transpose(2, 3), dw, pw),
             (x[:, ::2], dw[::2], pw[::2, ::2]),
             (x, dw.transpose(2, 3), pw.transpose(0, 1))]
    for a, b, c in cases:
        torch.testing.assert_close(torch.ops.nasfast.sep_conv(a, b, c, 6), separable_conv_reference(a, b, c, 6))
        torch.testing.assert_close(torch.ops.nasfast.sep_conv_bn_relu(a, b, c, bias[:c.shape[0]], 6),
                                   separable_conv_bn_relu_reference(a, b, c, bias[:c.shape[0]], 6))
    grad = torch.randn(2, 4, 12, 10, dtype=torch.float64, device=device).to(memory_format=torch.channels_last)
    fused = lambda *a: torch.ops.nasfast.sep_conv(*a, 3)  # noqa: E731
    reference = lambda *a: separable_conv_reference(*a, 3)  # noqa: E731
    for a, b in zip(_gradients(fused, cases[0], grad), _gradients(reference, cases[0], grad)):
        torch.testing.assert_close(a, b)


@needs_ops
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, dw, pw = (t.to(device) for t in inputs((2, 3, 9, 8), 3, out_channels=4))
    bias = torch.randn(4, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.nasfast.sep_conv.default,
                          (x.requires_grad_(), dw.requires_grad_(), pw.requires_grad_(), 3))
    torch.library.opcheck(torch.ops.nasfast.sep_conv_bn_relu.default, (x, dw, pw, bias.requires_grad_(), 3))
    grad = torch.randn(2, 4, 9, 8, dtype=torch.float64, device=device)
    for mask in ([True, True, True], [True, False, True]):
        torch.library.opcheck(torch.ops.nasfast.sep_conv_backward.default,
                              (grad, x.detach(), dw.detach(), pw.detach(), 3, mask))


@needs_ops
def test_bad_arguments_are_rejected():
    x, dw, pw = inputs((1, 3, 5, 5), 3, dtype=torch.float32)
    bad = [((x, torch.randn(3, 1, 2, 2), pw, 1), "k odd"),
           ((x, torch.randn(4, 1, 3, 3), pw, 1), "depthwise"),
           ((x, dw, torch.randn(3, 2, 1, 1), 1), "input channels"),
           ((x, dw, pw, 0), "dilation"),
           ((x, dw, pw, 2 ** 31), "dilation 2147483648 is too large for a 3x3 kernel"),  # 32-bit tap offsets
           ((x.double(), dw, pw, 1), "same dtype"),
           ((x.half(), dw.half(), pw.half(), 1), "float32 or float64"),
           ((x[0], dw, pw, 1), "N x C x H x W")]
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.nasfast.sep_conv(*args)
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.nasfast.sep_conv_bn_relu(x, dw, pw, torch.randn(2), 1)


def randomised(module):
    """Non-trivial BN statistics and affine parameters, so that folding them is really tested."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=g) + 0.5 if "var" in name else \
                    torch.randn(tensor.shape, generator=g)
                tensor.copy_(values)
    return module


@needs_ops
@pytest.mark.parametrize("k, d", SEARCH_SPACE)
def test_module_fused_matches_reference_in_train_and_eval(k, d):
    fused = randomised(SeparableConvBNReLU(6, k, d, fused=True))
    reference = SeparableConvBNReLU(6, k, d, fused=False)
    reference.load_state_dict(fused.state_dict())
    assert type(fused) is FusedSeparableConvBNReLU and type(reference) is SeparableConvBNReLU
    assert isinstance(fused, SeparableConvBNReLU)  # what nasfast.complexity looks for
    assert type(SeparableConvBNReLU(channels=6, kernel_size=k, dilation=d, fused=True)) is FusedSeparableConvBNReLU
    assert type(SeparableConvBNReLU(6, kernel_size=k, fused=False)) is SeparableConvBNReLU
    assert list(fused.state_dict()) == list(reference.state_dict())
    x = torch.randn(3, 6, 17, 15)
    for training in (True, False):
        fused.train(training), reference.train(training)
        outputs, grads = [], []
        for module in (fused, reference):
            module.zero_grad()
            xx = x.clone().requires_grad_()
            out = module(xx)
            out.backward(torch.ones_like(out))
            outputs.append(out)
            grads.append([xx.grad] + [p.grad for p in module.parameters()])
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fused.bn.running_mean, reference.bn.running_mean)  # training updated both alike


@needs_ops
@pytest.mark.parametrize("training", [True, False])
def test_half_precision_and_autocast_on_the_cpu_run_the_reference(training):
    # The CPU kernels take float32/float64 and one dtype; under autocast a module gets the
    # bfloat16 output of the layer before with its float32 weights.
    fused = randomised(SeparableConvBNReLU(6, 3, 3, fused=True)).train(training)
    reference = SeparableConvBNReLU(6, 3, 3, fused=False).train(training)
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(2, 6, 11, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fused(x.bfloat16()), reference(x.bfloat16()))
    fused.bfloat16(), reference.bfloat16()
    out = fused(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference(x.bfloat16()))


@needs_ops
def test_inference_folds_the_weights_as_they_are_now():
    fused = randomised(SeparableConvBNReLU(6, 3, 1, fused=True)).eval()
    reference = SeparableConvBNReLU(6, 3, 1, fused=False).eval()
    x = torch.randn(2, 6, 9, 10)

    def check():
        reference.load_state_dict(fused.state_dict())
        reference.bn.eps = fused.bn.eps
        with torch.no_grad():
            torch.testing.assert_close(fused(x), reference(x), rtol=1e-4, atol=1e-4)

    check()
    with torch.no_grad():
        fused.bn.running_var.mul_(3)  # in place
    check()
    with torch.no_grad():
        fused.bn.weight.data.mul_(2)  # through .data: no version bump (an EMA loop writes so)
    check()
    fused.load_state_dict(randomised(SeparableConvBNReLU(6, 3, 1, fused=False)).state_dict())
    fused.bn.eps = 0.5
    check()
    fused.pointwise.weight = torch.nn.Parameter(torch.randn(6, 6, 1, 1))  # new storage
    check()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(fused)(x), fused(x))
        traced = torch.jit.trace(fused, x)  # a kept fold made this fail ("graphs differed")
    fused.load_state_dict(randomised(SeparableConvBNReLU(6, 3, 1, fused=False)).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(traced(x), fused(x))  # the trace folds the weights it holds now


@needs_ops
def test_a_model_made_in_inference_mode_folds_each_call():
    """Tensors made in inference mode have no version counter to key a kept fold on."""
    x = torch.randn(2, 6, 9, 10)
    state = randomised(SeparableConvBNReLU(6, 3, 1, fused=False)).state_dict()
    with torch.inference_mode():
        fused = SeparableConvBNReLU(6, 3, 1, fused=True).eval()
        reference = SeparableConvBNReLU(6, 3, 1, fused=False).eval()
        for module in (fused, reference):
            module.load_state_dict(state)
        torch.testing.assert_close(fused(x), reference(x), rtol=1e-4, atol=1e-4)
        fused.bn.running_var.mul_(3)
        reference.bn.running_var.mul_(3)
        torch.testing.assert_close(fused(x), reference(x), rtol=1e-4, atol=1e-4)


def test_fold_batch_norm_is_exact_in_float64():
    module = randomised(SeparableConvBNReLU(5, 3, 1, fused=False)).double().eval()
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    bn = module.bn
    pointwise, bias = fold_batch_norm(module.pointwise.weight, bn.running_mean, bn.running_var, bn.eps,
                                      bn.weight, bn.bias)
    expected = module(x)
    torch.testing.assert_close(separable_conv_bn_relu_reference(x, module.depthwise.weight, pointwise, bias, 1),
                               expected)


@needs_ops
def test_fused_module_scripts_and_copies_keep_the_class():
    fused = randomised(SeparableConvBNReLU(4, 5, 6, fused=True)).eval()
    scripted = torch.jit.script(fused)
    graph = str(scripted.graph)
    assert "nasfast::sep_conv_bn_relu" in graph and "nasfast::sep_conv(" in graph
    x = torch.randn(2, 4, 11, 9)
    torch.testing.assert_close(scripted(x), fused(x))
    for copied in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert type(copied) is FusedSeparableConvBNReLU
        torch.testing.assert_close(copied(x), fused(x))
    reference = SeparableConvBNReLU(4, 5, 6, fused=False)
    assert type(copy.deepcopy(reference)) is SeparableConvBNReLU


def test_reference_module_scripts_without_the_library():
    module = SeparableConvBNReLU(4, 3, 3, fused=False)
    assert "nasfast::" not in str(torch.jit.script(module).graph)
    with pytest.raises(ValueError, match="odd kernel_size"):
        SeparableConvBNReLU(4, 4, 1, fused=False)


@needs_ops
def test_scripted_graph_runs_where_only_the_library_is_loaded(tmp_path):
    """What a C++ program does: load the ops library, then the TorchScript file; no nasfast."""
    fused = randomised(SeparableConvBNReLU(4, 3, 3, fused=True)).eval()
    x = torch.randn(1, 4, 10, 12)
    torch.jit.script(fused).save(str(tmp_path / "sep.pt"))
    torch.save({"x": x, "y": fused(x).detach()}, tmp_path / "io.pt")
    code = ("import sys, torch; torch.ops.load_library(sys.argv[1]); m = torch.jit.load(sys.argv[2]); "
            "io = torch.load(sys.argv[3]); assert 'nasfast' not in sys.modules; "
            "torch.testing.assert_close(m(io['x']), io['y']); print('ok')")
    out = subprocess.run([sys.executable, "-c", code, ops.library_path(), str(tmp_path / "sep.pt"),
                          str(tmp_path / "io.pt")], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=""))
    assert out.stdout.strip() == "ok", out.stderr


EMPTY_BATCH = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
import nasfast.ops
from nasfast.ops import separable_conv_reference
x = torch.randn(0, 4, 6, 7, requires_grad=True)
dw, pw, bias = torch.randn(4, 1, 3, 3, requires_grad=True), torch.randn(5, 4, 1, 1), torch.randn(5)
for out in (torch.ops.nasfast.sep_conv(x, dw, pw, 1), torch.ops.nasfast.sep_conv_bn_relu(x, dw, pw, bias, 1)):
    assert out.shape == separable_conv_reference(x, dw, pw, 1).shape, out.shape
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(dw.grad, torch.zeros_like(dw))
print("ok")
"""


@needs_ops
@pytest.mark.parametrize("threads", [1, 2])
def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients(threads):
    """In a process of its own: with one thread, it once divided by zero (SIGFPE)."""
    out = subprocess.run([sys.executable, "-c", EMPTY_BATCH, str(threads)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


DILATIONS_BEYOND_THE_MAP = """
import torch
import nasfast.ops
from nasfast.ops import separable_conv_reference
x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
dw = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
pw, bias = torch.randn(3, 2, 1, 1, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
for d in (4, 5, 9, 5000, 2 ** 30 - 1):  # from 5 = max(H, W) on, every tap but the centre is outside the map
    out = torch.ops.nasfast.sep_conv(x, dw, pw, d)
    expected = separable_conv_reference(x, dw, pw, min(d, 5000))
    torch.testing.assert_close(out, expected)
    for a, b in zip(torch.autograd.grad(out.sum(), (x, dw)), torch.autograd.grad(expected.sum(), (x, dw))):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.ops.nasfast.sep_conv_bn_relu(x, dw, pw, bias, d),
                               torch.relu(expected + bias[:, None, None]))
print("ok")
"""


@needs_ops
def test_dilations_beyond_the_map_give_the_references_values_without_their_padding():
    """In a process of its own: a dilation near 2^31 once overflowed the CPU kernels' scratch size (SIGSEGV)."""
    out = subprocess.run([sys.executable, "-c", DILATIONS_BEYOND_THE_MAP], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


def _check_cuda(shape, out_channels, k, d, dtype, tolerance):
    x, dw, pw = (t.cuda() for t in inputs(shape, k, out_channels=out_channels, dtype=torch.float64, seed=d))
    bias = torch.randn(out_channels, dtype=torch.float64, device="cuda")
    grad = torch.randn(shape[0], out_channels, *shape[2:], dtype=torch.float64, device="cuda")
    fused = lambda *a: torch.ops.nasfast.sep_conv(*a, d)  # noqa: E731
    reference = lambda *a: separable_conv_reference(*a, d)  # noqa: E731
    cast = [t.to(dtype) for t in (x, dw, pw)]
    torch.testing.assert_close(fused(*cast).double(), reference(x, dw, pw), rtol=tolerance, atol=tolerance * 10)
    torch.testing.assert_close(torch.ops.nasfast.sep_conv_bn_relu(*cast, bias.to(dtype), d).double(),
                               separable_conv_bn_relu_reference(x, dw, pw, bias, d),
                               rtol=tolerance, atol=tolerance * 10)
    for a, b in zip(_gradients(fused, cast, grad.to(dtype)), _gradients(reference, (x, dw, pw), grad)):
        torch.testing.assert_close(a.double(), b, rtol=tolerance * 10, atol=tolerance * 100)


@needs_ops
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("k, d", SEARCH_SPACE)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-10), (torch.float16, 2e-2),
                                              (torch.bfloat16, 1e-1)])
# 70 -> 130 channels: several input-channel steps and two output-channel blocks of the forward kernel;
# rows of 16: four pixels to a thread in the depthwise parts
@pytest.mark.parametrize("shape, out_channels", [((3, 8, 37, 29), 6), ((2, 70, 9, 11), 130), ((2, 20, 13, 16), 24)])
def test_cuda_matches_reference(k, d, dtype, tolerance, shape, out_channels):
    _check_cuda(shape, out_channels, k, d, dtype, tolerance)


@needs_ops
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("k", [1, 7])  # outside the search space: the weight gradient's generic kernel
def test_cuda_other_kernel_sizes(k):
    _check_cuda((2, 5, 12, 10), 3, k, 2, torch.float64, 1e-10)


@needs_ops
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gradcheck_and_module(exact_float32):
    x, dw, pw = (t.cuda().requires_grad_() for t in inputs((2, 3, 9, 8), 5, out_channels=4))
    assert torch.autograd.gradcheck(lambda *a: torch.ops.nasfast.sep_conv(*a, 2), (x, dw, pw))
    fused = randomised(SeparableConvBNReLU(6, 5, 6, fused=True)).cuda().eval()
    reference = SeparableConvBNReLU(6, 5, 6, fused=False).cuda().eval()
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(2, 6, 33, 47, device="cuda")
    torch.testing.assert_close(fused(x), reference(x), rtol=1e-4, atol=1e-4)


@needs_ops
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_backward_is_refused_in_deterministic_mode():
    """Its depthwise weight gradient sums in float atomics, in another order at each run."""
    x, dw, pw = (t.cuda().requires_grad_() for t in inputs((2, 3, 9, 8), 3))
    out = torch.ops.nasfast.sep_conv(x, dw, pw, 1).sum()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="sep_conv_backward_cuda"):
            out.backward()
    finally:
        torch.use_deterministic_algorithms(False)


@needs_ops
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_default_module_trains_with_cudnn_and_infers_with_the_native_kernel():
    default = randomised(SeparableConvBNReLU(6, 5, 6)).cuda()
    native = SeparableConvBNReLU(6, 5, 6, fused=True).cuda()
    reference = SeparableConvBNReLU(6, 5, 6, fused=False).cuda()
    native.load_state_dict(default.state_dict())
    reference.load_state_dict(default.state_dict())
    assert type(default) is FusedSeparableConvBNReLU
    assert not default.trains_native_on_cuda and native.trains_native_on_cuda
    x = torch.randn(2, 6, 33, 47, device="cuda")
    for module in (default, native, reference):
        module.eval()
    with torch.no_grad():
        assert torch.equal(default(x), native(x))  # inference: the same native kernel
        torch.testing.assert_close(default(x), reference(x), rtol=1e-3, atol=1e-3)
    default.train()
    reference.train()
    assert torch.equal(default(x), reference(x))  # training: the same cuDNN calls


@needs_ops
@pytest.mark.parametrize("k, d", SEARCH_SPACE)
def test_functional_forms_equal_the_references(k, d):
    x, depthwise, pointwise = torch.randn(2, 6, 13, 11), torch.randn(6, 1, k, k), torch.randn(6, 6, 1, 1)
    bias = torch.randn(6)
    torch.testing.assert_close(ops.separable_conv(x, depthwise, pointwise, d),
                               separable_conv_reference(x, depthwise, pointwise, d), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ops.separable_conv_bn_relu(x, depthwise, pointwise, bias, d),
                               separable_conv_bn_relu_reference(x, depthwise, pointwise, bias, d),
                               rtol=1e-4, atol=1e-4)


@needs_ops
@pytest.mark.parametrize("op", ["sep_conv", "sep_conv_bn_relu"])
def test_second_derivatives_are_refused_not_silently_zero(op):
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    dw, pw = torch.randn(3, 1, 3, 3, dtype=torch.float64), torch.randn(3, 3, 1, 1, dtype=torch.float64)
    args = (x, dw, pw, torch.zeros(3, dtype=torch.float64), 1) if op == "sep_conv_bn_relu" else (x, dw, pw, 1)
    out = getattr(torch.ops.nasfast, op)(*args).pow(2).sum()
    with pytest.raises(RuntimeError, match=f"nasfast::{op}: second derivatives"):
        torch.autograd.grad(out, x, create_graph=True)
    torch.autograd.grad(getattr(torch.ops.nasfast, op)(*args).sum(), x)  # first derivatives as before


@needs_ops
def test_the_fold_follows_batch_norm_statistics_updated_in_training():
    fused = randomised(SeparableConvBNReLU(6, 3, 1, fused=True)).eval()
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        fused(x)
        fused.train()
        fused(torch.randn(4, 6, 9, 9) * 3 + 1)  # new running statistics, no version bump
        fused.eval()
        reference = SeparableConvBNReLU(6, 3, 1, fused=False).eval()
        reference.load_state_dict(fused.state_dict())
        torch.testing.assert_close(fused(x), reference(x), rtol=1e-4, atol=1e-4)
