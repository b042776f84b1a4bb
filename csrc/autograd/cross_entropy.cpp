#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "first_order.h"

namespace nasfast {
namespace {

at::Tensor call_forward(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("nasfast::upsample_cross_entropy", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(logits, target, ignore_index);
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                         int64_t ignore_index) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("nasfast::upsample_cross_entropy_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(grad, logits, target, ignore_index);
}

class UpsampleCrossEntropy : public torch::autograd::Function<UpsampleCrossEntropy> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                            int64_t ignore_index) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({logits, target});
    ctx->saved_data["ignore_index"] = ignore_index;
    return call_forward(logits, target, ignore_index);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    refuse_second_derivative("upsample_cross_entropy");
    const auto saved = ctx->get_saved_variables();
    const int64_t ignore_index = ctx->saved_data["ignore_index"].toInt();
    return {call_backward(grads[0], saved[0], saved[1], ignore_index), at::Tensor(), at::Tensor()};
  }
};

at::Tensor upsample_cross_entropy_autograd(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index) {
  return UpsampleCrossEntropy::apply(logits, target, ignore_index);
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, Autograd, m) {
  m.impl("upsample_cross_entropy", &upsample_cross_entropy_autograd);
}

}  // namespace nasfast
