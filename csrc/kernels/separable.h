// Separable convolution: depthwise k x k (dilation d, "same" padding, no bias) then pointwise
// 1 x 1, with nothing in between (SPEC ops 2, 3, 7, 8). Plain C++14, no torch: the CPU backend
// calls the band functions below, the CUDA kernels (separable.cuh) call the per-element ones.
//
// Fusion boundaries, chosen by measurement (bench/ops.py, 2-core CPU):
//  * Forward, CPU: per image and band of rows (about kBandPixels pixels), the depthwise output of
//    every channel is computed into a thread-local buffer (C x band, a few hundred KB: it stays in
//    L2) and multiplied by the pointwise weights at once, into the output rows. The C x H x W
//    intermediate never goes through memory. On CPUs with 256- or 512-bit vectors both steps run
//    on the register tiles of separable_tiles.h; elsewhere the depthwise taps are row updates the
//    compiler vectorises and the pointwise is BLAS (at::mm). Fusing the pointwise into the
//    depthwise loop itself was slower: it is 90% of the arithmetic and wants its own register
//    tiling.
//  * Inference: BN is folded into the pointwise weights and a bias, and bias + ReLU are applied to
//    each band right after its GEMM, while it is in cache: a separable block in eval is one pass.
//  * Training: BN needs the batch statistics of the whole output, so BN + ReLU stay outside the
//    op (one more pass, as in the reference).
//  * Backward, CPU: per image: gy = pw^T g (the pointwise tiles, or BLAS), the depthwise output
//    recomputed (cheaper than storing it), grad_pw += g y^T (BLAS), then the depthwise weight and
//    input gradients from gy while it is in cache. The input gradient of a band would spill into
//    its neighbours' rows (the kernel's halo), so one task owns whole images.
//  * CUDA: forward is one kernel (a depthwise tile in shared memory, then a register-tiled
//    pointwise and the epilogue); backward recomputes the depthwise output, does both GEMMs with
//    cuBLAS, the input gradient with a gather kernel and the depthwise weight gradient in one
//    pass over the channel, summed across blocks with atomics (not bitwise reproducible).
#pragma once
#include "common.h"
#include "separable_tiles.h"

