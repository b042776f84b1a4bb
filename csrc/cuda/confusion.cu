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

// The value checks of check_confusion_values in one kernel pass and one synchronisation.
void check_values(const at::Tensor& target, const at::Tensor* pred, int64_t K, int64_t ignore_index) {
  const at::Tensor bad = at::zeros({1}, target.options().dtype(at::kInt));
  const int64_t n = target.numel();
  kernels::find_bad_values_kernel<<<blocks_for(n, kernels::kThreads), kernels::kThreads, 0, current_stream()>>>(
      target.data_ptr<int64_t>(), pred ? pred->data_ptr<int64_t>() : nullptr, n, K, ignore_index,
      bad.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int found = bad.item<int>();
  fail_on_bad_target(found & kernels::kBadTarget, K, ignore_index);
  fail_on_bad_prediction(found & kernels::kBadPrediction, K);
}

void confusion_matrix_update_cuda(at::Tensor& matrix, const at::Tensor& scores, const at::Tensor& target_in,
                                  int64_t ignore_index) {
  const at::Tensor target = check_confusion(matrix, scores, target_in, ignore_index);
  const c10::cuda::CUDAGuard guard(matrix.device());
  const int64_t K = matrix.size(0), N = target.size(0), H = target.size(1), W = target.size(2);
  const int64_t total = N * H * W;
  if (total == 0) return;
  const at::Tensor pred = at::isFloatingType(scores.scalar_type()) ? at::Tensor() : scores.to(at::kLong).contiguous();
  check_values(target, pred.defined() ? &pred : nullptr, K, ignore_index);
  const bool shared_counts = K * K * static_cast<int64_t>(sizeof(unsigned int)) <= kSharedBytes;
  const size_t shared_bytes = shared_counts ? K * K * sizeof(unsigned int) : 0;
  auto* counts = reinterpret_cast<unsigned long long*>(matrix.data_ptr<int64_t>());
  const auto stream = current_stream();
  if (at::isFloatingType(scores.scalar_type())) {
    const at::Tensor logits = scores.contiguous();
    const int64_t h = logits.size(2), w = logits.size(3);
    // Whole warps, no more than a row needs, so that few threads idle where rows are short.
    const int threads = static_cast<int>(
        std::min<int64_t>(kernels::kConfusionThreads, ceil_div(W, kernels::kWarpSize) * kernels::kWarpSize));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "confusion_from_logits_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto kernel = kernels::confusion_from_logits_kernel<scalar_t, acc_t>;
      const dim3 grid = logits_grid(N, H, resident_blocks(kernel, threads, shared_bytes));
      kernel<<<grid, threads, shared_bytes, stream>>>(logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), counts,
                                                      N, K, h, w, H, W, ignore_index, shared_counts);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    const auto kernel = kernels::confusion_from_labels_kernel<int64_t>;
    const int threads = kernels::kConfusionThreads;
    const int64_t blocks = std::min(ceil_div(total, threads), resident_blocks(kernel, threads, shared_bytes));
    kernel<<<static_cast<unsigned int>(blocks), threads, shared_bytes, stream>>>(
        pred.data_ptr<int64_t>(), target.data_ptr<int64_t>(), counts, total, K, ignore_index, shared_counts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CUDA, m) {
  m.impl("confusion_matrix_update_", &confusion_matrix_update_cuda);
}

}  // namespace nasfast
