// CUDA kernels of upsample_add, mapped to rows: threadIdx.x runs along a row, threadIdx.y and
// blockIdx.x over rows, blockIdx.y over planes, so that no thread divides to find its pixel and
// each row's vertical tap is computed once. Index (int32_t or int64_t) is the type of the sizes
// and of the indices along one axis; offsets of rows and planes are int64_t.
// The backward gathers: each thread sums the gradient of one low pixel from the output pixels
// whose taps touch it, so it needs no atomics and no zeroed buffer.
#pragma once
#include "cuda_common.cuh"

namespace nasfast {
namespace kernels {

// Grid-stride loop over rows: blockIdx.x * blockDim.y + threadIdx.y, stepping by the grid's rows.
__device__ inline int64_t block_row() { return static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; }
__device__ inline int64_t grid_rows() { return static_cast<int64_t>(gridDim.x) * blockDim.y; }

// One output row: out = high + low_plane interpolated at the row's taps ty, with bilinear_at
// (common.h) as before, so every output element gets the same float operations.
template <typename Acc, typename T, typename Index>
__device__ inline void upsample_add_row(const T* __restrict__ high, const T* __restrict__ low_plane,
                                        T* __restrict__ out, const LinearTap<Acc, Index>& ty, Index W, Index w) {
  for (Index x = threadIdx.x; x < W; x += blockDim.x) {
    const LinearTap<Acc, Index> tx = linear_tap<Acc, Index>(x, w, W);
    out[x] = static_cast<T>(static_cast<Acc>(high[x]) + bilinear_at<Acc>(low_plane, w, ty, tx));
  }
}

// high, out: planes x H x W; low: planes x h x w.
template <typename T, typename Acc, typename Index>
__global__ void upsample_add_kernel(const T* __restrict__ high, const T* __restrict__ low, T* __restrict__ out,
                                    int64_t planes, Index H, Index W, Index h, Index w) {
  for (int64_t y = block_row(); y < H; y += grid_rows()) {
    const LinearTap<Acc, Index> ty = linear_tap<Acc, Index>(static_cast<Index>(y), h, H);
    for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
      const int64_t row = (plane * H + y) * W;
      upsample_add_row<Acc>(high + row, low + plane * h * w, out + row, ty, W, w);
    }
  }
}

// Backward. Along one axis, output index d reads low indices i0(d) and i1(d) = min(i0(d) + 1,
// in_size - 1), and i0 is non-decreasing in d (every step of linear_tap rounds monotonically).
// So the outputs reading low index k are those with i0(d) in {k - 1, k}: one contiguous range.
template <typename Index>
struct OutputRange {
  Index begin, end;
};

// The first output index d with i0(d) >= m, or out_size if none. The estimate from the exact
// formula only picks where to start: the two loops make the result exact whatever the rounding.
template <typename Acc, typename Index>
__device__ inline Index first_output_at_least(Index m, Index in_size, Index out_size) {
  if (m <= 0) return 0;
  if (m >= in_size) return out_size;
  const Acc estimate = (static_cast<Acc>(m) + Acc(0.5)) * (static_cast<Acc>(out_size) / static_cast<Acc>(in_size)) -
                       Acc(0.5);
  Index d = 0;
  if (estimate >= static_cast<Acc>(out_size)) {
    d = out_size;
  } else if (estimate > Acc(0)) {
    d = static_cast<Index>(estimate);
    if (static_cast<Acc>(d) < estimate) ++d;  // ceil
    if (d > out_size) d = out_size;
  }
  while (d > 0 && linear_tap<Acc, Index>(d - 1, in_size, out_size).i0 >= m) --d;
  while (d < out_size && linear_tap<Acc, Index>(d, in_size, out_size).i0 < m) ++d;
  return d;
}

template <typename Acc, typename Index>
__device__ inline OutputRange<Index> outputs_reading(Index k, Index in_size, Index out_size) {
  OutputRange<Index> range;
  range.begin = first_output_at_least<Acc>(k - 1, in_size, out_size);
  range.end = first_output_at_least<Acc>(k + 1, in_size, out_size);
  return range;
}

// The weight with which the output of tap t reads low index k (both when i0 == i1 == k).
template <typename Acc, typename Index>
__device__ inline Acc weight_of(const LinearTap<Acc, Index>& t, Index k) {
  return (t.i0 == k ? t.w0 : Acc(0)) + (t.i1 == k ? t.w1 : Acc(0));
}

constexpr int kGatherColumns = 4;  // a 2x upsampling's outputs per low column

// The gradient of low pixel (j, k): the sum of wy(y) * wx(x) * grad[y][x] over the output rows
// `rows` and columns `cols` reading it. Columns go kGatherColumns at a time, their weights kept in
// registers across the rows.
template <typename Acc, typename T, typename Index>
__device__ inline Acc gather_low_pixel(const T* __restrict__ grad, Index j, Index k, OutputRange<Index> rows,
                                       OutputRange<Index> cols, Index H, Index W, Index h, Index w) {
  Acc total = Acc(0);
  if (rows.begin == rows.end) return total;
  for (Index x0 = cols.begin; x0 < cols.end; x0 += kGatherColumns) {
    Acc wx[kGatherColumns];
#pragma unroll
    for (int i = 0; i < kGatherColumns; ++i) {
      wx[i] = x0 + i < cols.end ? weight_of(linear_tap<Acc, Index>(x0 + i, w, W), k) : Acc(0);
    }
    const T* g = grad + static_cast<int64_t>(rows.begin) * W + x0;
    for (Index y = rows.begin; y < rows.end; ++y, g += W) {
      Acc sum = Acc(0);
#pragma unroll
      for (int i = 0; i < kGatherColumns; ++i) {
        if (x0 + i < cols.end) sum += wx[i] * static_cast<Acc>(g[i]);
      }
      total += weight_of(linear_tap<Acc, Index>(y, h, H), j) * sum;
    }
  }
  return total;
}

// grad: planes x H x W; grad_low: planes x h x w, every element written.
template <typename T, typename Acc, typename Index>
__global__ void upsample_add_backward_low_kernel(const T* __restrict__ grad, T* __restrict__ grad_low,
                                                 int64_t planes, Index H, Index W, Index h, Index w) {
  for (int64_t row = block_row(); row < h; row += grid_rows()) {
    const Index j = static_cast<Index>(row);
    const OutputRange<Index> rows = outputs_reading<Acc>(j, h, H);
    for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
      const T* grad_plane = grad + plane * H * W;
      T* out = grad_low + (plane * h + j) * w;
      for (Index k = threadIdx.x; k < w; k += blockDim.x) {
        const OutputRange<Index> cols = outputs_reading<Acc>(k, w, W);
        out[k] = static_cast<T>(gather_low_pixel<Acc>(grad_plane, j, k, rows, cols, H, W, h, w));
      }
    }
  }
}

}  // namespace kernels
}  // namespace nasfast
