// out = high + bilinear_upsample(low -> size of high), align_corners=False, per (n, c) plane.
#pragma once
#include "common.h"

namespace nasfast {
namespace kernels {

// One output element (y, x) of one plane.
template <typename T>
NASFAST_HOST_DEVICE inline T upsample_add_at(const T* high, const T* low, int64_t H, int64_t W,
                                            int64_t h, int64_t w, int64_t y, int64_t x) {
  const LinearTap<T> ty = linear_tap<T>(y, h, H);
  const LinearTap<T> tx = linear_tap<T>(x, w, W);
  const T up = ty.w0 * (tx.w0 * low[ty.i0 * w + tx.i0] + tx.w1 * low[ty.i0 * w + tx.i1]) +
               ty.w1 * (tx.w0 * low[ty.i1 * w + tx.i0] + tx.w1 * low[ty.i1 * w + tx.i1]);
  return high[y * W + x] + up;
}

// Forward over one plane (CPU: a plane per task).
template <typename T>
void upsample_add_plane(const T* high, const T* low, T* out, int64_t H, int64_t W, int64_t h, int64_t w) {
  for (int64_t y = 0; y < H; ++y) {
    const LinearTap<T> ty = linear_tap<T>(y, h, H);
    const T* row0 = low + ty.i0 * w;
    const T* row1 = low + ty.i1 * w;
    for (int64_t x = 0; x < W; ++x) {
      const LinearTap<T> tx = linear_tap<T>(x, w, W);
      const T up = ty.w0 * (tx.w0 * row0[tx.i0] + tx.w1 * row0[tx.i1]) +
                   ty.w1 * (tx.w0 * row1[tx.i0] + tx.w1 * row1[tx.i1]);
      out[y * W + x] = high[y * W + x] + up;
    }
  }
}

// Gradient of the low input over one plane: the transpose of the interpolation.
// grad_low must be zeroed by the caller.
template <typename T>
void upsample_add_backward_low_plane(const T* grad, T* grad_low, int64_t H, int64_t W, int64_t h, int64_t w) {
  for (int64_t y = 0; y < H; ++y) {
    const LinearTap<T> ty = linear_tap<T>(y, h, H);
    T* row0 = grad_low + ty.i0 * w;
    T* row1 = grad_low + ty.i1 * w;
    for (int64_t x = 0; x < W; ++x) {
      const LinearTap<T> tx = linear_tap<T>(x, w, W);
      const T g = grad[y * W + x];
      row0[tx.i0] += ty.w0 * tx.w0 * g;
      row0[tx.i1] += ty.w0 * tx.w1 * g;
      row1[tx.i0] += ty.w1 * tx.w0 * g;
      row1[tx.i1] += ty.w1 * tx.w1 * g;
    }
  }
}

}  // namespace kernels
}  // namespace nasfast
