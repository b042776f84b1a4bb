// CUDA registrations of the separable convolution ops (see kernels/separable.h for the fusion
// choices): one fused kernel forward; backward = depthwise recompute + cuBLAS GEMMs + gathers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "../checks.h"
#include "../kernels/separable.cuh"
#include "launch.h"

namespace nasfast {
namespace {

constexpr int64_t kSharedBytes = 48 * 1024;

at::Tensor forward(const at::Tensor& x_in, const at::Tensor& dw_in, const at::Tensor& pw_in, const at::Tensor& bias_in,
                   int64_t dilation) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dw = dw_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Cout = pw_in.size(0), k = dw.size(2);
  const at::Tensor pw = pw_in.reshape({Cout, C}).contiguous();
  const at::Tensor bias = bias_in.defined() ? bias_in.contiguous() : bias_in;
  at::Tensor out = at::empty({N, Cout, H, W}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sep_conv_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    int64_t tile = 64;
    while (tile > 1 && C * tile * static_cast<int64_t>(sizeof(acc_t)) > kSharedBytes) tile /= 2;
    TORCH_CHECK(C * tile * static_cast<int64_t>(sizeof(acc_t)) <= kSharedBytes, "sep_conv: ", C,
                " channels do not fit the CUDA kernel's shared memory");
    const dim3 grid(static_cast<unsigned int>((H * W + tile - 1) / tile), static_cast<unsigned int>(N));
    const size_t shared = C * tile * sizeof(acc_t);
    const auto stream = current_stream();
    const scalar_t* bias_ptr = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    if (bias.defined()) {
      kernels::sep_conv_forward_kernel<scalar_t, acc_t, true><<<grid, kernels::kThreads, shared, stream>>>(
          x.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), pw.data_ptr<scalar_t>(), bias_ptr,
          out.data_ptr<scalar_t>(), C, Cout, H, W, k, dilation, tile);
    } else {
      kernels::sep_conv_forward_kernel<scalar_t, acc_t, false><<<grid, kernels::kThreads, shared, stream>>>(
          x.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), pw.data_ptr<scalar_t>(), bias_ptr,
          out.data_ptr<scalar_t>(), C, Cout, H, W, k, dilation, tile);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor sep_conv_cuda(const at::Tensor& x, const at::Tensor& depthwise, const at::Tensor& pointwise,
                         int64_t dilation) {
  check_separable(x, depthwise, pointwise, dilation);
  return forward(x, depthwise, pointwise, at::Tensor(), dilation);
}

at::Tensor sep_conv_bn_relu_cuda(const at::Tensor& x, const at::Tensor& depthwise, const at::Tensor& pointwise,
                                 const at::Tensor& bias, int64_t dilation) {
  check_separable(x, depthwise, pointwise, dilation);
  check_bias(x, pointwise, bias);
  return forward(x, depthwise, pointwise, bias, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sep_conv_backward_cuda(const at::Tensor& grad_in,
                                                                      const at::Tensor& x_in, const at::Tensor& dw_in,
                                                                      const at::Tensor& pw_in, int64_t dilation,
                                                                      std::array<bool, 3> mask) {
  check_separable(x_in, dw_in, pw_in, dilation);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dw = dw_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t Cout = pw_in.size(0), k = dw.size(2);
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == N && grad_in.size(1) == Cout && grad_in.size(2) == H &&
                  grad_in.size(3) == W,
              "sep_conv_backward: grad must be ", N, " x ", Cout, " x ", H, " x ", W, ", got ", grad_in.sizes());
  const at::Tensor grad = grad_in.contiguous().to(x.scalar_type()).view({N, Cout, HW});
  const at::Tensor pw = pw_in.reshape({Cout, C});
  at::Tensor grad_x, grad_dw, grad_pw;
  const auto stream = current_stream();
  const unsigned int blocks = blocks_for(x.numel(), kernels::kThreads);
  if (mask[2]) {
    at::Tensor y = at::empty_like(x);
    if (y.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sep_conv_recompute_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        kernels::depthwise_forward_kernel<scalar_t, acc_t><<<blocks, kernels::kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N * C, C, H, W, k, dilation);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    grad_pw = at::bmm(grad, y.view({N, C, HW}).transpose(1, 2)).sum(0).view(pw_in.sizes());
  }
  if (mask[0] || mask[1]) {
    const at::Tensor gy = at::matmul(pw.t(), grad).contiguous();  // N x C x HW
    if (mask[0]) grad_x = at::empty_like(x);
    if (mask[1]) grad_dw = at::zeros_like(dw);
    if (x.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sep_conv_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        if (mask[0]) {
          kernels::depthwise_input_grad_kernel<scalar_t, acc_t><<<blocks, kernels::kThreads, 0, stream>>>(
              gy.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), N * C, C, H, W, k,
              dilation);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (mask[1]) {
          const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(k * k));
          kernels::depthwise_weight_grad_kernel<scalar_t, acc_t><<<grid, kernels::kThreads, 0, stream>>>(
              gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), grad_dw.data_ptr<scalar_t>(), N, C, H, W, k, dilation);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    } else if (mask[0]) {
      grad_x.zero_();
    }
  }
  return std::make_tuple(grad_x, grad_dw, grad_pw);
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CUDA, m) {
  m.impl("sep_conv", &sep_conv_cuda);
  m.impl("sep_conv_bn_relu", &sep_conv_bn_relu_cuda);
  m.impl("sep_conv_backward", &sep_conv_backward_cuda);
}

}  // namespace nasfast
