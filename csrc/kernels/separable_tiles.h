// Register tiles of the CPU separable kernels, for CPUs with 256-bit vectors (AVX2 + FMA) or
// 512-bit ones (AVX-512; the CPU backend decides at run time, cpu/simd.h), written with the
// GCC/clang vector extensions; other compilers keep the portable loops of separable.h and BLAS.
// Each tile is a template on the vector width in bytes (Bytes); separable.h's correlate_valid and
// depthwise_weight_grad and the backend's pointwise step call the widest that fits.
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
template <typename T, int Bytes>
struct Vectors {
  enum { kBytes = Bytes, kLanes = kBytes / sizeof(T), kTileColumns = 2 * kLanes };
  typedef T Vector __attribute__((vector_size(kBytes)));
  // Loads and stores at any element: alignment of T, and allowed to alias T (as immintrin.h's
  // unaligned types are).
  typedef T Unaligned __attribute__((vector_size(kBytes), aligned(sizeof(T)), __may_alias__));
};

// The depthwise taps: kTileRows output rows (d apart) x 2 vectors of columns stay in registers,
// and each input vector is loaded once for every output row that reads it (K loads of an input
// row serve up to K output rows). One tile: output rows y, y + d, ..., columns [x, x + 2 lanes).
constexpr int kTileRows = 4;

