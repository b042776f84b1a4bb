"""The CUDA kernels' logic, without a GPU: csrc/tools/cuda_on_cpu.h runs them on the CPU, a thread
per CUDA thread, and each result is compared with the PyTorch reference. Grids smaller than the
work make the kernels' loops over the grid run too. Built twice: for sm_62 (the Jetson TX2) and
sm_90, whose paths differ (warp-aggregated counts from sm_70 on). The cuda-marked tests run the
same kernels on a real GPU."""
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nasfast.ops import confusion_matrix_update_reference, upsample_add_reference
from nasfast.ops.separable import separable_conv_bn_relu_reference, separable_conv_reference

TOOLS = Path(__file__).resolve().parents[1] / "csrc" / "tools"
I32, I64, U32, P = ctypes.c_int, ctypes.c_int64, ctypes.c_uint, ctypes.c_void_p
SIGNATURES = {
    "sep_conv_forward": [P, P, P, P, P] + [I32] * 7 + [U32],
    "depthwise_planes": [P, P, P] + [I32] * 7 + [U32, U32],
    "depthwise_weight_grad": [P, P, P] + [I32] * 6 + [U32],
    "upsample_add": [P, P, P, I64] + [I32] * 4 + [U32] * 4,
    "upsample_add_backward_low": [P, P, I64] + [I32] * 4 + [U32] * 4,
    "confusion_from_logits": [P, P, P] + [I64] * 7 + [I32, I32, P] + [U32] * 3,
    "confusion_from_labels": [P, P, P, I64, I64, I64, I32, P, U32, U32],
    "divergent_barrier": [],
    "set_barrier_timeout_ms": [I32],
}


