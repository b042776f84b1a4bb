// CUDA kernels of the separable convolution (see separable.h for the fusion choices).
#pragma once
#include <type_traits>

#include "cuda_common.cuh"
#include "separable.h"

namespace nasfast {
namespace kernels {

// Forward, fused. A block owns kTilePixels consecutive pixels of one image and a tile of output
// channels (sep_tile_out: 16 to 64, so that 48 channels fill it); it walks the input channels
// kTileIn at a time (16: no empty half-tile at 48 channels): the depthwise outputs of those
// channels over its pixels go to shared memory, with the matching slice of the pointwise
// weights, and each thread accumulates a 4 x 4 register tile (4 output channels x 4 consecutive
// pixels: 16 FMAs per two 4-wide shared loads; one output per thread was load-bound), written
// with 4-wide stores. The block has kPixelLanes threads per 4 output channels of its tile. The pointwise sum runs over the channels in
// ascending order, as the reference's. Indices within a plane are 32-bit (the host checks
// H * W < 2^31); offsets of planes are 64-bit.
constexpr int kTilePixels = 64, kMaxTileOut = 64, kTileIn = 16;
constexpr int kPixelLanes = kTilePixels / 4, kSepThreads = kPixelLanes * (kMaxTileOut / 4);

// The output channels of a block's tile: Cout rounded up to a multiple of 16, at most kMaxTileOut.
// Its threads, kPixelLanes * tile / 4, are then a multiple of kTilePixels.
inline int sep_tile_out(int64_t Cout) {
  const int64_t rounded = (Cout + 15) / 16 * 16;
  return static_cast<int>(rounded < kMaxTileOut ? rounded : kMaxTileOut);
}

// Calls f with the kernel size as a compile-time constant (std::integral_constant): 3 and 5, the
// search space's, whose taps the kernels unroll; 0 for any other size. Returns what f returns.
template <typename F>
auto with_kernel_size(int64_t k, F f) -> decltype(f(std::integral_constant<int, 0>())) {
  if (k == 3) return f(std::integral_constant<int, 3>());
  if (k == 5) return f(std::integral_constant<int, 5>());
  return f(std::integral_constant<int, 0>());
}

static_assert(kPixelLanes * 16 / 4 % kTilePixels == 0, "each thread keeps one pixel of the tile");

// The depthwise output at (y, x) of one plane (or, with kInputGrad, the input gradient gathered
// from the output gradient), with K, the kernel size, known at compile time: the taps unroll,
// each a load and an FMA behind an unsigned bounds test, in 32-bit indices (the hosts check that
// H * W fits). The taps of depthwise_at and depthwise_input_grad_at (separable.h), in their order.
template <int K, bool kInputGrad, typename Acc, typename T>
__device__ inline Acc depthwise_taps(const T* __restrict__ plane, const T* __restrict__ weight, int H, int W, int d,
                                     int y, int x) {
  constexpr int r = K / 2;
  const int step = kInputGrad ? -d : d;
  Acc sum = Acc(0);
#pragma unroll
  for (int ky = 0; ky < K; ++ky) {
    const int iy = y + (ky - r) * step;
    if (static_cast<unsigned int>(iy) >= static_cast<unsigned int>(H)) continue;
    const T* row = plane + iy * W;
#pragma unroll
    for (int kx = 0; kx < K; ++kx) {
      const int ix = x + (kx - r) * step;
      if (static_cast<unsigned int>(ix) < static_cast<unsigned int>(W)) {
        sum += static_cast<Acc>(weight[ky * K + kx]) * static_cast<Acc>(row[ix]);
      }
    }
  }
  return sum;
}

// depthwise_taps for the sizes the search space uses (K = 3 or 5); any size k with K = 0.
template <int K, bool kInputGrad, typename Acc, typename T>
__device__ inline Acc depthwise_value(const T* plane, const T* weight, int H, int W, int k, int d, int y, int x) {
  if (K > 0) return depthwise_taps<(K > 0 ? K : 1), kInputGrad, Acc>(plane, weight, H, W, d, y, x);
  return kInputGrad ? depthwise_input_grad_at<Acc>(plane, weight, H, W, k, d, y, x)
                    : depthwise_at<Acc>(plane, weight, H, W, k, d, y, x);
}

// Four consecutive values, read or written as one vector access (of at most 16 bytes).
template <typename V>
struct alignas(4 * sizeof(V) < 16 ? 4 * sizeof(V) : 16) Quad {
  V v[4];
};

// Whether a depthwise kernel computes four pixels of a row per thread (depthwise_quad): the
// kernel sizes whose taps unroll, on rows of a multiple of four pixels (no quad straddles two).
__host__ __device__ inline bool depthwise_quads(int64_t k, int64_t W) { return (k == 3 || k == 5) && W % 4 == 0; }

// The K + 3 values of `row` from x - K / 2 on, zero outside [0, W): every input the taps of
// dilation 1 read for the four pixels x .. x + 3.
template <int K, typename T, typename Acc>
__device__ inline void row_inputs(const T* __restrict__ row, int x, int W, Acc (&inputs)[K + 3]) {
#pragma unroll
  for (int m = 0; m < K + 3; ++m) {
    const int ix = x - K / 2 + m;
    inputs[m] = static_cast<unsigned int>(ix) < static_cast<unsigned int>(W) ? static_cast<Acc>(row[ix]) : Acc(0);
  }
}

// depthwise_taps at the four pixels (y, x + j), j < 4, of one row (x + 3 < W): each weight is
// loaded once for the four and, at dilation 1, each input once per row of taps (K + 3 loads
// where one pixel at a time took 4 K). Each pixel's taps are summed in depthwise_taps's order;
// at dilation 1 the taps outside the plane add weight x 0 rather than nothing (as a convolution
// over zero padding does).
template <int K, bool kInputGrad, typename Acc, typename T>
__device__ inline void depthwise_quad(const T* __restrict__ plane, const T* __restrict__ weight, int H, int W, int d,
                                      int y, int x, Acc (&sum)[4]) {
  constexpr int r = K / 2, sign = kInputGrad ? -1 : 1;
#pragma unroll
  for (int j = 0; j < 4; ++j) sum[j] = Acc(0);
#pragma unroll
  for (int ky = 0; ky < K; ++ky) {
    const int iy = y + (ky - r) * sign * d;
    if (static_cast<unsigned int>(iy) >= static_cast<unsigned int>(H)) continue;
    const T* row = plane + iy * W;
    if (d == 1) {
      Acc inputs[K + 3];
      row_inputs<K>(row, x, W, inputs);
#pragma unroll
      for (int kx = 0; kx < K; ++kx) {
        const Acc w = static_cast<Acc>(weight[ky * K + kx]);
#pragma unroll
        for (int j = 0; j < 4; ++j) sum[j] += w * inputs[r + (kx - r) * sign + j];
      }
    } else {
#pragma unroll
      for (int kx = 0; kx < K; ++kx) {
        const Acc w = static_cast<Acc>(weight[ky * K + kx]);
        const int x0 = x + (kx - r) * sign * d;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (static_cast<unsigned int>(x0 + j) < static_cast<unsigned int>(W)) {
            sum[j] += w * static_cast<Acc>(row[x0 + j]);
          }
        }
      }
    }
  }
}

// The depthwise outputs of channels [c0, c0 + kTileIn) at the tile's pixels. Each thread keeps
// one pixel, q at (y, x), and steps over the channels.
template <int K, typename T, typename Acc>
__device__ inline void load_depthwise_tile(Quad<Acc> (*band)[kTilePixels / 4], const T* image, const T* depthwise,
                                           int c0, int C, int q, int y, int x, int H, int W, int k, int d) {
  const int p = threadIdx.x % kTilePixels, channel_step = blockDim.x / kTilePixels;
  for (int i = threadIdx.x / kTilePixels; i < kTileIn; i += channel_step) {
    const int c = c0 + i;
    band[i][p / 4].v[p % 4] = c < C && q < H * W
                                  ? depthwise_value<K, false, Acc>(image + static_cast<int64_t>(c) * H * W,
                                                                   depthwise + c * k * k, H, W, k, d, y, x)
                                  : Acc(0);
  }
}

// The same with depthwise_quad (depthwise_quads(K, W)): the tile's kTilePixels / 4 quads of
// kTileIn channels, one (channel, quad) after another per thread, consecutive threads on
// consecutive quads.
template <int K, typename T, typename Acc>
__device__ inline void load_depthwise_quads(Quad<Acc> (*band)[kTilePixels / 4], const T* image, const T* depthwise,
                                            int c0, int C, int p0, int H, int W, int d) {
  constexpr int kQuads = kTilePixels / 4;
  for (int i = threadIdx.x; i < kTileIn * kQuads; i += blockDim.x) {
    const int c = c0 + i / kQuads, q = p0 + i % kQuads * 4;
    Quad<Acc> values = {};
    if (c < C && q < H * W) {
      const int y = q / W;
      depthwise_quad<K, false>(image + static_cast<int64_t>(c) * H * W, depthwise + c * K * K, H, W, d, y, q - y * W,
                               values.v);
    }
    band[i / kQuads][i % kQuads] = values;
  }
}

template <typename T, typename Acc>
__device__ inline void load_pointwise_tile(Quad<Acc> (*weight)[kMaxTileOut / 4], const T* pointwise, int c0, int C,
                                           int co0, int Cout, int tile_out) {
  for (int i = threadIdx.x; i < kTileIn * tile_out; i += blockDim.x) {
    const int c = c0 + i / tile_out, co = i % tile_out;
    weight[i / tile_out][co / 4].v[co % 4] =
        c < C && co0 + co < Cout ? static_cast<Acc>(pointwise[(co0 + co) * C + c]) : Acc(0);
  }
}

// Output channel co's four pixels from q on: one vector store where the plane allows it.
template <bool kBiasRelu, typename T, typename Acc>
__device__ inline void store_quad(T* plane, const Acc (&acc)[4], const T* bias, int co, int q, int HW,
                                  bool vector_stores) {
  Quad<T> values;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    Acc value = acc[j];
    if (kBiasRelu) {
      value += static_cast<Acc>(bias[co]);
      value = value < Acc(0) ? Acc(0) : value;
    }
    values.v[j] = static_cast<T>(value);
  }
  if (vector_stores && q + 3 < HW) {
    *reinterpret_cast<Quad<T>*>(plane + q) = values;
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (q + j < HW) plane[q + j] = values.v[j];
  }
}

