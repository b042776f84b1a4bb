// CUDA kernels of upsample_add: one thread per output element; the backward scatters the four
// bilinear weights with atomics into an Acc (float or double) buffer, so half inputs need no
// half atomics.
#pragma once
#include "cuda_common.cuh"

namespace nasfast {
namespace kernels {

template <typename T, typename Acc>
__global__ void upsample_add_kernel(const T* __restrict__ high, const T* __restrict__ low, T* __restrict__ out,
                                    int64_t planes, int64_t H, int64_t W, int64_t h, int64_t w) {
  const int64_t total = planes * H * W;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t x = i % W, y = (i / W) % H, plane = i / (H * W);
    const LinearTap<Acc> ty = linear_tap<Acc>(y, h, H);
    const LinearTap<Acc> tx = linear_tap<Acc>(x, w, W);
    out[i] = static_cast<T>(static_cast<Acc>(high[i]) + bilinear_at<Acc>(low + plane * h * w, w, ty, tx));
  }
}

// grad_low (planes x h x w, zeroed) += the transpose of the interpolation applied to grad.
template <typename T, typename Acc>
__global__ void upsample_add_backward_low_kernel(const T* __restrict__ grad, Acc* __restrict__ grad_low,
                                                 int64_t planes, int64_t H, int64_t W, int64_t h, int64_t w) {
  const int64_t total = planes * H * W;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t x = i % W, y = (i / W) % H, plane = i / (H * W);
    const LinearTap<Acc> ty = linear_tap<Acc>(y, h, H);
    const LinearTap<Acc> tx = linear_tap<Acc>(x, w, W);
    const Acc g = static_cast<Acc>(grad[i]);
    Acc* out = grad_low + plane * h * w;
    atomic_add(out + ty.i0 * w + tx.i0, ty.w0 * tx.w0 * g);
    atomic_add(out + ty.i0 * w + tx.i1, ty.w0 * tx.w1 * g);
    atomic_add(out + ty.i1 * w + tx.i0, ty.w1 * tx.w0 * g);
    atomic_add(out + ty.i1 * w + tx.i1, ty.w1 * tx.w1 * g);
  }
}

}  // namespace kernels
}  // namespace nasfast
