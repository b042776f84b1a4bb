#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../checks.h"
#include "../kernels/upsample_add.cuh"
#include "launch.h"

namespace nasfast {
namespace {

at::Tensor upsample_add_cuda(const at::Tensor& high_in, const at::Tensor& low_in) {
  check_upsample_add(high_in, low_in);
  const c10::cuda::CUDAGuard guard(high_in.device());
  const at::Tensor high = high_in.contiguous();
  const at::Tensor low = low_in.contiguous();
  if (high.sizes() == low.sizes()) return at::add(high, low);  // nothing to interpolate
  at::Tensor out = at::empty_like(high);
  const int64_t planes = high.size(0) * high.size(1);
  const int64_t H = high.size(2), W = high.size(3), h = low.size(2), w = low.size(3);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, high.scalar_type(), "upsample_add_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    kernels::upsample_add_kernel<scalar_t, acc_t>
        <<<blocks_for(out.numel(), kernels::kThreads), kernels::kThreads, 0, current_stream()>>>(
            high.data_ptr<scalar_t>(), low.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), planes, H, W, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor upsample_add_backward_low_cuda(const at::Tensor& grad_in, c10::SymIntArrayRef low_size) {
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const int64_t h = low_size[2].expect_int(), w = low_size[3].expect_int();
  if (grad.size(2) == h && grad.size(3) == w) return grad.clone();
  const int64_t planes = grad.size(0) * grad.size(1), H = grad.size(2), W = grad.size(3);
  const at::ScalarType acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor grad_low = at::zeros({grad.size(0), grad.size(1), h, w}, grad.options().dtype(acc_type));
  if (grad.numel() == 0) return grad_low.to(grad.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "upsample_add_backward_low_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    kernels::upsample_add_backward_low_kernel<scalar_t, acc_t>
        <<<blocks_for(grad.numel(), kernels::kThreads), kernels::kThreads, 0, current_stream()>>>(
            grad.data_ptr<scalar_t>(), grad_low.data_ptr<acc_t>(), planes, H, W, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_low.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CUDA, m) {
  m.impl("upsample_add", &upsample_add_cuda);
  m.impl("upsample_add_backward_low", &upsample_add_backward_low_cuda);
}

}  // namespace nasfast
