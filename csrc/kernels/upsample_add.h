// out = high + bilinear_upsample(low -> size of high), align_corners=False, per (n, c) plane.
// CPU loops here; the CUDA kernels (upsample_add.cuh) use common.h's linear_tap and bilinear_at.
#pragma once
#include "common.h"

namespace nasfast {
namespace kernels {

// CPU: the taps of every output row and column, computed once and shared by all planes.
template <typename T>
void make_taps(LinearTap<T>* taps, int64_t in_size, int64_t out_size) {
  for (int64_t i = 0; i < out_size; ++i) taps[i] = linear_tap<T>(i, in_size, out_size);
}

// Forward over one plane.
template <typename T>
NASFAST_CPU_INLINE void upsample_add_plane(const T* high, const T* low, T* out, int64_t H, int64_t W, int64_t w,
                        const LinearTap<T>* ty, const LinearTap<T>* tx) {
  for (int64_t y = 0; y < H; ++y) {
    const T* row0 = low + ty[y].i0 * w;
    const T* row1 = low + ty[y].i1 * w;
    const T wy0 = ty[y].w0, wy1 = ty[y].w1;
    const T* in = high + y * W;
    T* o = out + y * W;
    for (int64_t x = 0; x < W; ++x) {
      const LinearTap<T> t = tx[x];
      o[x] = in[x] + wy0 * (t.w0 * row0[t.i0] + t.w1 * row0[t.i1]) + wy1 * (t.w0 * row1[t.i0] + t.w1 * row1[t.i1]);
    }
  }
}

// Gradient of the low input over one plane: the transpose of the interpolation.
// grad_low must be zeroed by the caller.
template <typename T>
NASFAST_CPU_INLINE void upsample_add_backward_low_plane(const T* grad, T* grad_low, int64_t H, int64_t W, int64_t w,
                                     const LinearTap<T>* ty, const LinearTap<T>* tx) {
  for (int64_t y = 0; y < H; ++y) {
    T* row0 = grad_low + ty[y].i0 * w;
    T* row1 = grad_low + ty[y].i1 * w;
    const T wy0 = ty[y].w0, wy1 = ty[y].w1;
    const T* g = grad + y * W;
    for (int64_t x = 0; x < W; ++x) {
      const LinearTap<T> t = tx[x];
      row0[t.i0] += wy0 * t.w0 * g[x];
      row0[t.i1] += wy0 * t.w1 * g[x];
      row1[t.i0] += wy1 * t.w0 * g[x];
      row1[t.i1] += wy1 * t.w1 * g[x];
    }
  }
}

}  // namespace kernels
}  // namespace nasfast
