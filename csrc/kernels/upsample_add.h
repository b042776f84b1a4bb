// out = high + bilinear_upsample(low -> size of high), align_corners=False, per (n, c) plane.
// CPU loops here; the CUDA kernels (upsample_add.cuh) use common.h's linear_tap and bilinear_at.
#pragma once
#include "common.h"

namespace nasfast {
namespace kernels {

// The interpolation runs in two passes (see common.h): 2 gathers per output pixel of a low row
// instead of 4 per output pixel, and a vertical step that vectorises.

// Forward over one plane; `rows` is scratch of 2 x W values.
template <typename T>
NASFAST_CPU_INLINE void upsample_add_plane(const T* high, const T* low, T* NASFAST_RESTRICT out, int64_t H, int64_t W,
                                           int64_t w, const LinearTap<T>* ty, const LinearTap<T>* tx, T* rows) {
  ParityRows held;
  for (int64_t y = 0; y < H; ++y) {
    for (int j = 0; j < 2; ++j) {
      const int64_t i = j == 0 ? ty[y].i0 : ty[y].i1;
      if (held.hold(i) != i) interpolate_row(low + i * w, rows + (i & 1) * W, W, tx);
    }
    const T* NASFAST_RESTRICT row0 = rows + (ty[y].i0 & 1) * W;
    const T* NASFAST_RESTRICT row1 = rows + (ty[y].i1 & 1) * W;
    const T* NASFAST_RESTRICT in = high + y * W;
    T* o = out + y * W;
    const T wy0 = ty[y].w0, wy1 = ty[y].w1;
    for (int64_t x = 0; x < W; ++x) o[x] = in[x] + wy0 * row0[x] + wy1 * row1[x];
  }
}

// Gradient of the low input over one plane (zeroed by the caller), the transpose of the forward:
// each output row's gradient is added, weighted, into the two low rows it read (kept along x in
// `rows`, 2 x W values), and a low row is spread back along x once no later output row reads it.
template <typename T>
NASFAST_CPU_INLINE void upsample_add_backward_low_plane(const T* grad, T* grad_low, int64_t H, int64_t W, int64_t w,
                                                        const LinearTap<T>* ty, const LinearTap<T>* tx, T* rows) {
  ParityRows held;
  for (int64_t y = 0; y < H; ++y) {
    const T* NASFAST_RESTRICT g = grad + y * W;
    for (int k = 0; k < 2; ++k) {
      const int64_t i = k == 0 ? ty[y].i0 : ty[y].i1;
      const T weight = k == 0 ? ty[y].w0 : ty[y].w1;
      T* NASFAST_RESTRICT row = rows + (i & 1) * W;
      const int64_t previous = held.hold(i);
      if (previous != i) {
        if (previous >= 0) spread_row(row, grad_low + previous * w, W, tx);
        for (int64_t x = 0; x < W; ++x) row[x] = T(0);
      }
      for (int64_t x = 0; x < W; ++x) row[x] += weight * g[x];
    }
  }
  for (int k = 0; k < 2; ++k) {
    if (held.held[k] >= 0) spread_row(rows + k * W, grad_low + held.held[k] * w, W, tx);
  }
}

}  // namespace kernels
}  // namespace nasfast