namespace nasfast {
namespace kernels {

// Pixels per band on the CPU: C x kBandPixels values of scratch per thread.
constexpr int64_t kBandPixels = 2048;

// Row stride of a C x P scratch matrix whose columns the pointwise step reads a strip at a time,
// all C rows: an odd number of cache lines, so that the rows fall in different L1 sets. At a
// power-of-two P (every band and plane of a power-of-two map) the C rows of a strip shared one
// 8-way set and came from L2: 0.35 -> 0.30 ms, the forward at N=8 C=48 32x32 on 2 cores.
template <typename T>
NASFAST_CPU_INLINE int64_t scratch_stride(int64_t P) {
  const int64_t line = 64 / sizeof(T);
  return ((P + line - 1) / line | 1) * line;
}

// --- per element (CPU and CUDA) -----------------------------------------------------------------

// Depthwise output at (y, x) of one H x W plane; `weight` is that channel's k x k taps.
template <typename Acc, typename T>
NASFAST_HOST_DEVICE inline Acc depthwise_at(const T* plane, const T* weight, int64_t H, int64_t W, int64_t k,
                                            int64_t d, int64_t y, int64_t x) {
  const int64_t r = k / 2;
  Acc sum = Acc(0);
  for (int64_t ky = 0; ky < k; ++ky) {
    const int64_t iy = y + (ky - r) * d;
    if (iy < 0 || iy >= H) continue;
    for (int64_t kx = 0; kx < k; ++kx) {
      const int64_t ix = x + (kx - r) * d;
      if (ix < 0 || ix >= W) continue;
      sum += static_cast<Acc>(weight[ky * k + kx]) * static_cast<Acc>(plane[iy * W + ix]);
    }
  }
  return sum;
}

// Gradient of the depthwise input at (y, x), gathered from the output gradient `gy` (the
// transposed convolution): every output pixel that read (y, x), times the tap it used.
template <typename Acc, typename T>
NASFAST_HOST_DEVICE inline Acc depthwise_input_grad_at(const T* gy, const T* weight, int64_t H, int64_t W,
                                                       int64_t k, int64_t d, int64_t y, int64_t x) {
  const int64_t r = k / 2;
  Acc sum = Acc(0);
  for (int64_t ky = 0; ky < k; ++ky) {
    const int64_t oy = y - (ky - r) * d;
    if (oy < 0 || oy >= H) continue;
    for (int64_t kx = 0; kx < k; ++kx) {
      const int64_t ox = x - (kx - r) * d;
      if (ox < 0 || ox >= W) continue;
      sum += static_cast<Acc>(weight[ky * k + kx]) * static_cast<Acc>(gy[oy * W + ox]);
    }
  }
  return sum;
}

// --- padded rows (CPU) --------------------------------------------------------------------------
// The CPU kernels first copy the rows they read into a zero-padded buffer (pad = d * (k / 2) on
// every side), so every tap is a branch-free "valid" correlation that the compiler vectorises
// along x, with the k x k taps unrolled for the sizes the search space uses (3 and 5).

// Rows [y0 - pad, y1 + pad) of an H x W plane into `padded` ((y1 - y0 + 2 pad) x (W + 2 pad)),
// zeros outside the plane.
template <typename T>
NASFAST_CPU_INLINE void pad_rows(const T* plane, T* padded, int64_t H, int64_t W, int64_t pad, int64_t y0, int64_t y1) {
  const int64_t Wp = W + 2 * pad;
  for (int64_t py = 0; py < y1 - y0 + 2 * pad; ++py) {
    const int64_t y = y0 - pad + py;
    T* row = padded + py * Wp;
    if (y < 0 || y >= H) {
      for (int64_t x = 0; x < Wp; ++x) row[x] = T(0);
      continue;
    }
    const T* in = plane + y * W;
    for (int64_t x = 0; x < pad; ++x) row[x] = T(0);
    for (int64_t x = 0; x < W; ++x) row[pad + x] = in[x];
    for (int64_t x = pad + W; x < Wp; ++x) row[x] = T(0);
  }
}

// out (rows x W) = the K x K correlation (dilation d) of `padded` (rows + (K-1) d) x (W + (K-1) d):
// vectorised along x, taps unrolled. The portable version; correlate_valid_tiled
// (separable_tiles.h) is faster.
template <typename T, int K>
NASFAST_CPU_INLINE void correlate_valid_fixed(const T* NASFAST_RESTRICT padded, const T* weight, T* NASFAST_RESTRICT out, int64_t rows,
                           int64_t W, int64_t d) {
  const int64_t Wp = W + (K - 1) * d;
  T w[K * K];
  for (int i = 0; i < K * K; ++i) w[i] = weight[i];
  for (int64_t y = 0; y < rows; ++y) {
    const T* base = padded + y * Wp;
    T* o = out + y * W;
    for (int64_t x = 0; x < W; ++x) {
      T acc = T(0);
      NASFAST_UNROLL
      for (int ky = 0; ky < K; ++ky) {
        const T* row = base + ky * d * Wp + x;
        NASFAST_UNROLL
        for (int kx = 0; kx < K; ++kx) acc += w[ky * K + kx] * row[kx * d];
      }
      o[x] = acc;
    }
  }
}

template <typename T>
NASFAST_CPU_INLINE void correlate_valid_any(const T* NASFAST_RESTRICT padded, const T* weight, T* NASFAST_RESTRICT out, int64_t rows,
                         int64_t W, int64_t k, int64_t d) {
  const int64_t Wp = W + (k - 1) * d;
  for (int64_t y = 0; y < rows; ++y) {
    T* o = out + y * W;
    for (int64_t x = 0; x < W; ++x) o[x] = T(0);
    for (int64_t ky = 0; ky < k; ++ky) {
      for (int64_t kx = 0; kx < k; ++kx) {
        const T* row = padded + (y + ky * d) * Wp + kx * d;
        const T w = weight[ky * k + kx];
        for (int64_t x = 0; x < W; ++x) o[x] += w * row[x];
      }
    }
  }
}

#ifdef NASFAST_VECTOR_TILES
// correlate_valid on the register tiles of Bytes-wide vectors, if they fit.
template <typename T, int Bytes>
NASFAST_CPU_INLINE bool correlate_valid_vectors(const T* padded, const T* weight, T* out, int64_t rows, int64_t W,
                                                int64_t k, int64_t d) {
  if (!tiles_fit<T, Bytes>(rows, W, k, d)) return false;
  if (k == 3) {
    correlate_valid_tiled<T, 3, Bytes>(padded, weight, out, rows, W, d);
  } else {
    correlate_valid_tiled<T, 5, Bytes>(padded, weight, out, rows, W, d);
  }
  return true;
}
#endif

// out = the k x k correlation of `padded` (see correlate_valid_fixed); `vector_bytes`: the width
// of the vectors the CPU runs and the code was compiled for (cpu/simd.h), 0 for none.
template <typename T>
NASFAST_CPU_INLINE void correlate_valid(const T* padded, const T* weight, T* out, int64_t rows, int64_t W, int64_t k,
                                        int64_t d, int vector_bytes) {
#ifdef NASFAST_VECTOR_TILES
  if ((vector_bytes >= 64 && correlate_valid_vectors<T, 64>(padded, weight, out, rows, W, k, d)) ||
      (vector_bytes >= 32 && correlate_valid_vectors<T, 32>(padded, weight, out, rows, W, k, d))) {
    return;
  }
#else
  (void)vector_bytes;
#endif
  if (k == 3) {
    correlate_valid_fixed<T, 3>(padded, weight, out, rows, W, d);
  } else if (k == 5) {
    correlate_valid_fixed<T, 5>(padded, weight, out, rows, W, d);
  } else {
    correlate_valid_any(padded, weight, out, rows, W, k, d);
  }
}

// Depthwise output rows [y0, y1) of one plane into `out` ((y1 - y0) x W); `padded` is scratch of
// (y1 - y0 + 2 pad) x (W + 2 pad) values.
template <typename T>
NASFAST_CPU_INLINE void depthwise_band(const T* plane, const T* weight, T* out, T* padded, int64_t H, int64_t W, int64_t k, int64_t d,
                    int64_t y0, int64_t y1, int vector_bytes) {
  const int64_t pad = d * (k / 2);
  pad_rows(plane, padded, H, W, pad, y0, y1);
  correlate_valid(padded, weight, out, y1 - y0, W, k, d, vector_bytes);
}

// The input gradient of one whole plane from its output gradient `gy`: the correlation of gy with
// the taps rotated by 180 degrees. `flipped` holds k x k values, `padded` the padded plane.
template <typename T>
NASFAST_CPU_INLINE void depthwise_plane_input_grad(const T* gy, const T* weight, T* grad_plane, T* padded, T* flipped, int64_t H,
                                int64_t W, int64_t k, int64_t d, int vector_bytes) {
  for (int64_t i = 0; i < k * k; ++i) flipped[i] = weight[k * k - 1 - i];
  depthwise_band(gy, flipped, grad_plane, padded, H, W, k, d, 0, H, vector_bytes);
}

// Adds to `grad_weight` (k x k) the correlation of the output gradient `gy` (rows x W) with the
// padded input rows that produced it: one dot product per tap, summed in kLanes independent
// partial sums so that the compiler keeps them in vector registers.
template <typename T>
NASFAST_CPU_INLINE void depthwise_weight_grad(const T* NASFAST_RESTRICT gy, const T* NASFAST_RESTRICT padded, T* grad_weight,
                           int64_t rows, int64_t W, int64_t k, int64_t d, int vector_bytes) {
#ifdef NASFAST_VECTOR_TILES
  if (k == 3 && vector_bytes >= 32) {
    if (vector_bytes >= 64) {
      depthwise_weight_grad_3x3_tiled<T, 64>(gy, padded, grad_weight, rows, W, d);
    } else {
      depthwise_weight_grad_3x3_tiled<T, 32>(gy, padded, grad_weight, rows, W, d);
    }
    return;
  }
#else
  (void)vector_bytes;
#endif
  constexpr int kLanes = 16;
  const int64_t Wp = W + (k - 1) * d;
  for (int64_t ky = 0; ky < k; ++ky) {
    for (int64_t kx = 0; kx < k; ++kx) {
      T lanes[kLanes] = {};
      T tail = T(0);
      for (int64_t y = 0; y < rows; ++y) {
        const T* g = gy + y * W;
        const T* in = padded + (y + ky * d) * Wp + kx * d;
        int64_t x = 0;
        for (; x + kLanes <= W; x += kLanes) {
          for (int j = 0; j < kLanes; ++j) lanes[j] += g[x + j] * in[x + j];
        }
        for (; x < W; ++x) tail += g[x] * in[x];
      }
      for (int j = 0; j < kLanes; ++j) tail += lanes[j];
      grad_weight[ky * k + kx] += tail;
    }
  }
}

// out (rows x n, row stride ld) = max(out + bias[row], 0): the inference epilogue. NaN stays NaN,
// as with torch.relu.
template <typename T>
NASFAST_CPU_INLINE void bias_relu_rows(T* out, const T* bias, int64_t rows, int64_t n, int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) {
    T* o = out + i * ld;
    const T b = bias[i];
    for (int64_t j = 0; j < n; ++j) {
      const T v = o[j] + b;
      o[j] = v < T(0) ? T(0) : v;
    }
  }
}

}  // namespace kernels
}  // namespace nasfast
