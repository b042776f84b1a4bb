// Register tiles of the CPU separable kernels, for CPUs with 256-bit vectors (AVX2 + FMA; the CPU
// backend decides at run time, cpu/simd.h), written with the GCC/clang vector extensions; other
// compilers keep the portable loops of separable.h and BLAS. separable.h's correlate_valid and
// depthwise_weight_grad and the backend's pointwise step call them where they fit.
#pragma once
#include <algorithm>

#include "common.h"

namespace nasfast {
namespace kernels {

#if defined(__GNUC__)
#define NASFAST_VECTOR_TILES 1

// The tiles load vectors through a volatile pointer to Unaligned: one register load, used by
// several multiply-adds. GCC would otherwise fold the load into each multiply-add that uses it,
// and such repeated loads are what holds the plain correlate_valid_fixed to half the cores'
// multiply-add peak (2-core CPU); the tiles reach 80-90% of it.
template <typename T>
struct Vectors {
  enum { kBytes = 32, kLanes = kBytes / sizeof(T), kTileColumns = 2 * kLanes };
  typedef T Vector __attribute__((vector_size(kBytes)));
  // Loads and stores at any element: alignment of T, and allowed to alias T (as immintrin.h's
  // unaligned types are).
  typedef T Unaligned __attribute__((vector_size(kBytes), aligned(sizeof(T)), __may_alias__));
};

// The depthwise taps: kTileRows output rows (d apart) x 2 vectors of columns stay in registers,
// and each input vector is loaded once for every output row that reads it (K loads of an input
// row serve up to K output rows). One tile: output rows y, y + d, ..., columns [x, x + 2 lanes).
constexpr int kTileRows = 4;

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

// separable.h's correlate_valid_fixed in tiles; needs W >= kTileColumns and rows >= kTileRows * d. The last
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

// The pointwise 1 x 1 of a band: out (Cout x P, row stride ld) = pw (Cout x C) y (C x P, row
// stride ldy: see scratch_stride in separable.h), then
// max(out + bias, 0) when `bias` is given. A tile of kPointwiseRows output channels x 2 vectors
// of pixels stays in 12 registers while the C rows of y stream through; y's strip and pw stay in
// L1. Against BLAS (at::mm) it saves packing y and zeroing out, a fifth of the forward at the
// decoder's shapes (C = 48 or 64 is too short a sum for BLAS to amortise them).
constexpr int kPointwiseRows = 6;

template <typename T>
NASFAST_CPU_INLINE void pointwise_tile(const T* NASFAST_RESTRICT pw, const T* NASFAST_RESTRICT y,
                                       T* NASFAST_RESTRICT out, const T* bias, int64_t co, int64_t p, int64_t C,
                                       int64_t ldy, int64_t ld) {
  typedef typename Vectors<T>::Vector V;
  typedef typename Vectors<T>::Unaligned U;
  const int L = Vectors<T>::kLanes;
  V acc[kPointwiseRows][2] = {};
  for (int64_t c = 0; c < C; ++c) {
    const V v0 = *reinterpret_cast<const volatile U*>(y + c * ldy + p);
    const V v1 = *reinterpret_cast<const volatile U*>(y + c * ldy + p + L);
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
                                        int64_t P, int64_t ldy, int64_t ld) {
  const int64_t columns = Vectors<T>::kTileColumns;
  for (int64_t p0 = 0; p0 < P; p0 += columns) {
    const int64_t p = std::min(p0, P - columns);
    for (int64_t co0 = 0; co0 < Cout; co0 += kPointwiseRows) {
      pointwise_tile(pw, y, out, bias, std::min<int64_t>(co0, Cout - kPointwiseRows), p, C, ldy, ld);
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
    for (int64_t x = columns; x < W; ++x) {  // the columns the vectors left (often none)
      for (int64_t y = 0; y < rows; ++y) sum += gy[y * W + x] * padded[(y + t / 3 * d) * Wp + x + t % 3 * d];
    }
    grad_weight[t] += sum;
  }
}
#else
// Without vector extensions the CPU backend keeps BLAS for the pointwise (this is never called).
template <typename T>
NASFAST_CPU_INLINE bool pointwise_tiles_fit(int64_t, int64_t) { return false; }
template <typename T>
NASFAST_CPU_INLINE void pointwise_tiled(const T*, const T*, T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t) {}
#endif

}  // namespace kernels
}  // namespace nasfast
