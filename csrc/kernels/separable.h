// Separable convolution: depthwise k x k (dilation d, "same" padding, no bias) then pointwise
// 1 x 1, with nothing in between (SPEC ops 2, 3, 7, 8). Plain C++14, no torch: the CPU backend
// calls the band functions below, the CUDA kernels (separable.cuh) call the per-element ones.
//
// Fusion boundaries, chosen by measurement (bench/ops.py, 2-core CPU):
//  * Forward, CPU: per image and band of rows (about kBandPixels pixels), the depthwise output of
//    every channel is computed into a thread-local buffer (C x band, a few hundred KB: it stays in
//    L2) and multiplied by the pointwise weights at once, into the output rows. The C x H x W
//    intermediate never goes through memory. On CPUs with 256-bit vectors both steps run on the
//    register tiles below (correlate_valid_tiled, pointwise_tiled); elsewhere the depthwise taps
//    are row updates the compiler vectorises and the pointwise is BLAS (at::mm). Fusing the
//    pointwise into the depthwise loop itself was slower: it is 90% of the arithmetic and wants
//    its own register tiling.
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
#include <algorithm>

#include "common.h"

namespace nasfast {
namespace kernels {

// Pixels per band on the CPU: C x kBandPixels values of scratch per thread.
constexpr int64_t kBandPixels = 2048;

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
// vectorised along x, taps unrolled. The portable version; correlate_valid_tiled below is faster.
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

#if defined(__GNUC__)
// Tiles for CPUs with 256-bit vectors (AVX2 + FMA; the CPU backend decides at run time):
// kTileRows output rows (d apart) x 2 vectors of columns are kept in registers, and each input
// vector is loaded once for every output row that reads it (K x K taps: K loads of a row serve up
// to K output rows). The volatile load makes it one register load: GCC would otherwise fold the
// load into each multiply-add that uses it, and those repeated loads are the bottleneck of the
// plain loop above (half the multiply-add peak on the 2-core CPU's cores; the tiles reach 80-90%).
#define NASFAST_VECTOR_TILES 1
constexpr int kTileRows = 4;

template <typename T>
struct Vectors {
  enum { kBytes = 32, kLanes = kBytes / sizeof(T), kTileColumns = 2 * kLanes };
  typedef T Vector __attribute__((vector_size(kBytes)));
  // Loads and stores at any element: alignment of T, and allowed to alias T (as immintrin.h's
  // unaligned types are).
  typedef T Unaligned __attribute__((vector_size(kBytes), aligned(sizeof(T)), __may_alias__));
};

// Output rows y, y + d, ... (kTileRows of them), columns [x, x + kTileColumns).
template <typename T, int K>
NASFAST_CPU_INLINE void correlate_tile(const T* NASFAST_RESTRICT padded, const T* w, T* NASFAST_RESTRICT out,
                                       int64_t y, int64_t x, int64_t W, int64_t d) {
  typedef typename Vectors<T>::Vector V;
  typedef typename Vectors<T>::Unaligned U;
  const int L = Vectors<T>::kLanes;
  const int64_t Wp = W + (K - 1) * d;
  V acc[kTileRows][2] = {};
  NASFAST_UNROLL
  for (int i = 0; i < kTileRows + K - 1; ++i) {  // input row y + i d feeds output row r with tap ky = i - r
    const T* row = padded + (y + i * d) * Wp + x;
    NASFAST_UNROLL
    for (int kx = 0; kx < K; ++kx) {
      NASFAST_UNROLL
      for (int j = 0; j < 2; ++j) {
        const V v = *reinterpret_cast<const volatile U*>(row + kx * d + j * L);
        NASFAST_UNROLL
        for (int r = 0; r < kTileRows; ++r) {
          if (i - r >= 0 && i - r < K) acc[r][j] += w[(i - r) * K + kx] * v;
        }
      }
    }
  }
  for (int r = 0; r < kTileRows; ++r) {
    for (int j = 0; j < 2; ++j) *reinterpret_cast<U*>(out + (y + r * d) * W + x + j * L) = acc[r][j];
  }
}

// correlate_valid_fixed in tiles; needs W >= kTileColumns and rows >= kTileRows * d. The last
// tile of a row (or of a column of rows) overlaps its neighbour instead of leaving a remainder:
// the overlap is computed twice, identically.
template <typename T, int K>
NASFAST_CPU_INLINE void correlate_valid_tiled(const T* padded, const T* weight, T* out, int64_t rows, int64_t W,
                                              int64_t d) {
  const int64_t columns = Vectors<T>::kTileColumns;
  T w[K * K];
  for (int i = 0; i < K * K; ++i) w[i] = weight[i];
  for (int64_t phase = 0; phase < d; ++phase) {  // output rows phase, phase + d, ...: tiles share input rows
    const int64_t count = (rows - phase + d - 1) / d;
    for (int64_t m0 = 0; m0 < count; m0 += kTileRows) {
      const int64_t y = phase + std::min(m0, count - kTileRows) * d;
      for (int64_t x0 = 0; x0 < W; x0 += columns) {
        correlate_tile<T, K>(padded, w, out, y, std::min(x0, W - columns), W, d);
      }
    }
  }
}

template <typename T>
NASFAST_CPU_INLINE bool tiles_fit(int64_t rows, int64_t W, int64_t k, int64_t d) {
  return (k == 3 || k == 5) && W >= Vectors<T>::kTileColumns && rows >= kTileRows * d;
}

// The pointwise 1 x 1 of a band: out (Cout x P, row stride ld) = pw (Cout x C) y (C x P), then
// max(out + bias, 0) when `bias` is given. A tile of kPointwiseRows output channels x 2 vectors
// of pixels stays in 12 registers while the C rows of y stream through; y's strip and pw stay in
// L1. Against BLAS (at::mm) it saves packing y and zeroing out, a fifth of the forward at the
// decoder's shapes (C = 48 or 64 is too short a sum for BLAS to amortise them).
constexpr int kPointwiseRows = 6;

template <typename T>
NASFAST_CPU_INLINE void pointwise_tile(const T* NASFAST_RESTRICT pw, const T* NASFAST_RESTRICT y,
                                       T* NASFAST_RESTRICT out, const T* bias, int64_t co, int64_t p, int64_t C,
                                       int64_t P, int64_t ld) {
  typedef typename Vectors<T>::Vector V;
  typedef typename Vectors<T>::Unaligned U;
  const int L = Vectors<T>::kLanes;
  V acc[kPointwiseRows][2] = {};
  for (int64_t c = 0; c < C; ++c) {
    const V v0 = *reinterpret_cast<const volatile U*>(y + c * P + p);
    const V v1 = *reinterpret_cast<const volatile U*>(y + c * P + p + L);
    NASFAST_UNROLL
    for (int r = 0; r < kPointwiseRows; ++r) {
      const T w = pw[(co + r) * C + c];
      acc[r][0] += w * v0;
      acc[r][1] += w * v1;
    }
  }
  for (int r = 0; r < kPointwiseRows; ++r) {
    for (int j = 0; j < 2; ++j) {
      V v = acc[r][j];
      if (bias) {
        v += bias[co + r];
        v = v < T(0) ? V{} : v;  // NaN stays NaN, as with torch.relu
      }
      *reinterpret_cast<U*>(out + (co + r) * ld + p + j * L) = v;
    }
  }
}

// Needs Cout >= kPointwiseRows and P >= kTileColumns; last tiles overlap as in correlate_valid_tiled.
template <typename T>
NASFAST_CPU_INLINE void pointwise_tiled(const T* pw, const T* y, T* out, const T* bias, int64_t Cout, int64_t C,
                                        int64_t P, int64_t ld) {
  const int64_t columns = Vectors<T>::kTileColumns;
  for (int64_t p0 = 0; p0 < P; p0 += columns) {
    const int64_t p = std::min(p0, P - columns);
    for (int64_t co0 = 0; co0 < Cout; co0 += kPointwiseRows) {
      pointwise_tile(pw, y, out, bias, std::min<int64_t>(co0, Cout - kPointwiseRows), p, C, P, ld);
    }
  }
}

template <typename T>
NASFAST_CPU_INLINE bool pointwise_tiles_fit(int64_t Cout, int64_t P) {
  return Cout >= kPointwiseRows && P >= Vectors<T>::kTileColumns;
}

// The depthwise weight gradient of 3 x 3 taps (5 x 5 would need 25 accumulators, more than
// AVX2's 16 vector registers): per tap, the dot product of the output gradient gy with the input
// rows it met, kept in one vector register per tap over the whole plane. Each input vector is
// loaded once for the kWeightGradRows gradient rows it meets (rows d apart, as in correlate_tile).
constexpr int kWeightGradRows = 4;

template <typename T, int R>
NASFAST_CPU_INLINE void weight_grad_rows_3x3(const T* NASFAST_RESTRICT gy, const T* NASFAST_RESTRICT padded,
                                             typename Vectors<T>::Vector (&acc)[9], int64_t y, int64_t W,
                                             int64_t columns, int64_t d) {
  typedef typename Vectors<T>::Vector V;
  typedef typename Vectors<T>::Unaligned U;
  const int L = Vectors<T>::kLanes;
  const int64_t Wp = W + 2 * d;
  for (int64_t x = 0; x < columns; x += L) {
    V g[R];
    for (int r = 0; r < R; ++r) g[r] = *reinterpret_cast<const volatile U*>(gy + (y + r * d) * W + x);
    NASFAST_UNROLL
    for (int i = 0; i < R + 2; ++i) {
      NASFAST_UNROLL
      for (int kx = 0; kx < 3; ++kx) {
        const V v = *reinterpret_cast<const volatile U*>(padded + (y + i * d) * Wp + x + kx * d);
        NASFAST_UNROLL
        for (int r = 0; r < R; ++r) {
          if (i - r >= 0 && i - r < 3) acc[(i - r) * 3 + kx] += g[r] * v;
        }
      }
    }
  }
}

template <typename T>
NASFAST_CPU_INLINE void depthwise_weight_grad_3x3_tiled(const T* gy, const T* padded, T* grad_weight, int64_t rows,
                                                        int64_t W, int64_t d) {
  typedef typename Vectors<T>::Vector V;
  const int L = Vectors<T>::kLanes;
  const int64_t columns = W / L * L, Wp = W + 2 * d;
  V acc[9] = {};
  for (int64_t phase = 0; phase < d; ++phase) {
    const int64_t count = (rows - phase + d - 1) / d;
    int64_t m = 0;
    for (; m + kWeightGradRows <= count; m += kWeightGradRows) {
      weight_grad_rows_3x3<T, kWeightGradRows>(gy, padded, acc, phase + m * d, W, columns, d);
    }
    for (; m < count; ++m) weight_grad_rows_3x3<T, 1>(gy, padded, acc, phase + m * d, W, columns, d);
  }
  for (int t = 0; t < 9; ++t) {
    T sum = T(0);
    for (int l = 0; l < L; ++l) sum += acc[t][l];
    for (int64_t y = 0; y < rows; ++y) {  // the columns the vectors left
      for (int64_t x = columns; x < W; ++x) sum += gy[y * W + x] * padded[(y + t / 3 * d) * Wp + x + t % 3 * d];
    }
    grad_weight[t] += sum;
  }
}
#else
// Without vector extensions the CPU backend keeps BLAS for the pointwise (this is never called).
template <typename T>
NASFAST_CPU_INLINE bool pointwise_tiles_fit(int64_t, int64_t) { return false; }
template <typename T>
NASFAST_CPU_INLINE void pointwise_tiled(const T*, const T*, T*, const T*, int64_t, int64_t, int64_t, int64_t) {}
#endif

// out = the k x k correlation of `padded` (see correlate_valid_fixed); `wide_vectors`: the CPU
// runs 256-bit vectors and the code was compiled for them (cpu/simd.h).
template <typename T>
NASFAST_CPU_INLINE void correlate_valid(const T* padded, const T* weight, T* out, int64_t rows, int64_t W, int64_t k,
                                        int64_t d, bool wide_vectors) {
#ifdef NASFAST_VECTOR_TILES
  if (wide_vectors && tiles_fit<T>(rows, W, k, d)) {
    if (k == 3) {
      correlate_valid_tiled<T, 3>(padded, weight, out, rows, W, d);
    } else {
      correlate_valid_tiled<T, 5>(padded, weight, out, rows, W, d);
    }
    return;
  }
#else
  (void)wide_vectors;
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
                    int64_t y0, int64_t y1, bool wide_vectors) {
  const int64_t pad = d * (k / 2);
  pad_rows(plane, padded, H, W, pad, y0, y1);
  correlate_valid(padded, weight, out, y1 - y0, W, k, d, wide_vectors);
}

// The input gradient of one whole plane from its output gradient `gy`: the correlation of gy with
// the taps rotated by 180 degrees. `flipped` holds k x k values, `padded` the padded plane.
template <typename T>
NASFAST_CPU_INLINE void depthwise_plane_input_grad(const T* gy, const T* weight, T* grad_plane, T* padded, T* flipped, int64_t H,
                                int64_t W, int64_t k, int64_t d, bool wide_vectors) {
  for (int64_t i = 0; i < k * k; ++i) flipped[i] = weight[k * k - 1 - i];
  depthwise_band(gy, flipped, grad_plane, padded, H, W, k, d, 0, H, wide_vectors);
}

// Adds to `grad_weight` (k x k) the correlation of the output gradient `gy` (rows x W) with the
// padded input rows that produced it: one dot product per tap, summed in kLanes independent
// partial sums so that the compiler keeps them in vector registers.
template <typename T>
NASFAST_CPU_INLINE void depthwise_weight_grad(const T* NASFAST_RESTRICT gy, const T* NASFAST_RESTRICT padded, T* grad_weight,
                           int64_t rows, int64_t W, int64_t k, int64_t d, bool wide_vectors) {
#ifdef NASFAST_VECTOR_TILES
  if (wide_vectors && k == 3) {
    depthwise_weight_grad_3x3_tiled(gy, padded, grad_weight, rows, W, d);
    return;
  }
#else
  (void)wide_vectors;
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
