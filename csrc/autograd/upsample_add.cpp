#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "first_order.h"

namespace nasfast {
namespace {

at::Tensor call_forward(const at::Tensor& high, const at::Tensor& low) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("nasfast::upsample_add", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(high, low);
}

at::Tensor call_backward_low(const at::Tensor& grad, c10::SymIntArrayRef low_size) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("nasfast::upsample_add_backward_low", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef)>();
  return op.call(grad, low_size);
}

class UpsampleAdd : public torch::autograd::Function<UpsampleAdd> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& high, const at::Tensor& low) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["low_size"] = low.sym_sizes().vec();
    return call_forward(high, low);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    refuse_second_derivative("upsample_add");
    const auto low_size = ctx->saved_data["low_size"].toSymIntVector();
    const at::Tensor& grad = grads[0];
    return {grad, call_backward_low(grad, low_size)};
  }
};

at::Tensor upsample_add_autograd(const at::Tensor& high, const at::Tensor& low) {
  return UpsampleAdd::apply(high, low);
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, Autograd, m) {
  m.impl("upsample_add", &upsample_add_autograd);
}

}  // namespace nasfast