// kQuads: the depthwise tile by load_depthwise_quads (the host checks depthwise_quads(K, W)). A
// kernel of its own: with both loaders in one, ptxas 12.9 crashed on the 5 x 5 kernel.
template <typename T, typename Acc, bool kBiasRelu, int K, bool kQuads>
__global__ void __launch_bounds__(kSepThreads)
    sep_conv_forward_kernel(const T* __restrict__ x, const T* __restrict__ depthwise,
                            const T* __restrict__ pointwise, const T* __restrict__ bias, T* __restrict__ out, int N,
                            int C, int Cout, int H, int W, int k, int d) {
  __shared__ Quad<Acc> band[kTileIn][kTilePixels / 4];
  __shared__ Quad<Acc> weight[kTileIn][kMaxTileOut / 4];
  const int tile_out = blockDim.x / kPixelLanes * 4;
  const int HW = H * W, p0 = blockIdx.x * kTilePixels, co0 = blockIdx.y * tile_out;
  // Thread (lane_p, lane_co) computes output channels co0 + 4 lane_co + [0, 4) at pixels p0 + 4 lane_p + [0, 4).
  const int lane_p = threadIdx.x % kPixelLanes, lane_co = threadIdx.x / kPixelLanes;
  const int q = p0 + static_cast<int>(threadIdx.x % kTilePixels), qy = q / W, qx = q - qy * W;
  // Every plane starts at a multiple of four values (and `out` at a vector's alignment).
  const bool vector_stores = HW % 4 == 0 && reinterpret_cast<uintptr_t>(out) % alignof(Quad<T>) == 0;
  static_assert(!kQuads || K > 0, "quads need the kernel size at compile time");
  for (int n = blockIdx.z; n < N; n += gridDim.z) {
    const T* image = x + static_cast<int64_t>(n) * C * HW;
    Acc acc[4][4] = {};
    for (int c0 = 0; c0 < C; c0 += kTileIn) {
      if (kQuads) {
        load_depthwise_quads<(K > 0 ? K : 3), T, Acc>(band, image, depthwise, c0, C, p0, H, W, d);
      } else {
        load_depthwise_tile<K, T, Acc>(band, image, depthwise, c0, C, q, qy, qx, H, W, k, d);
      }
      load_pointwise_tile<T, Acc>(weight, pointwise, c0, C, co0, Cout, tile_out);
      __syncthreads();
#pragma unroll 8
      for (int c = 0; c < kTileIn; ++c) {
        const Quad<Acc> b = band[c][lane_p], w = weight[c][lane_co];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += w.v[i] * b.v[j];
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int co = co0 + lane_co * 4 + i;
      if (co < Cout) {
        store_quad<kBiasRelu>(out + (static_cast<int64_t>(n) * Cout + co) * HW, acc[i], bias, co, p0 + lane_p * 4,
                              HW, vector_stores);
      }
    }
  }
}

template <typename T>
using SepConvForwardKernel = void (*)(const T*, const T*, const T*, const T*, T*, int, int, int, int, int, int, int);

// The forward kernel for with_kernel_size's constant K on rows of W pixels; any size below.
template <typename T, typename Acc, bool kBiasRelu, int K>
SepConvForwardKernel<T> sep_conv_forward_for(std::integral_constant<int, K>, int64_t W) {
  return depthwise_quads(K, W) ? sep_conv_forward_kernel<T, Acc, kBiasRelu, K, true>
                               : sep_conv_forward_kernel<T, Acc, kBiasRelu, K, false>;
}

template <typename T, typename Acc, bool kBiasRelu>
SepConvForwardKernel<T> sep_conv_forward_for(std::integral_constant<int, 0>, int64_t) {
  return sep_conv_forward_kernel<T, Acc, kBiasRelu, 0, false>;
}

// The depthwise kernel below takes one plane per blockIdx.y (looping when there are more than
// the grid holds) and its pixels along x, so a pixel's row and column come from one 32-bit
// division.

// out = depthwise(in), or with kInputGrad the depthwise input gradient gathered from the output
// gradient `in` (no atomics); both planes x H x W, the plane's channel is plane % C.
// With depthwise_quads(k, W), each thread takes four pixels of a row at a time (depthwise_quad)
// and writes them with one vector store where `out` is aligned for it: the grid's x then needs a
// quarter of the threads.
template <typename T, typename Acc, bool kInputGrad, int K>
__global__ void depthwise_planes_kernel(const T* __restrict__ in, const T* __restrict__ depthwise, T* __restrict__ out,
                                        int planes, int C, int H, int W, int k, int d) {
  const int HW = H * W;
  const bool quads = depthwise_quads(K, W);
  const bool vector_stores = reinterpret_cast<uintptr_t>(out) % alignof(Quad<T>) == 0;
  for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const int64_t offset = static_cast<int64_t>(plane) * HW;
    const T* weight = depthwise + (plane % C) * k * k;
    if (quads) {
      for (int q = (blockIdx.x * blockDim.x + threadIdx.x) * 4; q < HW; q += gridDim.x * blockDim.x * 4) {
        const int y = q / W;
        Acc sum[4];
        depthwise_quad<(K > 0 ? K : 3), kInputGrad>(in + offset, weight, H, W, d, y, q - y * W, sum);
        store_quad<false>(out + offset, sum, static_cast<const T*>(nullptr), 0, q, HW, vector_stores);
      }
      continue;
    }
    for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < HW; q += gridDim.x * blockDim.x) {
      const int y = q / W, x = q % W;
      out[offset + q] = static_cast<T>(depthwise_value<K, kInputGrad, Acc>(in + offset, weight, H, W, k, d, y, x));
    }
  }
}

