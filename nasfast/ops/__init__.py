"""Native ops of nasfast, with pure-PyTorch references as fallbacks.

The ops library (built by ./install.sh or `pip install .`) registers its kernels with the
dispatcher under `torch.ops.nasfast` (CPU and CUDA, autograd in C++). When it is missing, or
NASFAST_DISABLE_OPS=1, every op falls back to its reference.
"""
from .confusion import confusion_matrix_update, confusion_matrix_update_reference
from .cross_entropy import upsample_cross_entropy, upsample_cross_entropy_reference
from .library import available, library_path, why_unavailable
from .memory import cpu_memory_cache, cpu_memory_cached
from .separable import (SeparableConvBNReLU, fold_batch_norm, separable_conv, separable_conv_bn_relu,
                        separable_conv_bn_relu_reference, separable_conv_reference)
from .upsample_add import UpsampleAdd, upsample_add, upsample_add_reference

__all__ = [
    "available", "library_path", "why_unavailable", "cpu_memory_cache", "cpu_memory_cached",
    "confusion_matrix_update", "confusion_matrix_update_reference",
    "UpsampleAdd", "upsample_add", "upsample_add_reference",
    "upsample_cross_entropy", "upsample_cross_entropy_reference",
    "SeparableConvBNReLU", "separable_conv", "separable_conv_reference", "separable_conv_bn_relu",
    "separable_conv_bn_relu_reference", "fold_batch_norm",
]
