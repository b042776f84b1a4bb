// CUDA kernels of the streaming confusion matrix. Each block counts into a K x K histogram in
// shared memory when it fits (`shared_counts`), and adds it to the int64 matrix once at the end;
// otherwise every pixel adds to the matrix directly. Values out of range are flagged, not
// counted; the host then restores the matrix and raises. The host launches about one block per
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

// The value errors of an update, which the kernels flag in *bad (and do not count): kBadTarget
// for a target value outside [0, K) other than ignore_index, kBadPrediction for a prediction
// outside [0, K) where the target is counted.
constexpr int kBadTarget = 1, kBadPrediction = 2;

__device__ inline void flag_bad(int* bad, int found) {
  if (found) atomicOr(bad, found);
}

// The rows [begin, end) of H that block blockIdx.x of gridDim.x takes.
struct Band {
  int64_t begin, end;
};

__device__ inline Band row_band(int64_t H) {
  const int64_t band = (H + gridDim.x - 1) / gridDim.x;
  const int64_t begin = blockIdx.x * band;
  return {begin, begin + band < H ? begin + band : H};
}

// logits: N x K x h x w; target: N x H x W; counts: K x K (row = label).
// blockIdx.y runs over images and blockIdx.x over bands of consecutive rows, threadIdx.x along a
// row: no thread divides to find its pixel, and the rows of a band read the same logit rows, so
// these stay in L1. The general kernel; the staged one below is faster where it applies.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kConfusionThreads, 2)
    confusion_from_logits_kernel(const T* __restrict__ logits, const int64_t* __restrict__ target,
                                 unsigned long long* counts, int64_t N, int64_t K, int64_t h, int64_t w, int64_t H,
                                 int64_t W, int64_t ignore_index, bool shared_counts, int* bad) {
  unsigned int* local = dynamic_shared<unsigned int>();
  if (shared_counts) zero_local(local, K * K);
  const bool same_size = h == H && w == W;
  const Band rows = row_band(H);
  const int64_t warp_begin = threadIdx.x - lane_id();
  int found = 0;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const T* image = logits + n * K * h * w;
    for (int64_t y = rows.begin; y < rows.end; ++y) {
      const int64_t* labels = target + (n * H + y) * W;
      const LinearTap<Acc> ty = linear_tap<Acc>(y, h, H);
      // x0 is the same for the whole warp, so all its lanes take every step (count_cell).
      for (int64_t x0 = warp_begin; x0 < W; x0 += blockDim.x) {
        const int64_t x = x0 + lane_id();
        const int64_t label = x < W ? labels[x] : ignore_index;  // lanes past the row's end count nothing
        long long cell = -1;
        if (label != ignore_index && (label < 0 || label >= K)) {
          found = kBadTarget;
        } else if (label != ignore_index) {
          const int64_t pred = same_size ? argmax_at<Acc>(image, K, h * w, y * W + x)
                                         : upsampled_argmax<Acc>(image, K, h, w, ty, linear_tap<Acc>(x, w, W));
          cell = label * K + pred;
        }
        count_cell(local, counts, cell, shared_counts);
      }
    }
  }
  if (shared_counts) flush_local(local, counts, K * K);
  flag_bad(bad, found);
}

// The argmax over the K classes at one column, from the K rows `staged` (K x w, already blended
// between the two low rows of the label row) at the column's taps tx.
template <typename Acc>
__device__ inline int staged_argmax(const Acc* staged, int K, int w, const LinearTap<Acc, int>& tx) {
  int best = 0;
  Acc best_value = Acc(0);
  for (int k = 0; k < K; ++k) {
    const Acc v = tx.w0 * staged[k * w + tx.i0] + tx.w1 * staged[k * w + tx.i1];
    if (k == 0 || v > best_value || (v != v && best_value == best_value)) {  // as upsampled_argmax
      best = k;
      best_value = v;
    }
  }
  return best;
}