template <typename Acc>
__device__ inline Acc warp_sum(Acc value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;
}

// Adds to sums[tap] the four output gradients g[0..3] at pixels q.. q + 3 (one row) times the
// inputs of `plane` that each tap read for them.
template <int K, typename T, typename Acc>
__device__ inline void weight_grad_quad(const T* __restrict__ g, const T* __restrict__ plane, int H, int W, int d,
                                        int q, Acc (&sums)[K * K]) {
  constexpr int r = K / 2;
  const int y = q / W, x = q - y * W;
  Acc grads[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) grads[j] = static_cast<Acc>(g[j]);
#pragma unroll
  for (int ky = 0; ky < K; ++ky) {
    const int iy = y + (ky - r) * d;
    if (static_cast<unsigned int>(iy) >= static_cast<unsigned int>(H)) continue;
    const T* row = plane + iy * W;
    if (d == 1) {
      Acc inputs[K + 3];
      row_inputs<K>(row, x, W, inputs);
#pragma unroll
      for (int kx = 0; kx < K; ++kx) {
#pragma unroll
        for (int j = 0; j < 4; ++j) sums[ky * K + kx] += grads[j] * inputs[kx + j];
      }
    } else {
#pragma unroll
      for (int kx = 0; kx < K; ++kx) {
        const int x0 = x + (kx - r) * d;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (static_cast<unsigned int>(x0 + j) < static_cast<unsigned int>(W)) {
            sums[ky * K + kx] += grads[j] * static_cast<Acc>(row[x0 + j]);
          }
        }
      }
    }
  }
}

