// Autograd of sep_conv, in C++ so that it also works in TorchScript graphs run from C++.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "first_order.h"

namespace nasfast {
namespace {

at::Tensor call_forward(const at::Tensor& x, const at::Tensor& dw, const at::Tensor& pw, int64_t dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("nasfast::sep_conv", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(x, dw, pw, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(const at::Tensor& grad, const at::Tensor& x,
                                                             const at::Tensor& dw, const at::Tensor& pw,
                                                             int64_t dilation, std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("nasfast::sep_conv_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                           std::array<bool, 3>)>();
  return op.call(grad, x, dw, pw, dilation, mask);
}

at::Tensor call_bn_relu(const at::Tensor& x, const at::Tensor& dw, const at::Tensor& pw, const at::Tensor& bias,
                        int64_t dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("nasfast::sep_conv_bn_relu", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         int64_t)>();
  return op.call(x, dw, pw, bias, dilation);
}

class SepConv : public torch::autograd::Function<SepConv> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& dw,
                            const at::Tensor& pw, int64_t dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, dw, pw});
    ctx->saved_data["dilation"] = dilation;
    return call_forward(x, dw, pw, dilation);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    refuse_second_derivative("sep_conv");
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const auto result = call_backward(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["dilation"].toInt(),
                                      mask);
    return {std::get<0>(result), std::get<1>(result), std::get<2>(result), at::Tensor()};
  }
};

// relu(sep_conv(x, dw, pw) + bias): the gradient goes through the ReLU's mask (from the saved
// output), then the bias (a sum) and sep_conv's backward.
class SepConvBNReLU : public torch::autograd::Function<SepConvBNReLU> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& dw,
                            const at::Tensor& pw, const at::Tensor& bias, int64_t dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = call_bn_relu(x, dw, pw, bias, dilation);
    ctx->save_for_backward({x, dw, pw, out});
    ctx->saved_data["dilation"] = dilation;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    refuse_second_derivative("sep_conv_bn_relu");
    const auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor grad = at::threshold_backward(grads[0], saved[3], 0);
    const at::Tensor grad_bias = ctx->needs_input_grad(3) ? grad.sum({0, 2, 3}) : at::Tensor();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    if (!mask[0] && !mask[1] && !mask[2]) return {at::Tensor(), at::Tensor(), at::Tensor(), grad_bias, at::Tensor()};
    const auto result = call_backward(grad, saved[0], saved[1], saved[2], ctx->saved_data["dilation"].toInt(), mask);
    return {std::get<0>(result), std::get<1>(result), std::get<2>(result), grad_bias, at::Tensor()};
  }
};

at::Tensor sep_conv_autograd(const at::Tensor& x, const at::Tensor& dw, const at::Tensor& pw, int64_t dilation) {
  return SepConv::apply(x, dw, pw, dilation);
}

at::Tensor sep_conv_bn_relu_autograd(const at::Tensor& x, const at::Tensor& dw, const at::Tensor& pw,
                                     const at::Tensor& bias, int64_t dilation) {
  return SepConvBNReLU::apply(x, dw, pw, bias, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, Autograd, m) {
  m.impl("sep_conv", &sep_conv_autograd);
  m.impl("sep_conv_bn_relu", &sep_conv_bn_relu_autograd);
}

}  // namespace nasfast
