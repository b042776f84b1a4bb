#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../checks.h"
#include "../kernels/confusion.cuh"
#include "launch.h"

namespace nasfast {
namespace {

constexpr int64_t kSharedBytes = 48 * 1024;

// How many blocks of `kernel` the current GPU runs at once: the grid's size, as every block
// flushes its histogram with K x K atomics at the end.
template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t shared_bytes) {
  int device = 0, sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes));
  return std::max(1, sms * per_sm);
}

// The logits kernel's grid: images over y, bands of consecutive rows over x, about `blocks` in all.
dim3 logits_grid(int64_t N, int64_t H, int64_t blocks) {
  const int64_t images = std::min<int64_t>({N, blocks, 65535});
  const int64_t band = ceil_div(H, std::max<int64_t>(1, blocks / images));
  return dim3(static_cast<unsigned int>(ceil_div(H, band)), static_cast<unsigned int>(images));
}

// Threads along a row: whole warps, no more than a row needs, so that few idle where rows are short.
int row_threads(int64_t W) {
  return static_cast<int>(
      std::min<int64_t>(kernels::kConfusionThreads, ceil_div(W, kernels::kWarpSize) * kernels::kWarpSize));
}

void update_from_logits(unsigned long long* counts, const at::Tensor& logits, const at::Tensor& target, int64_t K,
                        int64_t ignore_index, bool shared_counts, int* bad) {
  const int64_t N = target.size(0), H = target.size(1), W = target.size(2), h = logits.size(2), w = logits.size(3);
  const int threads = row_threads(W);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "confusion_from_logits_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t staged_bytes = kernels::staged_shared_bytes(K, w, sizeof(acc_t), shared_counts);
    const bool staged = (h != H || w != W) && staged_bytes <= kSharedBytes && N <= INT32_MAX &&
                        h * w <= INT32_MAX && H * W <= INT32_MAX;
    if (staged) {
      const auto kernel = kernels::confusion_from_staged_rows_kernel<scalar_t, acc_t>;
      const dim3 grid = logits_grid(N, H, resident_blocks(kernel, threads, staged_bytes));
      kernel<<<grid, threads, staged_bytes, stream>>>(
          logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), counts, static_cast<int>(N), static_cast<int>(K),
          static_cast<int>(h), static_cast<int>(w), static_cast<int>(H), static_cast<int>(W), ignore_index,
          shared_counts, bad);
    } else {
      const size_t shared_bytes = shared_counts ? K * K * sizeof(unsigned int) : 0;
      const auto kernel = kernels::confusion_from_logits_kernel<scalar_t, acc_t>;
      const dim3 grid = logits_grid(N, H, resident_blocks(kernel, threads, shared_bytes));
      kernel<<<grid, threads, shared_bytes, stream>>>(logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), counts,
                                                      N, K, h, w, H, W, ignore_index, shared_counts, bad);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void update_from_labels(unsigned long long* counts, const at::Tensor& pred, const at::Tensor& target, int64_t K,
                        int64_t ignore_index, bool shared_counts, int* bad) {
  const auto kernel = kernels::confusion_from_labels_kernel<int64_t>;
  const int threads = kernels::kConfusionThreads;
  const size_t shared_bytes = shared_counts ? K * K * sizeof(unsigned int) : 0;
  const int64_t blocks = std::min(ceil_div(target.numel(), threads), resident_blocks(kernel, threads, shared_bytes));
  kernel<<<static_cast<unsigned int>(blocks), threads, shared_bytes, current_stream()>>>(
      pred.data_ptr<int64_t>(), target.data_ptr<int64_t>(), counts, target.numel(), K, ignore_index, shared_counts,
      bad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void confusion_matrix_update_cuda(at::Tensor& matrix, const at::Tensor& scores, const at::Tensor& target_in,
                                  int64_t ignore_index) {
  const at::Tensor target = check_confusion(matrix, scores, target_in, ignore_index);
  const c10::cuda::CUDAGuard guard(matrix.device());
  const int64_t K = matrix.size(0);
  if (target.numel() == 0) return;
  const at::Tensor bad = at::zeros({1}, target.options().dtype(at::kInt));
  const bool shared_counts = K * K * static_cast<int64_t>(sizeof(unsigned int)) <= kSharedBytes;
  const bool logits = at::isFloatingType(scores.scalar_type());
  const at::Tensor values = logits ? scores.contiguous() : scores.to(at::kLong).contiguous();
  const auto count_into = [&](at::Tensor& counts) {
    auto* cells = reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>());
    if (logits) {
      update_from_logits(cells, values, target, K, ignore_index, shared_counts, bad.data_ptr<int>());
    } else {
      update_from_labels(cells, values, target, K, ignore_index, shared_counts, bad.data_ptr<int>());
    }
  };
  count_into(matrix);
  // The kernels flag values out of range instead of counting them. An update that raises must
  // change nothing: the pixels it counted (the same ones each time) are counted again apart and
  // taken back, so that the usual update needs no copy of the matrix. One synchronisation.
  const int found = bad.item<int>();
  if (found == 0) return;
  at::Tensor counted = at::zeros_like(matrix);
  count_into(counted);
  matrix.sub_(counted);
  fail_on_bad_target(found & kernels::kBadTarget, K, ignore_index);
  fail_on_bad_prediction(found & kernels::kBadPrediction, K);
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CUDA, m) {
  m.impl("confusion_matrix_update_", &confusion_matrix_update_cuda);
}

}  // namespace nasfast