// grad_depthwise[c, tap] += sum of gy * the input pixel that tap read, over every image and the
// pixels [blockIdx.y * span, (blockIdx.y + 1) * span) of channel c = blockIdx.x. The K x K sums
// stay in registers, so gy and x are read once per block (their taps' neighbours from cache),
// not once per tap; each warp adds its sums to grad_depthwise (an Acc buffer, zeroed) atomically.
// Where depthwise_quads(K, W), a thread takes four pixels of a row at a time (and span must be a
// multiple of 4): at dilation 1 it reads K + 3 inputs per row of taps instead of 4 K.
template <typename T, typename Acc, int K>
__global__ void depthwise_weight_grad_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                             Acc* __restrict__ grad_depthwise, int N, int C, int H, int W, int d,
                                             int span) {
  const int HW = H * W, c = blockIdx.x, r = K / 2;
  const int begin = blockIdx.y * span, end = begin + span < HW ? begin + span : HW;
  const bool quads = depthwise_quads(K, W);
  Acc sums[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) sums[t] = Acc(0);
  for (int n = 0; n < N; ++n) {
    const int64_t offset = (static_cast<int64_t>(n) * C + c) * HW;
    if (quads) {
      for (int q = begin + 4 * threadIdx.x; q < end; q += 4 * blockDim.x) {
        weight_grad_quad<K>(gy + offset + q, x + offset, H, W, d, q, sums);
      }
      continue;
    }
    for (int q = begin + threadIdx.x; q < end; q += blockDim.x) {
      const int y = q / W, xx = q % W;
      const Acc g = static_cast<Acc>(gy[offset + q]);
#pragma unroll
      for (int ky = 0; ky < K; ++ky) {
        const int iy = y + (ky - r) * d;
        if (iy < 0 || iy >= H) continue;
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
          const int ix = xx + (kx - r) * d;
          if (ix >= 0 && ix < W) sums[ky * K + kx] += g * static_cast<Acc>(x[offset + iy * W + ix]);
        }
      }
    }
  }
  // blockDim.x is a multiple of 32 (the host launches kThreads), so every lane takes part.
