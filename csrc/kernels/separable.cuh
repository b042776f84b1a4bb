// CUDA kernels of the separable convolution (see separable.h for the fusion choices).
#pragma once
#include "cuda_common.cuh"
#include "separable.h"

namespace nasfast {
namespace kernels {

// Forward, fused: a block takes `tile` consecutive pixels of one image (blockIdx.y). It computes
// their depthwise outputs for all C channels into shared memory (C x tile Acc values), then the
// pointwise outputs for all Cout channels from there, with bias + ReLU when kBiasRelu.
template <typename T, typename Acc, bool kBiasRelu>
__global__ void sep_conv_forward_kernel(const T* __restrict__ x, const T* __restrict__ depthwise,
                                        const T* __restrict__ pointwise, const T* __restrict__ bias,
                                        T* __restrict__ out, int64_t C, int64_t Cout, int64_t H, int64_t W, int64_t k,
                                        int64_t d, int64_t tile) {
  extern __shared__ __align__(sizeof(double)) unsigned char shared_bytes[];
  Acc* band = reinterpret_cast<Acc*>(shared_bytes);
  const int64_t HW = H * W, n = blockIdx.y, p0 = blockIdx.x * tile;
  const int64_t count = HW - p0 < tile ? HW - p0 : tile;
  const T* image = x + n * C * HW;
  for (int64_t i = threadIdx.x; i < C * tile; i += blockDim.x) {
    const int64_t c = i / tile, p = i % tile;
    if (p < count) {
      const int64_t q = p0 + p;
      band[i] = depthwise_at<Acc>(image + c * HW, depthwise + c * k * k, H, W, k, d, q / W, q % W);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < Cout * tile; i += blockDim.x) {
    const int64_t co = i / tile, p = i % tile;
    if (p >= count) continue;
    const T* weights = pointwise + co * C;
    Acc sum = Acc(0);
    for (int64_t c = 0; c < C; ++c) sum += static_cast<Acc>(weights[c]) * band[c * tile + p];
    if (kBiasRelu) {
      sum += static_cast<Acc>(bias[co]);
      sum = sum < Acc(0) ? Acc(0) : sum;
    }
    out[(n * Cout + co) * HW + p0 + p] = static_cast<T>(sum);
  }
}

// y = depthwise(x), planes x H x W; the plane's channel is plane % C.
template <typename T, typename Acc>
__global__ void depthwise_forward_kernel(const T* __restrict__ x, const T* __restrict__ depthwise, T* __restrict__ y,
                                         int64_t planes, int64_t C, int64_t H, int64_t W, int64_t k, int64_t d) {
  const int64_t HW = H * W, total = planes * HW;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t plane = i / HW, q = i % HW;
    y[i] = static_cast<T>(depthwise_at<Acc>(x + plane * HW, depthwise + (plane % C) * k * k, H, W, k, d, q / W, q % W));
  }
}

// grad_x from gy (both planes x H x W), gathered: no atomics.
template <typename T, typename Acc>
__global__ void depthwise_input_grad_kernel(const T* __restrict__ gy, const T* __restrict__ depthwise,
                                            T* __restrict__ grad_x, int64_t planes, int64_t C, int64_t H, int64_t W,
                                            int64_t k, int64_t d) {
  const int64_t HW = H * W, total = planes * HW;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t plane = i / HW, q = i % HW;
    grad_x[i] = static_cast<T>(
        depthwise_input_grad_at<Acc>(gy + plane * HW, depthwise + (plane % C) * k * k, H, W, k, d, q / W, q % W));
  }
}

// grad_depthwise[c, tap] = sum over images and pixels of gy * the input pixel that tap read.
// Grid: (C, k * k) blocks of kThreads threads, each block reducing one weight.
template <typename T, typename Acc>
__global__ void depthwise_weight_grad_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                             T* __restrict__ grad_depthwise, int64_t N, int64_t C, int64_t H,
                                             int64_t W, int64_t k, int64_t d) {
  __shared__ Acc partial[kThreads];
  const int64_t c = blockIdx.x, tap = blockIdx.y, HW = H * W, r = k / 2;
  const int64_t dy = (tap / k - r) * d, dx = (tap % k - r) * d;
  Acc sum = Acc(0);
  for (int64_t i = threadIdx.x; i < N * HW; i += blockDim.x) {
    const int64_t n = i / HW, q = i % HW, y = q / W, xx = q % W;
    const int64_t iy = y + dy, ix = xx + dx;
    if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
    const int64_t plane = (n * C + c) * HW;
    sum += static_cast<Acc>(gy[plane + q]) * static_cast<Acc>(x[plane + iy * W + ix]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_depthwise[c * k * k + tap] = static_cast<T>(partial[0]);
}

}  // namespace kernels
}  // namespace nasfast
