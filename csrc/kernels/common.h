// Shared helpers of the torch-free kernels: plain C++14 that nvcc and clang (sm_62) also accept.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define NASFAST_HOST_DEVICE __host__ __device__
#else
#define NASFAST_HOST_DEVICE
#endif

// Pointers that do not alias: lets the compiler vectorise loops with many loads per store.
#define NASFAST_RESTRICT __restrict__

// NASFAST_UNROLL: unroll the next (constant trip count) loop completely.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define NASFAST_UNROLL _Pragma("GCC unroll 32")
#else
#define NASFAST_UNROLL
#endif

// On the CPU kernels called from a multiversioned function (NASFAST_CPU_CLONES, cpu/simd.h):
// inlined into each clone, they are compiled for its instruction set (AVX2, AVX-512); out of
// line they would be compiled once, for the baseline (SSE2), whatever the clone calling them.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define NASFAST_CPU_INLINE inline __attribute__((always_inline))
#else
#define NASFAST_CPU_INLINE inline
#endif

namespace nasfast {
namespace kernels {

// One axis of bilinear interpolation with align_corners=False (PyTorch's convention when the
// output size is given): output index -> two input indices and their weights.
// Index: the type of sizes and indices; int32_t spares the CUDA kernels 64-bit conversions.
template <typename T, typename Index = int64_t>
struct LinearTap {
  Index i0, i1;
  T w0, w1;
};

// Keeps a template argument from being deduced, so that linear_tap<T>(...) still takes any mix of
// integer arguments (as int64_t).
template <typename T>
struct NonDeduced {
  using type = T;
};

template <typename T, typename Index = int64_t>
NASFAST_HOST_DEVICE inline LinearTap<T, Index> linear_tap(typename NonDeduced<Index>::type dst,
                                                          typename NonDeduced<Index>::type in_size,
                                                          typename NonDeduced<Index>::type out_size) {
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  if (src < T(0)) src = T(0);
  LinearTap<T, Index> tap;
  tap.i0 = static_cast<Index>(src);
  if (tap.i0 > in_size - 1) tap.i0 = in_size - 1;
  tap.i1 = tap.i0 + (tap.i0 < in_size - 1 ? 1 : 0);
  tap.w1 = src - static_cast<T>(tap.i0);
  tap.w0 = T(1) - tap.w1;
  return tap;
}

// The bilinear interpolation of one plane (row width w) at the taps ty, tx, in Acc.
template <typename Acc, typename T, typename Index>
NASFAST_HOST_DEVICE inline Acc bilinear_at(const T* plane, int64_t w, const LinearTap<Acc, Index>& ty,
                                           const LinearTap<Acc, Index>& tx) {
  const T* row0 = plane + ty.i0 * w;
  const T* row1 = plane + ty.i1 * w;
  return ty.w0 * (tx.w0 * static_cast<Acc>(row0[tx.i0]) + tx.w1 * static_cast<Acc>(row0[tx.i1])) +
         ty.w1 * (tx.w0 * static_cast<Acc>(row1[tx.i0]) + tx.w1 * static_cast<Acc>(row1[tx.i1]));
}

// CPU: the kernels interpolate in two passes, along x once per low row (interpolate_row), then
// along y per output row, from two row buffers. Output rows read low rows in non-decreasing
// order, at most one apart, so one buffer per parity of the low row's index holds what the
// current output row needs, and each low row passes along x once.

// The taps of every output row and column, computed once and shared by all planes.
template <typename T>
void make_taps(LinearTap<T>* taps, int64_t in_size, int64_t out_size) {
  for (int64_t i = 0; i < out_size; ++i) taps[i] = linear_tap<T>(i, in_size, out_size);
}

// out (W) = row (w) interpolated along x.
template <typename T>
NASFAST_CPU_INLINE void interpolate_row(const T* NASFAST_RESTRICT row, T* NASFAST_RESTRICT out, int64_t W,
                                        const LinearTap<T>* tx) {
  for (int64_t x = 0; x < W; ++x) out[x] = tx[x].w0 * row[tx[x].i0] + tx[x].w1 * row[tx[x].i1];
}

// grad_low (w) += row (W) spread back along x: the transpose of interpolate_row.
template <typename T>
NASFAST_CPU_INLINE void spread_row(const T* NASFAST_RESTRICT row, T* NASFAST_RESTRICT grad_low, int64_t W,
                                   const LinearTap<T>* tx) {
  for (int64_t x = 0; x < W; ++x) {
    grad_low[tx[x].i0] += tx[x].w0 * row[x];
    grad_low[tx[x].i1] += tx[x].w1 * row[x];
  }
}

// Which low row each of the two buffers holds. hold(i) puts row i in buffer i & 1 and returns the
// row that was there: i itself when the buffer is already right, -1 when it was empty.
struct ParityRows {
  int64_t held[2] = {-1, -1};
  int64_t hold(int64_t i) {
    const int64_t previous = held[i & 1];
    held[i & 1] = i;
    return previous;
  }
};

}  // namespace kernels
}  // namespace nasfast
