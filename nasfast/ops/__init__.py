"""Native ops of nasfast, with pure-PyTorch references as fallbacks.

The ops library (built by `pip install .`) registers its kernels with the dispatcher under
`torch.ops.nasfast`. When it is missing, every op falls back to its reference.
"""
from .confusion import confusion_matrix_update, confusion_matrix_update_reference
from .library import available, library_path
from .upsample_add import UpsampleAdd, upsample_add, upsample_add_reference
from .separable import SeparableConvBNReLU, separable_conv, separable_conv_reference

__all__ = [
    "available", "library_path", "confusion_matrix_update", "confusion_matrix_update_reference",
    "UpsampleAdd", "upsample_add", "upsample_add_reference",
    "SeparableConvBNReLU", "separable_conv", "separable_conv_reference",
]