@pytest.fixture(scope="module", params=[620, 900], ids=["sm62", "sm90"])
def gpu(request, tmp_path_factory):
    if not shutil.which("g++"):
        pytest.skip("needs g++")
    library = tmp_path_factory.mktemp("kernels_on_cpu") / f"kernels_{request.param}.so"
    build = subprocess.run(["g++", "-std=c++20", "-O1", "-Wall", "-Werror", "-Wno-unknown-pragmas",
                            "-Wno-builtin-macro-redefined", f"-D__CUDA_ARCH__={request.param}", "-shared", "-fPIC",
                            "-pthread", str(TOOLS / "cuda_kernels_on_cpu.cpp"), "-o", str(library)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    lib = ctypes.CDLL(str(library))
    for name, argtypes in SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
    return lib


def ptr(tensor):
    return None if tensor is None else tensor.data_ptr()


def random(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k, dilation, bias", [(3, 1, False), (5, 1, True), (5, 3, True), (3, 6, True), (7, 1, False)])
@pytest.mark.parametrize("C, Cout, H, W", [(37, 70, 9, 13), (37, 70, 9, 16), (48, 48, 8, 12), (9, 20, 9, 13),
                                           (5, 5, 4, 4)])
def test_separable_forward(gpu, k, dilation, bias, C, Cout, H, W):
    # 37 channels: three steps of 16; 70 outputs: two tiles of 64; 48 fill one tile, 20 and 5 smaller
    # ones (fewer threads); 117 pixels: two tiles, no 4-wide stores; 144, 96 and 16: with them, and
    # rows of a multiple of 4 pixels, four to a thread in the depthwise (the third tile of 144 only
    # a quarter full); 2 of the 3 images at a time. k = 7: the generic taps.
    x, dw, pw, b = (random(3, C, H, W), random(C, 1, k, k, seed=1), random(Cout, C, 1, 1, seed=2),
                    random(Cout, seed=3))
    out = torch.full((3, Cout, H, W), float("nan"))
    assert gpu.sep_conv_forward(ptr(x), ptr(dw), ptr(pw), ptr(b) if bias else None, ptr(out), 3, C, Cout, H, W, k,
                                dilation, 2) == 0
    expected = separable_conv_bn_relu_reference(x, dw, pw, b, dilation) if bias else separable_conv_reference(
        x, dw, pw, dilation)
    close(out, expected)


@pytest.mark.parametrize("W", [7, 12], ids=["pixels", "quads"])  # rows of 12: four pixels to a thread
@pytest.mark.parametrize("k, dilation", [(3, 1), (5, 1), (5, 3), (3, 6), (7, 2)])
def test_depthwise_and_its_gradients(gpu, k, dilation, W):
    N, C, H = 2, 5, 11
    x, dw = random(N, C, H, W).requires_grad_(), random(C, 1, k, k, seed=1).requires_grad_()
    g = random(N, C, H, W, seed=2)
    y = F.conv2d(x, dw, padding=dilation * (k // 2), dilation=dilation, groups=C)
    grad_x, grad_dw = torch.autograd.grad(y, (x, dw), g)
    out, out_grad = torch.empty(N, C, H, W), torch.empty(N, C, H, W)
    assert gpu.depthwise_planes(ptr(x), ptr(dw), ptr(out), N * C, C, H, W, k, dilation, 0, 1, 3) == 0
    assert gpu.depthwise_planes(ptr(g), ptr(dw), ptr(out_grad), N * C, C, H, W, k, dilation, 1, 1, 3) == 0
    close(out, y.detach())
    close(out_grad, grad_x)
    weight_grad = torch.zeros(C, 1, k, k)
    assert gpu.depthwise_weight_grad(ptr(g), ptr(x), ptr(weight_grad), N, C, H, W, k, dilation, 2) == 0
    close(weight_grad, grad_dw)


@pytest.mark.parametrize("low, high", [((5, 7), (11, 15)), ((8, 8), (32, 32)), ((9, 4), (5, 3))])
def test_upsample_add_and_its_gradient(gpu, low, high):
    planes, (h, w), (H, W) = 6, low, high
    high_t, low_t, grad = random(1, planes, H, W), random(1, planes, h, w, seed=1).requires_grad_(), random(
        1, planes, H, W, seed=2)
    out, grad_low = torch.empty(1, planes, H, W), torch.empty(1, planes, h, w)
    # 32 x 2 threads: a row in one or two warps; 2 x 4 blocks: the kernels loop over rows and planes.
    assert gpu.upsample_add(ptr(high_t), ptr(low_t), ptr(out), planes, H, W, h, w, 2, 4, 32, 2) == 0
    assert gpu.upsample_add_backward_low(ptr(grad), ptr(grad_low), planes, H, W, h, w, 2, 4, 32, 2) == 0
    expected = upsample_add_reference(high_t, low_t)
    close(out, expected.detach())
    close(grad_low, torch.autograd.grad(expected, low_t, grad)[0])


def reward_from_logits(gpu, logits, target, staged, shared_counts=1, bands=4, images=2, threads=64):
    N, K, h, w = logits.shape
    counts, bad = torch.zeros(K, K, dtype=torch.long), torch.zeros(1, dtype=torch.int32)
    assert gpu.confusion_from_logits(ptr(logits), ptr(target), ptr(counts), N, K, h, w, *target.shape[1:], 255,
                                     shared_counts, staged, ptr(bad), bands, images, threads) == 0
    return counts, bad.item()


@pytest.mark.parametrize("staged", [1, 0], ids=["staged", "general"])
@pytest.mark.parametrize("shared_counts", [1, 0])
@pytest.mark.parametrize("low, high", [((9, 12), (36, 45)), ((7, 9), (7, 9)), ((5, 3), (13, 17)), ((16, 40), (8, 20))])
def test_reward_from_logits(gpu, staged, shared_counts, low, high):
    g = torch.Generator().manual_seed(3)
    N, K = 3, 7
    logits = torch.randn(N, K, *low, generator=g, dtype=torch.float64)
    target = torch.randint(0, K, (N, *high), generator=g)
    target[:, 0] = 255
    reference = torch.zeros(K, K, dtype=torch.long)
    confusion_matrix_update_reference(reference, logits, target, 255)
    # Bands of rows of 2 of the 3 images at a time; 64 threads: rows of 36 or 45 leave lanes idle,
    # and 7 x 40 staged values take several steps.
    counts, bad = reward_from_logits(gpu, logits, target, staged, shared_counts)
    assert torch.equal(counts, reference) and bad == 0


@pytest.mark.parametrize("staged", [1, 0], ids=["staged", "general"])
def test_reward_from_logits_flags_bad_labels(gpu, staged):
    logits, target = random(2, 5, 4, 6, dtype=torch.float64), torch.randint(0, 5, (2, 8, 12))
    for bad_value in (5, -1):
        target[1, 7, 11] = bad_value
        assert reward_from_logits(gpu, logits, target, staged)[1] == 1
    target[1, 7, 11] = 255
    assert reward_from_logits(gpu, logits, target, staged)[1] == 0


@pytest.mark.parametrize("shared_counts", [1, 0])
def test_reward_from_labels(gpu, shared_counts):
    g = torch.Generator().manual_seed(4)
    K, n = 21, 5000
    pred, target = torch.randint(0, K, (n,), generator=g), torch.randint(0, K, (n,), generator=g)
    pred[:3000] = 4  # long runs: whole warps counting one cell at once
    target[::7] = 255
    fused, reference, bad = torch.zeros(K, K, dtype=torch.long), torch.zeros(K, K, dtype=torch.long), torch.zeros(
        1, dtype=torch.int32)
    assert gpu.confusion_from_labels(ptr(pred), ptr(target), ptr(fused), n, K, 255, shared_counts, ptr(bad), 3,
                                     96) == 0
    confusion_matrix_update_reference(reference, pred.view(1, 1, n), target.view(1, 1, n), 255)
    assert torch.equal(fused, reference) and bad.item() == 0


@pytest.mark.parametrize("bad_target, bad_pred, flags", [(7, None, 1), (-1, None, 1), (None, 7, 2), (7, 9, 3)])
def test_reward_from_labels_flags_bad_values(gpu, bad_target, bad_pred, flags):
    target, pred = torch.randint(0, 7, (3000,)), torch.randint(0, 7, (3000,))
    target[10] = 255
    pred[10] = 99  # not counted, so not flagged: its target is ignored
    if bad_target is not None:
        target[2999] = bad_target
    if bad_pred is not None:
        pred[1500] = bad_pred
    counts, bad = torch.zeros(7, 7, dtype=torch.long), torch.zeros(1, dtype=torch.int32)
    assert gpu.confusion_from_labels(ptr(pred), ptr(target), ptr(counts), 3000, 7, 255, 1, ptr(bad), 2, 256) == 0
    assert bad.item() == flags


def test_a_barrier_not_every_thread_reaches_is_reported(gpu):
    gpu.set_barrier_timeout_ms(300)
    try:
        assert gpu.divergent_barrier() == 1
    finally:
        gpu.set_barrier_timeout_ms(10000)
