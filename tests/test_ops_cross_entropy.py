import pytest
import torch

import nasfast.ops as ops
from nasfast.ops import upsample_cross_entropy, upsample_cross_entropy_reference

needs_ops = pytest.mark.skipif(not ops.available(), reason="native ops library not built")
IGNORE = 255
SIZES = [  # (labels, logits): integer, non-integer and odd scales, equal sizes, 1x1, fewer rows than logits
    ((8, 8), (4, 4)), ((23, 30), (12, 15)), ((45, 60), (12, 15)), ((7, 9), (7, 9)), ((5, 6), (1, 1)),
    ((13, 17), (5, 3)), ((6, 10), (11, 7)),
]


def inputs(size, low, classes=5, batch=2, dtype=torch.float32, scale=3.0, seed=0):
    """Logits and labels with about a tenth of the pixels ignored."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, classes, *low, generator=g, dtype=dtype)
    target = torch.randint(0, classes, (batch, *size), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.1] = IGNORE
    return logits, target


def loss_and_gradient(f, logits, target, ignore_index=IGNORE):
    x = logits.detach().clone().requires_grad_()
    loss = f(x, target, ignore_index)
    loss.backward()
    return loss.detach(), x.grad


@needs_ops
@pytest.mark.parametrize("size, low", SIZES)
def test_loss_and_gradient_match_reference(size, low):
    logits, target = inputs(size, low)
    fused = loss_and_gradient(torch.ops.nasfast.upsample_cross_entropy, logits, target)
    torch.testing.assert_close(fused, loss_and_gradient(upsample_cross_entropy_reference, logits, target))


@needs_ops
@pytest.mark.parametrize("size, low", SIZES[:3] + SIZES[-2:])
def test_gradcheck_float64(size, low):
    logits, target = inputs(size, low, classes=3, batch=2, dtype=torch.float64)
    assert torch.autograd.gradcheck(torch.ops.nasfast.upsample_cross_entropy,
                                    (logits.requires_grad_(), target, IGNORE))


@needs_ops
def test_search_sized_batch_and_thread_counts_give_the_same_loss():
    logits, target = inputs((90, 120), (23, 30), classes=12, batch=6)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append(loss_and_gradient(torch.ops.nasfast.upsample_cross_entropy, logits, target))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    torch.testing.assert_close(results[0], loss_and_gradient(upsample_cross_entropy_reference, logits, target))


@needs_ops
def test_large_and_far_apart_logits_stay_exact():
    # differences down to -200 between classes: the exponentials underflow, the loss must not
    logits, target = inputs((23, 30), (12, 15), scale=60.0)
    fused = loss_and_gradient(torch.ops.nasfast.upsample_cross_entropy, logits, target)
    torch.testing.assert_close(fused, loss_and_gradient(upsample_cross_entropy_reference, logits, target))


@needs_ops
@pytest.mark.parametrize("dtype, offset", [(torch.float32, 1e8), (torch.float64, 1e17)])
def test_huge_logits_keep_the_log_sum(dtype, offset):
    logits, target = inputs((8, 8), (4, 4), classes=2, dtype=dtype, scale=0.0)
    logits += offset  # every class equal: log 2 per pixel, lost if the sum is taken next to the offset
    loss = torch.ops.nasfast.upsample_cross_entropy(logits, target, IGNORE)
    torch.testing.assert_close(loss, torch.tensor(0.6931471805599453, dtype=dtype))


@needs_ops
def test_infinite_logits_at_the_labels_size_are_not_blended_into_their_neighbours():
    logits, target = inputs((7, 9), (7, 9))
    logits[:, 1, 3, 4] = -float("inf")
    fused = loss_and_gradient(torch.ops.nasfast.upsample_cross_entropy, logits, target)
    assert fused[0].isfinite() and fused[1].isfinite().all()
    torch.testing.assert_close(fused, loss_and_gradient(upsample_cross_entropy_reference, logits, target))


@needs_ops
def test_non_contiguous_and_channels_last_inputs():
    logits, target = inputs((24, 32), (9, 11), classes=4)
    for x, t in [(logits.transpose(2, 3), target.transpose(1, 2)),
                 (logits.to(memory_format=torch.channels_last), target),
                 (logits[:, ::2], target.clamp(max=1))]:
        fused = loss_and_gradient(torch.ops.nasfast.upsample_cross_entropy, x, t)
        torch.testing.assert_close(fused, loss_and_gradient(upsample_cross_entropy_reference, x, t))


@needs_ops
def test_no_counted_pixel_gives_nan_and_zero_gradient_as_the_reference():
    logits, target = inputs((8, 8), (4, 4))
    loss, grad = loss_and_gradient(torch.ops.nasfast.upsample_cross_entropy, logits, torch.full_like(target, IGNORE))
    assert loss.isnan() and torch.equal(grad, torch.zeros_like(grad))


@needs_ops
def test_nan_logits_give_a_nan_loss():
    logits, target = inputs((8, 8), (4, 4))
    logits[0, 1, 2, 2] = float("nan")
    assert torch.ops.nasfast.upsample_cross_entropy(logits, target, IGNORE).isnan()


@needs_ops
def test_another_ignore_index():
    logits, target = inputs((23, 30), (12, 15))
    target[target == IGNORE] = -1
    fused = loss_and_gradient(torch.ops.nasfast.upsample_cross_entropy, logits, target, -1)
    torch.testing.assert_close(fused, loss_and_gradient(upsample_cross_entropy_reference, logits, target, -1))


def test_labels_of_any_integer_type():
    logits, target = inputs((23, 30), (12, 15))
    expected = upsample_cross_entropy_reference(logits, target)
    for dtype in (torch.uint8, torch.int32, torch.uint16):
        torch.testing.assert_close(upsample_cross_entropy(logits, target.to(dtype)), expected)


@needs_ops
@pytest.mark.parametrize("size, low", [((23, 30), (12, 15)), ((7, 9), (7, 9))])
def test_opcheck(size, low):
    logits, target = inputs(size, low)
    torch.library.opcheck(torch.ops.nasfast.upsample_cross_entropy.default, (logits.requires_grad_(), target, IGNORE))
    torch.library.opcheck(torch.ops.nasfast.upsample_cross_entropy_backward.default,
                          (torch.tensor(0.5), logits.detach(), target, IGNORE))


@needs_ops
def test_bad_arguments_are_rejected():
    logits, target = inputs((8, 8), (4, 4))
    out_of_range = target.clone()
    out_of_range[0, 3, 3] = 5
    negative = target.clone()
    negative[1, 0, 0] = -2
    for labels in (out_of_range, negative):  # an IndexError, as the reference's (F.cross_entropy)
        with pytest.raises(IndexError, match=r"target values must be in \[0, 5\) or 255"):
            torch.ops.nasfast.upsample_cross_entropy(logits, labels, IGNORE)
        with pytest.raises(IndexError):
            upsample_cross_entropy_reference(logits, labels, IGNORE)
    bad = [((logits, target.int()), "target must be int64"), ((logits.half(), target), "float32 or float64"),
           ((logits, target[:1]), "N x H x W with N = 2"), ((logits[0], target), "N x K x h x w"),
           ((logits[:, :, :0], target), "non-empty"), ((logits, target[:, :, :0]), "H, W > 0")]
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.nasfast.upsample_cross_entropy(*args, IGNORE)
    with pytest.raises(IndexError, match="target values must be in"):
        torch.ops.nasfast.upsample_cross_entropy_backward(torch.tensor(1.0), logits, out_of_range, IGNORE)


@needs_ops
def test_second_derivatives_are_refused_not_silently_zero():
    logits, target = inputs((8, 8), (4, 4), dtype=torch.float64)
    logits.requires_grad_()
    loss = torch.ops.nasfast.upsample_cross_entropy(logits, target, IGNORE)
    with pytest.raises(RuntimeError, match="upsample_cross_entropy: second derivatives"):
        torch.autograd.grad(loss, logits, create_graph=True)


@needs_ops
def test_the_function_runs_the_native_op_on_the_cpu_and_the_reference_otherwise():
    logits, target = inputs((23, 30), (12, 15))
    native = upsample_cross_entropy(logits.requires_grad_(), target, IGNORE)
    assert "UpsampleCrossEntropy" in native.grad_fn.name()
    reference = upsample_cross_entropy(logits.bfloat16(), target, IGNORE)  # the kernels take float32 and float64
    assert "UpsampleCrossEntropy" not in reference.grad_fn.name()
    torch.testing.assert_close(reference, upsample_cross_entropy_reference(logits.bfloat16(), target, IGNORE))


@pytest.mark.cuda
@needs_ops
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("size, low", SIZES)
def test_cuda_runs_the_composite_and_matches_the_reference(size, low):
    logits, target = (t.cuda() for t in inputs(size, low))
    fused = loss_and_gradient(torch.ops.nasfast.upsample_cross_entropy, logits, target)
    torch.testing.assert_close(fused, loss_and_gradient(upsample_cross_entropy_reference, logits, target))
    with pytest.raises(IndexError, match="target values must be in"):
        torch.ops.nasfast.upsample_cross_entropy(logits, target.clamp(max=5), IGNORE)
