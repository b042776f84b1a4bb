// CUDA kernels of the streaming confusion matrix. Each block counts into a K x K histogram in
// shared memory when it fits (`shared_counts`), and adds it to the int64 matrix once at the end;
// otherwise every pixel adds to the matrix directly. The host launches about one block per
// resident slot, no more, as each block's flush costs K x K global atomics.
// Blocks must have a multiple of 32 threads: whole warps count together (count_cell).
#pragma once
#include "confusion.h"
#include "cuda_common.cuh"

namespace nasfast {
namespace kernels {

constexpr int kWarpSize = 32;
// Threads per block, at most. The logits kernel asks for two such blocks per SM, which caps it at
// 64 registers a thread (64K per SM from sm_62 to sm_90) and keeps half the SM's threads busy.
constexpr int kConfusionThreads = 512;
static_assert(kConfusionThreads % kWarpSize == 0, "count_cell needs whole warps");

__device__ inline unsigned int lane_id() { return threadIdx.x % kWarpSize; }

// Counts one cell of the histogram per lane, or nothing where cell < 0. Every lane of the warp
// must call it (the loops that call it step whole warps together). Labels and predictions come
// in large regions, so a warp's lanes often hit the same cell: from sm_70 on, one lane adds the
// whole group instead of up to 32 atomics serialised on one address.
__device__ inline void count_cell(unsigned int* local, unsigned long long* counts, long long cell,
                                  bool shared_counts) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  const unsigned int same = __match_any_sync(0xffffffffu, cell);
  if (cell < 0 || lane_id() != static_cast<unsigned int>(__ffs(same) - 1)) return;
  const unsigned int count = __popc(same);
#else
  if (cell < 0) return;
  const unsigned int count = 1u;
#endif
  if (shared_counts) {
    atomicAdd(local + cell, count);
  } else {
    atomicAdd(counts + cell, static_cast<unsigned long long>(count));
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
// blockIdx.y runs over images and blockIdx.x over bands of consecutive rows, threadIdx.x along a
// row: no thread divides to find its pixel, each row's vertical tap is computed once, and the
// rows of a band read the same logit rows, so these stay in L1.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kConfusionThreads, 2)
    confusion_from_logits_kernel(const T* __restrict__ logits, const int64_t* __restrict__ target,
                                 unsigned long long* counts, int64_t N, int64_t K, int64_t h, int64_t w, int64_t H,
                                 int64_t W, int64_t ignore_index, bool shared_counts) {
  NASFAST_DYNAMIC_SHARED(unsigned int, local);
  if (shared_counts) zero_local(local, K * K);
  const bool same_size = h == H && w == W;
  const int64_t band = (H + gridDim.x - 1) / gridDim.x;
  const int64_t y_begin = blockIdx.x * band;
  const int64_t y_end = y_begin + band < H ? y_begin + band : H;
  const int64_t warp_begin = threadIdx.x - lane_id();
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const T* image = logits + n * K * h * w;
    for (int64_t y = y_begin; y < y_end; ++y) {
      const int64_t* labels = target + (n * H + y) * W;
      const LinearTap<Acc> ty = linear_tap<Acc>(y, h, H);
      // x0 is the same for the whole warp, so all its lanes take every step (count_cell).
      for (int64_t x0 = warp_begin; x0 < W; x0 += blockDim.x) {
        const int64_t x = x0 + lane_id();
        const int64_t label = x < W ? labels[x] : ignore_index;  // lanes past the row's end count nothing
        long long cell = -1;
        if (label != ignore_index) {
          const int64_t pred = same_size ? argmax_at<Acc>(image, K, h * w, y * W + x)
                                         : upsampled_argmax<Acc>(image, K, h, w, ty, linear_tap<Acc>(x, w, W));
          cell = label * K + pred;
        }
        count_cell(local, counts, cell, shared_counts);
      }
    }
  }
  if (shared_counts) flush_local(local, counts, K * K);
}

// pred and target: n values each.
template <typename Label>
__global__ void confusion_from_labels_kernel(const Label* __restrict__ pred, const Label* __restrict__ target,
                                             unsigned long long* counts, int64_t n, int64_t K, int64_t ignore_index,
                                             bool shared_counts) {
  NASFAST_DYNAMIC_SHARED(unsigned int, local);
  if (shared_counts) zero_local(local, K * K);
  // A grid-stride loop over whole warps: i0, the warp's first index, decides for all its lanes.
  for (int64_t i0 = global_thread() - lane_id(); i0 < n; i0 += grid_threads()) {
    const int64_t i = i0 + lane_id();
    const int64_t label = i < n ? static_cast<int64_t>(target[i]) : ignore_index;
    const long long cell = label != ignore_index ? label * K + static_cast<int64_t>(pred[i]) : -1;
    count_cell(local, counts, cell, shared_counts);
  }
  if (shared_counts) flush_local(local, counts, K * K);
}

// Flags in *bad the value errors of an update, in one pass: kBadTarget for a target value outside
// [0, K) other than ignore_index, kBadPrediction for a prediction outside [0, K) where the
// target is counted (pred may be null: logits have no such error).
constexpr int kBadTarget = 1, kBadPrediction = 2;

__global__ void find_bad_values_kernel(const int64_t* __restrict__ target, const int64_t* __restrict__ pred,
                                       int64_t n, int64_t K, int64_t ignore_index, int* bad) {
  int found = 0;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t label = target[i];
    if (label == ignore_index) continue;
    if (label < 0 || label >= K) found |= kBadTarget;
    if (pred != nullptr && (pred[i] < 0 || pred[i] >= K)) found |= kBadPrediction;
  }
  if (found) atomicOr(bad, found);
}

}  // namespace kernels
}  // namespace nasfast