template <typename T, int K, int Bytes>
NASFAST_CPU_INLINE void correlate_tile(const T* NASFAST_RESTRICT padded, const T* w, T* NASFAST_RESTRICT out,
                                       int64_t y, int64_t x, int64_t W, int64_t d) {
  typedef typename Vectors<T, Bytes>::Vector V;
  typedef typename Vectors<T, Bytes>::Unaligned U;
  const int L = Vectors<T, Bytes>::kLanes;
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
template <typename T, int K, int Bytes>
NASFAST_CPU_INLINE void correlate_valid_tiled(const T* padded, const T* weight, T* out, int64_t rows, int64_t W,
                                              int64_t d) {
  const int64_t columns = Vectors<T, Bytes>::kTileColumns;
  T w[K * K];
  for (int i = 0; i < K * K; ++i) w[i] = weight[i];
  for (int64_t phase = 0; phase < d; ++phase) {  // output rows phase, phase + d, ...: tiles share input rows
    const int64_t count = (rows - phase + d - 1) / d;
    for (int64_t m0 = 0; m0 < count; m0 += kTileRows) {
      const int64_t y = phase + std::min(m0, count - kTileRows) * d;
      for (int64_t x0 = 0; x0 < W; x0 += columns) {
        correlate_tile<T, K, Bytes>(padded, w, out, y, std::min(x0, W - columns), W, d);
      }
    }
  }
}

template <typename T, int Bytes>
NASFAST_CPU_INLINE bool tiles_fit(int64_t rows, int64_t W, int64_t k, int64_t d) {
  return (k == 3 || k == 5) && W >= Vectors<T, Bytes>::kTileColumns && rows >= kTileRows * d;
}

// The pointwise 1 x 1 of a band: out (Cout x P, row stride ld) = pw (Cout x C) y (C x P, row
// stride ldy: see scratch_stride in separable.h), then max(out + bias, 0) when `bias` is given. A
// tile of pointwise_rows() output channels x 2 vectors of pixels stays in registers while the C
// rows of y stream through. Against BLAS (at::mm) it saves packing y and zeroing out, a fifth of
// the forward at the decoder's shapes (C = 48 or 64 is too short a sum for BLAS to amortise them).
// Tiles of 6 channels with 256-bit vectors (12 of AVX2's 16 registers), 8 with 512-bit ones (16
// of AVX-512's 32; 8 divides 48 and 64, so no channel is computed twice; 12 was slower). On the
// 2-core AMD EPYC (Zen 4, whose 512-bit multiply-adds are two 256-bit ones: the gain is fewer
// loads and broadcasts per multiply-add) the 512-bit tiles make the whole forward 5-17% faster,
// 2 threads: N=8 C=64 64x64 3x3 1.99 -> 1.68 ms, 5x5 2.57 -> 2.13 ms, N=8 C=48 128x128 4.96 ->
// 4.68 ms.
template <int Bytes>
constexpr int pointwise_rows() { return Bytes == 64 ? 8 : 6; }

template <typename T, int Bytes>
NASFAST_CPU_INLINE void pointwise_tile(const T* NASFAST_RESTRICT pw, const T* NASFAST_RESTRICT y,
                                       T* NASFAST_RESTRICT out, const T* bias, int64_t co, int64_t p, int64_t C,
                                       int64_t ldy, int64_t ld) {
  typedef typename Vectors<T, Bytes>::Vector V;
  typedef typename Vectors<T, Bytes>::Unaligned U;
  const int L = Vectors<T, Bytes>::kLanes;
  constexpr int kPointwiseRows = pointwise_rows<Bytes>();
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

// In blocks of kPointwiseBlock pixels (a multiple of every kTileColumns), each swept once per tile
// of output channels: the tiles then write pointwise_rows() output rows at a time, each a long
// run, and the block of y (C x 2048 values at most) is read again from L2 for each tile. Sweeping the channel
// tiles at each strip of pixels instead wrote all Cout rows at once, and those scattered writes
// to memory held the whole forward back: N=8 C=64 64x64, 2 threads, 2.29 -> 1.82 ms; N=8 C=48
// 128x128 6.29 -> 5.00 ms (blocks of 512 or 1024 pixels: the same within noise).
// Needs Cout >= pointwise_rows() and P >= kTileColumns; last tiles overlap as in correlate_valid_tiled.
constexpr int64_t kPointwiseBlock = 2048;

template <typename T, int Bytes>
NASFAST_CPU_INLINE void pointwise_tiled(const T* pw, const T* y, T* out, const T* bias, int64_t Cout, int64_t C,
                                        int64_t P, int64_t ldy, int64_t ld) {
  const int64_t columns = Vectors<T, Bytes>::kTileColumns;
  constexpr int kPointwiseRows = pointwise_rows<Bytes>();
  for (int64_t block = 0; block < P; block += kPointwiseBlock) {
    const int64_t block_end = std::min(P, block + kPointwiseBlock);
    for (int64_t co0 = 0; co0 < Cout; co0 += kPointwiseRows) {
      const int64_t co = std::min<int64_t>(co0, Cout - kPointwiseRows);
      for (int64_t p0 = block; p0 < block_end; p0 += columns) {
        pointwise_tile<T, Bytes>(pw, y, out, bias, co, std::min(p0, P - columns), C, ldy, ld);
      }
    }
  }
}

template <typename T, int Bytes>
NASFAST_CPU_INLINE bool pointwise_tiles_fit(int64_t Cout, int64_t P) {
  return Cout >= pointwise_rows<Bytes>() && P >= Vectors<T, Bytes>::kTileColumns;
}

// The depthwise weight gradient of 3 x 3 taps (5 x 5 would need 25 accumulators, more than
// AVX2's 16 vector registers): per tap, the dot product of the output gradient gy with the input
// rows it met, kept in one vector register per tap over the whole plane. Each input vector is
// loaded once for the kWeightGradRows gradient rows it meets (rows d apart, as in correlate_tile).
constexpr int kWeightGradRows = 4;

template <typename T, int Bytes, int R>
NASFAST_CPU_INLINE void weight_grad_rows_3x3(const T* NASFAST_RESTRICT gy, const T* NASFAST_RESTRICT padded,
                                             typename Vectors<T, Bytes>::Vector (&acc)[9], int64_t y, int64_t W,
                                             int64_t columns, int64_t d) {
  typedef typename Vectors<T, Bytes>::Vector V;
  typedef typename Vectors<T, Bytes>::Unaligned U;
  const int L = Vectors<T, Bytes>::kLanes;
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

template <typename T, int Bytes>
NASFAST_CPU_INLINE void depthwise_weight_grad_3x3_tiled(const T* gy, const T* padded, T* grad_weight, int64_t rows,
                                                        int64_t W, int64_t d) {
  typedef typename Vectors<T, Bytes>::Vector V;
  const int L = Vectors<T, Bytes>::kLanes;
  const int64_t columns = W / L * L, Wp = W + 2 * d;
  V acc[9] = {};
  for (int64_t phase = 0; phase < d; ++phase) {
    const int64_t count = (rows - phase + d - 1) / d;
    int64_t m = 0;
    for (; m + kWeightGradRows <= count; m += kWeightGradRows) {
      weight_grad_rows_3x3<T, Bytes, kWeightGradRows>(gy, padded, acc, phase + m * d, W, columns, d);
    }
    for (; m < count; ++m) weight_grad_rows_3x3<T, Bytes, 1>(gy, padded, acc, phase + m * d, W, columns, d);
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
template <typename T, int Bytes>
NASFAST_CPU_INLINE bool pointwise_tiles_fit(int64_t, int64_t) { return false; }
template <typename T, int Bytes>
NASFAST_CPU_INLINE void pointwise_tiled(const T*, const T*, T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t) {}
#endif

}  // namespace kernels
}  // namespace nasfast
