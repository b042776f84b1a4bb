// CUDA kernels of the streaming confusion matrix. Each block counts into a K x K histogram in
// shared memory when it fits (`shared_counts`), and adds it to the int64 matrix once at the end;
// otherwise every pixel adds to the matrix directly.
#pragma once
#include "confusion.h"
#include "cuda_common.cuh"

namespace nasfast {
namespace kernels {

__device__ inline void count_pair(unsigned int* local, unsigned long long* counts, int64_t cell, bool shared_counts) {
  if (shared_counts) {
    atomicAdd(local + cell, 1u);
  } else {
    atomicAdd(counts + cell, 1ull);
  }
}

__device__ inline void zero_local(unsigned int* local, int64_t cells) {
  for (int64_t i = threadIdx.x; i < cells; i += blockDim.x) local[i] = 0u;
  __syncthreads();
}

__device__ inline void flush_local(const unsigned int* local, unsigned long long* counts, int64_t cells) {
  __syncthreads();
  for (int64_t i = threadIdx.x; i < cells; i += blockDim.x) {
    if (local[i]) atomicAdd(counts + i, static_cast<unsigned long long>(local[i]));
  }
}

// logits: N x K x h x w; target: N x H x W; counts: K x K (row = label).
template <typename T, typename Acc>
__global__ void confusion_from_logits_kernel(const T* __restrict__ logits, const int64_t* __restrict__ target,
                                             unsigned long long* counts, int64_t N, int64_t K, int64_t h, int64_t w,
                                             int64_t H, int64_t W, int64_t ignore_index, bool shared_counts) {
  extern __shared__ unsigned int local[];
  if (shared_counts) zero_local(local, K * K);
  const int64_t total = N * H * W;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t label = target[i];
    if (label == ignore_index) continue;
    const int64_t x = i % W, y = (i / W) % H, n = i / (H * W);
    int64_t pred;
    if (h == H && w == W) {
      pred = argmax_at<Acc>(logits + n * K * h * w, K, h * w, y * W + x);
    } else {
      const LinearTap<Acc> ty = linear_tap<Acc>(y, h, H);
      const LinearTap<Acc> tx = linear_tap<Acc>(x, w, W);
      pred = upsampled_argmax<Acc>(logits + n * K * h * w, K, h, w, ty, tx);
    }
    count_pair(local, counts, label * K + pred, shared_counts);
  }
  if (shared_counts) flush_local(local, counts, K * K);
}

// pred and target: n values each.
template <typename Label>
__global__ void confusion_from_labels_kernel(const Label* __restrict__ pred, const Label* __restrict__ target,
                                             unsigned long long* counts, int64_t n, int64_t K, int64_t ignore_index,
                                             bool shared_counts) {
  extern __shared__ unsigned int local[];
  if (shared_counts) zero_local(local, K * K);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t label = static_cast<int64_t>(target[i]);
    if (label != ignore_index) count_pair(local, counts, label * K + static_cast<int64_t>(pred[i]), shared_counts);
  }
  if (shared_counts) flush_local(local, counts, K * K);
}

}  // namespace kernels
}  // namespace nasfast