#pragma unroll
  for (int t = 0; t < K * K; ++t) {
    const Acc total = warp_sum(sums[t]);
    if (threadIdx.x % 32 == 0) atomic_add(grad_depthwise + c * K * K + t, total);
  }
}

// The same for any kernel size, one block per (channel, tap), for sizes other than 3 and 5
// (the search space has none; kept so that the op takes any size).
template <typename T, typename Acc>
__global__ void depthwise_weight_grad_any_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                                 Acc* __restrict__ grad_depthwise, int N, int C, int H, int W,
                                                 int k, int d) {
  __shared__ Acc partial[kThreads];
  const int c = blockIdx.x, tap = blockIdx.y, HW = H * W, r = k / 2;
  const int dy = (tap / k - r) * d, dx = (tap % k - r) * d;
  Acc sum = Acc(0);
  for (int n = 0; n < N; ++n) {
    const int64_t offset = (static_cast<int64_t>(n) * C + c) * HW;
    for (int q = threadIdx.x; q < HW; q += blockDim.x) {
      const int iy = q / W + dy, ix = q % W + dx;
      if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
        sum += static_cast<Acc>(gy[offset + q]) * static_cast<Acc>(x[offset + iy * W + ix]);
      }
    }
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_depthwise[c * k * k + tap] = partial[0];
}

}  // namespace kernels
}  // namespace nasfast
