#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <limits>

#include "../checks.h"
#include "../kernels/upsample_add.cuh"
#include "launch.h"

namespace nasfast {
namespace {

// The kernels' launch shape: threads along a row (a warp multiple, up to kThreads), the rest of
// the block and blockIdx.x over rows, blockIdx.y over planes (both loop past the grid's limits).
struct RowLaunch {
  dim3 grid, block;
};

RowLaunch row_launch(int64_t planes, int64_t rows, int64_t row_length) {
  const int64_t threads_x = std::min<int64_t>(kernels::kThreads, ceil_div(row_length, 32) * 32);
  const int64_t threads_y = kernels::kThreads / threads_x;
  const int64_t blocks_x = std::min<int64_t>(ceil_div(rows, threads_y), std::numeric_limits<int32_t>::max());
  const int64_t blocks_y = std::min<int64_t>(planes, 65535);
  return {dim3(static_cast<unsigned int>(blocks_x), static_cast<unsigned int>(blocks_y)),
          dim3(static_cast<unsigned int>(threads_x), static_cast<unsigned int>(threads_y))};
}

// int32 indices along each axis when every size is under 2^30: no index (nor index + blockDim.x)
// can overflow them.
bool sizes_fit_int32(std::initializer_list<int64_t> sizes) {
  for (const int64_t size : sizes) {
    if (size >= (int64_t(1) << 30)) return false;
  }
  return true;
}

template <typename T, typename Acc, typename Index>
void launch_forward(const at::Tensor& high, const at::Tensor& low, at::Tensor& out) {
  const int64_t planes = high.size(0) * high.size(1);
  const RowLaunch launch = row_launch(planes, high.size(2), high.size(3));
  kernels::upsample_add_kernel<T, Acc, Index><<<launch.grid, launch.block, 0, current_stream()>>>(
      high.data_ptr<T>(), low.data_ptr<T>(), out.data_ptr<T>(), planes, static_cast<Index>(high.size(2)),
      static_cast<Index>(high.size(3)), static_cast<Index>(low.size(2)), static_cast<Index>(low.size(3)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename Acc, typename Index>
void launch_backward_low(const at::Tensor& grad, at::Tensor& grad_low) {
  const int64_t planes = grad.size(0) * grad.size(1);
  const RowLaunch launch = row_launch(planes, grad_low.size(2), grad_low.size(3));
  kernels::upsample_add_backward_low_kernel<T, Acc, Index><<<launch.grid, launch.block, 0, current_stream()>>>(
      grad.data_ptr<T>(), grad_low.data_ptr<T>(), planes, static_cast<Index>(grad.size(2)),
      static_cast<Index>(grad.size(3)), static_cast<Index>(grad_low.size(2)), static_cast<Index>(grad_low.size(3)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor upsample_add_cuda(const at::Tensor& high_in, const at::Tensor& low_in) {
  check_upsample_add(high_in, low_in);
  const c10::cuda::CUDAGuard guard(high_in.device());
  const at::Tensor high = high_in.contiguous();
  const at::Tensor low = low_in.contiguous();
  if (high.sizes() == low.sizes()) return at::add(high, low);  // nothing to interpolate
  at::Tensor out = at::empty_like(high);
  if (out.numel() == 0) return out;
  const bool int32 = sizes_fit_int32({high.size(2), high.size(3), low.size(2), low.size(3)});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, high.scalar_type(), "upsample_add_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (int32) {
      launch_forward<scalar_t, acc_t, int32_t>(high, low, out);
    } else {
      launch_forward<scalar_t, acc_t, int64_t>(high, low, out);
    }
  });
  return out;
}

at::Tensor upsample_add_backward_low_cuda(const at::Tensor& grad_in, c10::SymIntArrayRef low_size) {
  check_upsample_add_backward_low(grad_in, low_size);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const int64_t h = low_size[2].expect_int(), w = low_size[3].expect_int();
  if (grad.size(2) == h && grad.size(3) == w) return grad.clone();
  at::Tensor grad_low = at::empty({grad.size(0), grad.size(1), h, w}, grad.options());
  if (grad_low.numel() == 0) return grad_low;
  if (grad.numel() == 0) return grad_low.zero_();
  const bool int32 = sizes_fit_int32({grad.size(2), grad.size(3), h, w});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "upsample_add_backward_low_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (int32) {
      launch_backward_low<scalar_t, acc_t, int32_t>(grad, grad_low);
    } else {
      launch_backward_low<scalar_t, acc_t, int64_t>(grad, grad_low);
    }
  });
  return grad_low;
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CUDA, m) {
  m.impl("upsample_add", &upsample_add_cuda);
  m.impl("upsample_add_backward_low", &upsample_add_backward_low_cuda);
}

}  // namespace nasfast
