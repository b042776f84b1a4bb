"""Cross-entropy of logits bilinearly upsampled to the labels' size (the training losses, SPEC
section 3), fused on the CPU so that the upsampled logits are never materialised."""
import torch
import torch.nn.functional as F
from torch import Tensor

from .library import available
from .upsample_add import upsampled

if available():
    @torch.library.register_fake("nasfast::upsample_cross_entropy")
    def _(logits, target, ignore_index):  # the op's checks, for torch.compile and torch.export while tracing
        torch._check(logits.dim() == 4, lambda: f"upsample_cross_entropy: logits must be a non-empty N x K x h x w "
                                                f"tensor, got {list(logits.shape)}")
        torch._check(target.dim() == 3 and target.shape[0] == logits.shape[0],
                     lambda: f"upsample_cross_entropy: target must be N x H x W with N = {logits.shape[0]} and H, W > "
                             f"0, got {list(target.shape)}")
        torch._check(target.dtype == torch.int64,
                     lambda: f"upsample_cross_entropy: target must be int64, got {target.dtype}")
        return logits.new_empty(())

    @torch.library.register_fake("nasfast::upsample_cross_entropy_backward")
    def _(grad, logits, target, ignore_index):
        return torch.empty_like(logits, memory_format=torch.contiguous_format)


def upsample_cross_entropy_reference(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    return F.cross_entropy(upsampled(logits, target.shape[-2:]), target, ignore_index=ignore_index)


def upsample_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """The mean cross-entropy of `logits` (N x K x h x w) upsampled to the size of `target` (N x H x W),
    over the pixels not labelled `ignore_index`: the native op for float32 or float64 logits on the
    CPU, where it is several times faster, the reference elsewhere (on a GPU the unfused loss costs
    little, see csrc/composite/cross_entropy.cpp). Labels of any integer type (uint8 as read)."""
    if target.dtype != torch.int64 and not (target.is_floating_point() or target.is_complex()):
        target = target.long()
    if (available() and logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64)
            and target.dtype == torch.int64):
        return torch.ops.nasfast.upsample_cross_entropy(logits, target, ignore_index)
    return upsample_cross_entropy_reference(logits, target, ignore_index)
