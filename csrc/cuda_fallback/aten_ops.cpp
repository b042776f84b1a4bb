// CUDA kernels made of ATen ops, compiled only when the library is built without CUDA: a model
// that uses the nasfast ops (eager or TorchScript) then still runs on a GPU, at the speed of the
// unfused references, instead of failing in the dispatcher. A CUDA build registers the native
// kernels of cuda/ instead.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "../checks.h"

namespace nasfast {
namespace {

at::Tensor upsample_add_aten(const at::Tensor& high, const at::Tensor& low) {
  check_upsample_add(high, low);
  return high + at::upsample_bilinear2d(low, {high.size(2), high.size(3)}, false);
}

at::Tensor upsample_add_backward_low_aten(const at::Tensor& grad, c10::SymIntArrayRef low_size) {
  if (grad.sym_size(2) == low_size[2] && grad.sym_size(3) == low_size[3]) return grad.clone();
  return at::upsample_bilinear2d_backward_symint(grad, {grad.sym_size(2), grad.sym_size(3)}, low_size, false);
}

at::Tensor depthwise(const at::Tensor& x, const at::Tensor& dw, int64_t dilation) {
  const int64_t pad = dilation * (dw.size(2) / 2);
  return at::conv2d(x, dw, {}, 1, pad, dilation, x.size(1));
}

at::Tensor sep_conv_aten(const at::Tensor& x, const at::Tensor& dw, const at::Tensor& pw, int64_t dilation) {
  check_separable(x, dw, pw, dilation);
  return at::conv2d(depthwise(x, dw, dilation), pw.view({pw.size(0), pw.size(1), 1, 1}));
}

at::Tensor sep_conv_bn_relu_aten(const at::Tensor& x, const at::Tensor& dw, const at::Tensor& pw,
                                      const at::Tensor& bias, int64_t dilation) {
  check_separable(x, dw, pw, dilation);
  check_bias(x, pw, bias);
  return at::relu(at::conv2d(depthwise(x, dw, dilation), pw.view({pw.size(0), pw.size(1), 1, 1}), bias));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sep_conv_backward_aten(const at::Tensor& grad,
                                                                           const at::Tensor& x, const at::Tensor& dw,
                                                                           const at::Tensor& pw, int64_t dilation,
                                                                           std::array<bool, 3> mask) {
  check_separable(x, dw, pw, dilation);
  const int64_t N = x.size(0), C = x.size(1), Cout = pw.size(0), HW = x.size(2) * x.size(3);
  const at::Tensor pw2 = pw.reshape({Cout, C});
  at::Tensor grad_pw;
  if (mask[2]) {
    const at::Tensor y = depthwise(x, dw, dilation).reshape({N, C, HW});
    grad_pw = at::bmm(grad.reshape({N, Cout, HW}), y.transpose(1, 2)).sum(0).view(pw.sizes());
  }
  at::Tensor grad_x, grad_dw;
  if (mask[0] || mask[1]) {
    const at::Tensor gy = at::matmul(pw2.t(), grad.reshape({N, Cout, HW})).view(x.sizes());
    const int64_t pad = dilation * (dw.size(2) / 2);
    const auto grads = at::convolution_backward(gy, x, dw, c10::nullopt, {1, 1}, {pad, pad}, {dilation, dilation},
                                                false, {0, 0}, C, {mask[0], mask[1], false});
    grad_x = std::get<0>(grads);
    grad_dw = std::get<1>(grads);
  }
  return std::make_tuple(grad_x, grad_dw, grad_pw);
}

void confusion_matrix_update_aten(at::Tensor& matrix, const at::Tensor& scores, const at::Tensor& target_in,
                                       int64_t ignore_index) {
  const at::Tensor target = check_confusion(matrix, scores, target_in, ignore_index);
  check_confusion_values(target, scores, matrix.size(0), ignore_index);
  const int64_t K = matrix.size(0);
  at::Tensor pred = scores;
  if (at::isFloatingType(scores.scalar_type())) {
    pred = at::upsample_bilinear2d(scores, {target.size(1), target.size(2)}, false).argmax(1);
  }
  const at::Tensor keep = target.ne(ignore_index);
  const at::Tensor index = target.masked_select(keep) * K + pred.to(at::kLong).masked_select(keep);
  matrix.add_(at::bincount(index, {}, K * K).view({K, K}));
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CUDA, m) {
  m.impl("upsample_add", &upsample_add_aten);
  m.impl("upsample_add_backward_low", &upsample_add_backward_low_aten);
  m.impl("sep_conv", &sep_conv_aten);
  m.impl("sep_conv_bn_relu", &sep_conv_bn_relu_aten);
  m.impl("sep_conv_backward", &sep_conv_backward_aten);
  m.impl("confusion_matrix_update_", &confusion_matrix_update_aten);
}

}  // namespace nasfast
