"""The native ops' fake kernels, which torch.compile and torch.export trace with, refuse what the
ops refuse: they once returned a shape for any arguments, so that a trace went on with them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nasfast.ops as ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="native ops library not built")


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype)


BAD_CALLS = [
    ("upsample_add", (meta(2, 3, 8, 8), meta(1, 3, 4, 4)), "batch and channels must match"),
    ("upsample_add", (meta(2, 3, 8, 8), meta(2, 3, 4, 4, dtype=torch.float64)), "dtypes differ"),
    ("upsample_add", (meta(2, 3, 8, 8), meta(2, 3, 0, 4)), "low must not be empty"),
    ("sep_conv", (meta(2, 4, 8, 8), meta(3, 1, 3, 3), meta(4, 4, 1, 1), 1), "depthwise weight must be C x 1 x k x k"),
    ("sep_conv", (meta(2, 4, 8, 8), meta(4, 1, 2, 2), meta(4, 4, 1, 1), 1), "and k odd"),
    ("sep_conv", (meta(2, 4, 8, 8), meta(4, 1, 3, 3), meta(4, 5, 1, 1), 1),
     "pointwise weight must have 4 input channels"),
    ("sep_conv", (meta(2, 4, 8, 8), meta(4, 1, 3, 3), meta(4, 4, 1, 1), 0), "dilation must be >= 1"),
    ("sep_conv_bn_relu", (meta(2, 4, 8, 8), meta(4, 1, 3, 3), meta(6, 4, 1, 1), meta(4), 1), "bias must have 6"),
    ("upsample_cross_entropy", (meta(2, 5, 4, 4), meta(1, 8, 8, dtype=torch.int64), 255),
     "target must be N x H x W with N = 2"),
    ("upsample_cross_entropy", (meta(2, 5, 4, 4), meta(2, 8, 8, dtype=torch.int32), 255), "must be int64"),
    ("confusion_matrix_update_", (meta(5, 5, dtype=torch.int64), meta(2, 3, 4, 4), meta(2, 8, 8, dtype=torch.int64),
                                  255), "K = 5"),
]


@pytest.mark.parametrize("name, args, message", BAD_CALLS, ids=[f"{c[0]}-{c[2]}" for c in BAD_CALLS])
def test_fake_kernels_refuse_what_the_ops_refuse(name, args, message):
    with pytest.raises((RuntimeError, ValueError), match=message):
        getattr(torch.ops.nasfast, name)(*args)
    on_cpu = [torch.zeros(a.shape, dtype=a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises((RuntimeError, ValueError), match=message):  # the op itself, for the messages' sake
        getattr(torch.ops.nasfast, name)(*on_cpu)


def test_a_traced_model_with_mismatched_shapes_fails_while_tracing():
    class Mismatched(torch.nn.Module):
        def forward(self, high, low):
            return torch.ops.nasfast.upsample_add(high, low[:1])

    with pytest.raises(Exception, match="batch and channels must match"):
        torch.export.export(Mismatched(), (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)))


def test_every_op_has_its_fake_kernel_once_nasfast_is_imported():
    """In a fresh process, before any other call: the backward's fake was once registered only
    when the forward's had run."""
    calls = """
import torch, nasfast
m = lambda *shape, dtype=torch.float32: torch.empty(shape, device="meta", dtype=dtype)
x, dw, pw, grad = m(2, 4, 8, 8), m(4, 1, 3, 3), m(6, 4, 1, 1), m(2, 6, 8, 8)
target = m(2, 16, 16, dtype=torch.int64)
shapes = [torch.ops.nasfast.sep_conv_backward(grad, x, dw, pw, 2, [True, True, True])[1].shape,
          torch.ops.nasfast.upsample_add_backward_low(x, [2, 4, 4, 4]).shape,
          torch.ops.nasfast.upsample_cross_entropy_backward(m(), x, target, 255).shape,
          torch.ops.nasfast.sep_conv(x, dw, m(6, 4, 1, 1), 2).shape,
          torch.ops.nasfast.sep_conv_bn_relu(x, dw, pw, m(6), 2).shape,
          torch.ops.nasfast.upsample_add(x, m(2, 4, 4, 4)).shape,
          torch.ops.nasfast.upsample_cross_entropy(x, target, 255).shape]
torch.ops.nasfast.confusion_matrix_update_(m(4, 4, dtype=torch.int64), x, target, 255)
print([list(s) for s in shapes])
"""
    result = subprocess.run([sys.executable, "-c", calls], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[[4, 1, 3, 3], [2, 4, 4, 4], [2, 4, 8, 8], [2, 6, 8, 8], [2, 6, 8, 8], " \
                                    "[2, 4, 8, 8], []]"