// Bytes of dynamic shared memory the staged kernel needs: the staged rows, then the counts.
inline int64_t staged_shared_bytes(int64_t K, int64_t w, int64_t acc_bytes, bool shared_counts) {
  return K * w * acc_bytes + (shared_counts ? K * K * 4 : 0);
}

// The logits kernel when the logits are upsampled and K x w blended values fit in shared memory
// (the host checks, and that h * w and H * W fit in int): for each label row, the block first
// blends the two low rows it reads, for every class (the interpolation along y, K x w values),
// then each thread interpolates along x from them: two shared loads a class and pixel, instead
// of four loads of the logits and a 64-bit index for each. Same grid as the general kernel.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kConfusionThreads, 2)
    confusion_from_staged_rows_kernel(const T* __restrict__ logits, const int64_t* __restrict__ target,
                                      unsigned long long* counts, int N, int K, int h, int w, int H, int W,
                                      int64_t ignore_index, bool shared_counts, int* bad) {
  Acc* staged = dynamic_shared<Acc>();
  unsigned int* local = reinterpret_cast<unsigned int*>(staged + K * w);
  if (shared_counts) zero_local(local, K * K);
  const Band rows = row_band(H);
  const int warp_begin = static_cast<int>(threadIdx.x - lane_id());
  int found = 0;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    const T* image = logits + static_cast<int64_t>(n) * K * h * w;
    for (int y = static_cast<int>(rows.begin); y < rows.end; ++y) {
      const LinearTap<Acc, int> ty = linear_tap<Acc, int>(y, h, H);
      __syncthreads();  // every thread is done with the previous row's values
      for (int i = threadIdx.x; i < K * w; i += blockDim.x) {
        const int k = i / w, x = i - k * w;
        const T* plane = image + static_cast<int64_t>(k) * h * w;
        staged[i] = ty.w0 * static_cast<Acc>(plane[ty.i0 * w + x]) + ty.w1 * static_cast<Acc>(plane[ty.i1 * w + x]);
      }
      __syncthreads();
      const int64_t* labels = target + (static_cast<int64_t>(n) * H + y) * W;
      for (int x0 = warp_begin; x0 < W; x0 += blockDim.x) {  // whole warps, as in the general kernel
        const int x = x0 + static_cast<int>(lane_id());
        const int64_t label = x < W ? labels[x] : ignore_index;
        long long cell = -1;
        if (label != ignore_index && (label < 0 || label >= K)) {
          found = kBadTarget;
        } else if (label != ignore_index) {
          cell = label * K + staged_argmax(staged, K, w, linear_tap<Acc, int>(x, w, W));
        }
        count_cell(local, counts, cell, shared_counts);
      }
    }
  }
  if (shared_counts) flush_local(local, counts, K * K);
  flag_bad(bad, found);
}

// pred and target: n values each.
template <typename Label>
__global__ void confusion_from_labels_kernel(const Label* __restrict__ pred, const Label* __restrict__ target,
                                             unsigned long long* counts, int64_t n, int64_t K, int64_t ignore_index,
                                             bool shared_counts, int* bad) {
  unsigned int* local = dynamic_shared<unsigned int>();
  if (shared_counts) zero_local(local, K * K);
  int found = 0;
  // A grid-stride loop over whole warps: i0, the warp's first index, decides for all its lanes.
  for (int64_t i0 = global_thread() - lane_id(); i0 < n; i0 += grid_threads()) {
    const int64_t i = i0 + lane_id();
    const int64_t label = i < n ? static_cast<int64_t>(target[i]) : ignore_index;
    long long cell = -1;
    if (label != ignore_index) {
      const int64_t p = static_cast<int64_t>(pred[i]);
      const bool bad_label = label < 0 || label >= K, bad_pred = p < 0 || p >= K;
      found |= (bad_label ? kBadTarget : 0) | (bad_pred ? kBadPrediction : 0);
      if (!bad_label && !bad_pred) cell = label * K + p;
    }
    count_cell(local, counts, cell, shared_counts);
  }
  if (shared_counts) flush_local(local, counts, K * K);
  flag_bad(bad, found);
}

}  // namespace kernels
}  // namespace nasfast
