// CUDA registrations of the separable convolution ops (see kernels/separable.h for the fusion
// choices): one fused kernel forward; backward = depthwise recompute + cuBLAS GEMMs + gathers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>

#include "../checks.h"
#include "../kernels/separable.cuh"
#include "launch.h"

namespace nasfast {
namespace {

// Pixels of one map at most: the grid-stride loops index a plane in int, in steps of up to 65535
// blocks x 1024 threads x 4 pixels, which must not wrap past INT32_MAX.
constexpr int64_t kMaxPlanePixels = int64_t(1) << 30;

// The kernels offset a pixel's coordinates by up to dilation * (k / 2), in int.
void check_offsets(const char* op, int64_t H, int64_t W, int64_t k, int64_t dilation) {
  TORCH_CHECK(std::max(H, W) + dilation * (k / 2) <= INT32_MAX, op, ": a ", k, "x", k, " kernel at dilation ",
              dilation, " over a ", H, " x ", W, " map exceeds the CUDA kernels' 32-bit offsets");
}

at::Tensor forward(const at::Tensor& x_in, const at::Tensor& dw_in, const at::Tensor& pw_in, const at::Tensor& bias_in,
                   int64_t dilation) {
  check_separable(x_in, dw_in, pw_in, dilation);
  if (bias_in.defined()) check_bias(x_in, pw_in, bias_in);
  dilation = effective_dilation(dilation, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dw = dw_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Cout = pw_in.size(0), k = dw.size(2);
  TORCH_CHECK(H * W <= kMaxPlanePixels && C * k * k <= INT32_MAX && Cout * C <= INT32_MAX && N <= INT32_MAX,
              "sep_conv: a ", H, " x ", W, " map, ", C, " -> ", Cout, " channels exceed the CUDA kernel's 32-bit indices");
  check_offsets("sep_conv", H, W, k, dilation);
  const at::Tensor pw = pw_in.reshape({Cout, C}).contiguous();
  const at::Tensor bias = bias_in.defined() ? bias_in.contiguous() : bias_in;
  at::Tensor out = at::empty({N, Cout, H, W}, x.options());
  if (out.numel() == 0) return out;
  const int tile_out = kernels::sep_tile_out(Cout);
  const dim3 grid(static_cast<unsigned int>(ceil_div(H * W, kernels::kTilePixels)),
                  static_cast<unsigned int>(ceil_div(Cout, tile_out)),
                  static_cast<unsigned int>(std::min<int64_t>(N, 65535)));
  const int threads = kernels::kPixelLanes * tile_out / 4;
  TORCH_CHECK(grid.y <= 65535, "sep_conv: ", Cout, " output channels exceed the CUDA grid");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sep_conv_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    kernels::with_kernel_size(k, [&](auto size) {
      const auto kernel = bias.defined() ? kernels::sep_conv_forward_for<scalar_t, acc_t, true>(size, W)
                                         : kernels::sep_conv_forward_for<scalar_t, acc_t, false>(size, W);
      kernel<<<grid, threads, 0, current_stream()>>>(
          x.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), pw.data_ptr<scalar_t>(),
          bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), static_cast<int>(N),
          static_cast<int>(C), static_cast<int>(Cout), static_cast<int>(H), static_cast<int>(W), static_cast<int>(k),
          static_cast<int>(dilation));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor sep_conv_cuda(const at::Tensor& x, const at::Tensor& depthwise, const at::Tensor& pointwise,
                         int64_t dilation) {
  return forward(x, depthwise, pointwise, at::Tensor(), dilation);
}

at::Tensor sep_conv_bn_relu_cuda(const at::Tensor& x, const at::Tensor& depthwise, const at::Tensor& pointwise,
                                 const at::Tensor& bias, int64_t dilation) {
  return forward(x, depthwise, pointwise, bias, dilation);
}

// out (N x C x H x W) = the depthwise of `in`, or with kInputGrad its input gradient from the
// output gradient `in`: pixels (or quads of them) along the grid's x, planes along its y.
template <typename scalar_t, bool kInputGrad>
void depthwise_planes(const at::Tensor& in, const at::Tensor& dw, at::Tensor& out, int64_t dilation) {
  const int64_t planes = out.size(0) * out.size(1), H = out.size(2), W = out.size(3);
  const int64_t per_thread = kernels::depthwise_quads(dw.size(2), W) ? 4 : 1;
  const dim3 grid(blocks_for(ceil_div(H * W, per_thread), kernels::kThreads),
                  static_cast<unsigned int>(std::min<int64_t>(planes, 65535)));
  kernels::with_kernel_size(dw.size(2), [&](auto size) {
    kernels::depthwise_planes_kernel<scalar_t, at::opmath_type<scalar_t>, kInputGrad, decltype(size)::value>
        <<<grid, kernels::kThreads, 0, current_stream()>>>(
            in.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), static_cast<int>(planes),
            static_cast<int>(out.size(1)), static_cast<int>(H), static_cast<int>(W), static_cast<int>(dw.size(2)),
            static_cast<int>(dilation));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void depthwise_weight_grad(const at::Tensor& gy, const at::Tensor& x, at::Tensor& grad_dw, int64_t dilation) {
  using acc_t = at::opmath_type<scalar_t>;
  const int N = static_cast<int>(x.size(0)), C = static_cast<int>(x.size(1)), H = static_cast<int>(x.size(2));
  const int W = static_cast<int>(x.size(3)), k = static_cast<int>(grad_dw.size(2)), d = static_cast<int>(dilation);
  // float and double sum in grad_dw itself (zeroed); half and bfloat16 in a float buffer.
  at::Tensor sums = std::is_same<acc_t, scalar_t>::value
                        ? grad_dw
                        : at::zeros(grad_dw.sizes(), grad_dw.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const auto stream = current_stream();
  const scalar_t* g = gy.data_ptr<scalar_t>();
  const scalar_t* input = x.data_ptr<scalar_t>();
  acc_t* out = sums.data_ptr<acc_t>();
  if (k == 3 || k == 5) {
    // About a thousand blocks in all, each a span of at least kThreads pixels of one channel.
    const int64_t HW = static_cast<int64_t>(H) * W;
    const int64_t spans = std::max<int64_t>(1, std::min<int64_t>(ceil_div(HW, kernels::kThreads),
                                                                 std::max<int64_t>(1, 1024 / C)));
    const int span = static_cast<int>(ceil_div(ceil_div(HW, spans), 4) * 4);  // whole quads (depthwise_quads)
    const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(spans));
    if (k == 3) {
      kernels::depthwise_weight_grad_kernel<scalar_t, acc_t, 3><<<grid, kernels::kThreads, 0, stream>>>(
          g, input, out, N, C, H, W, d, span);
    } else {
      kernels::depthwise_weight_grad_kernel<scalar_t, acc_t, 5><<<grid, kernels::kThreads, 0, stream>>>(
          g, input, out, N, C, H, W, d, span);
    }
  } else {
    TORCH_CHECK(k * k <= 65535, "sep_conv_backward: the CUDA kernels take kernels up to 255x255, got ", k, "x", k);
    const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(k * k));
    kernels::depthwise_weight_grad_any_kernel<scalar_t, acc_t><<<grid, kernels::kThreads, 0, stream>>>(
        g, input, out, N, C, H, W, k, d);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!sums.is_same(grad_dw)) grad_dw.copy_(sums);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sep_conv_backward_cuda(const at::Tensor& grad_in,
                                                                      const at::Tensor& x_in, const at::Tensor& dw_in,
                                                                      const at::Tensor& pw_in, int64_t dilation,
                                                                      std::array<bool, 3> mask) {
  check_separable(x_in, dw_in, pw_in, dilation);
  dilation = effective_dilation(dilation, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dw = dw_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t Cout = pw_in.size(0), k = dw.size(2);
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == N && grad_in.size(1) == Cout && grad_in.size(2) == H &&
                  grad_in.size(3) == W,
              "sep_conv_backward: grad must be ", N, " x ", Cout, " x ", H, " x ", W, ", got ", grad_in.sizes());
  TORCH_CHECK(N * C <= INT32_MAX && HW <= kMaxPlanePixels, "sep_conv_backward: ", x.sizes(),
              " exceeds the CUDA kernels' 32-bit indices");
  check_offsets("sep_conv_backward", H, W, k, dilation);
  const at::Tensor grad = grad_in.contiguous().to(x.scalar_type()).view({N, Cout, HW});
  const at::Tensor pw = pw_in.reshape({Cout, C});
  at::Tensor grad_x, grad_dw, grad_pw;
  if (mask[2]) {
    at::Tensor y = at::empty_like(x);
    if (y.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sep_conv_recompute_cuda", [&] {
        depthwise_planes<scalar_t, false>(x, dw, y, dilation);
      });
    }
    grad_pw = at::bmm(grad, y.view({N, C, HW}).transpose(1, 2)).sum(0).view(pw_in.sizes());
  }
  if (mask[0] || mask[1]) {
    const at::Tensor gy = at::matmul(pw.t(), grad).contiguous();  // N x C x HW
    if (mask[0]) grad_x = at::empty_like(x);
    if (mask[1]) {
      at::globalContext().alertNotDeterministic("sep_conv_backward_cuda (its depthwise weight gradient sums in atomics)");
      grad_dw = at::zeros_like(dw);
    }
    if (x.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sep_conv_backward_cuda", [&] {
        if (mask[0]) {
          depthwise_planes<scalar_t, true>(gy, dw, grad_x, dilation);
        }
        if (mask[1]) depthwise_weight_grad<scalar_t>(gy, x, grad_dw, dilation);
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
