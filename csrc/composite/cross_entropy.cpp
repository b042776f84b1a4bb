// upsample_cross_entropy on devices without a kernel of their own (the GPU), made of ATen ops.
// There the unfused loss costs little: writing and reading the upsampled logits is a few ms of
// memory bandwidth per step at a search's sizes, where on the CPU it costs seconds (page faults
// and cache misses); a CUDA kernel is left until a measurement says it pays.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace nasfast {
namespace {

at::Tensor upsampled(const at::Tensor& logits, const at::Tensor& target) {
  if (logits.size(2) == target.size(1) && logits.size(3) == target.size(2)) return logits;
  return at::upsample_bilinear2d(logits, {target.size(1), target.size(2)}, false);
}

void check_labels(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index) {
  fail_on_bad_label(any_outside(target, target.ne(ignore_index), logits.size(1)), logits.size(1), ignore_index);
}

at::Tensor upsample_cross_entropy_composite(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index) {
  check_cross_entropy(logits, target);
  check_labels(logits, target, ignore_index);
  return at::cross_entropy_loss(upsampled(logits, target), target, {}, at::Reduction::Mean, ignore_index);
}

at::Tensor upsample_cross_entropy_backward_composite(const at::Tensor& grad, const at::Tensor& logits,
                                                     const at::Tensor& target, int64_t ignore_index) {
  check_cross_entropy(logits, target);
  check_labels(logits, target, ignore_index);
  const at::Tensor up = upsampled(logits, target);
  const at::Tensor log_probabilities = at::log_softmax(up, 1);
  const at::Tensor counted = target.ne(ignore_index).sum().to(logits.scalar_type());
  const at::Tensor grad_log = at::nll_loss2d_backward(grad, log_probabilities, target, {}, at::Reduction::Mean,
                                                      ignore_index, counted);
  const at::Tensor grad_up = at::_log_softmax_backward_data(grad_log, log_probabilities, 1, logits.scalar_type());
  if (up.is_same(logits)) return grad_up;
  return at::upsample_bilinear2d_backward(grad_up, {target.size(1), target.size(2)}, logits.sizes(), false);
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CompositeExplicitAutograd, m) {
  m.impl("upsample_cross_entropy", &upsample_cross_entropy_composite);
  m.impl("upsample_cross_entropy_backward", &upsample_cross_entropy_backward_composite);
}

}  // namespace nasfast
