#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../checks.h"
#include "../kernels/confusion.cuh"
#include "launch.h"

namespace nasfast {
namespace {

constexpr int64_t kSharedBytes = 48 * 1024;

void confusion_matrix_update_cuda(at::Tensor& matrix, const at::Tensor& scores, const at::Tensor& target_in,
                                  int64_t ignore_index) {
  const at::Tensor target = check_confusion(matrix, scores, target_in, ignore_index);
  const c10::cuda::CUDAGuard guard(matrix.device());
  const int64_t K = matrix.size(0), N = target.size(0), H = target.size(1), W = target.size(2);
  const int64_t total = N * H * W;
  if (total == 0) return;
  const bool shared_counts = K * K * static_cast<int64_t>(sizeof(unsigned int)) <= kSharedBytes;
  const size_t shared_bytes = shared_counts ? K * K * sizeof(unsigned int) : 0;
  const unsigned int blocks = std::min<unsigned int>(blocks_for(total, kernels::kThreads), 1024);
  auto* counts = reinterpret_cast<unsigned long long*>(matrix.data_ptr<int64_t>());
  const auto stream = current_stream();
  if (at::isFloatingType(scores.scalar_type())) {
    const at::Tensor logits = scores.contiguous();
    const int64_t h = logits.size(2), w = logits.size(3);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "confusion_from_logits_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      kernels::confusion_from_logits_kernel<scalar_t, acc_t><<<blocks, kernels::kThreads, shared_bytes, stream>>>(
          logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), counts, N, K, h, w, H, W, ignore_index,
          shared_counts);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    const at::Tensor pred = scores.to(at::kLong).contiguous();
    kernels::confusion_from_labels_kernel<int64_t><<<blocks, kernels::kThreads, shared_bytes, stream>>>(
        pred.data_ptr<int64_t>(), target.data_ptr<int64_t>(), counts, total, K, ignore_index, shared_counts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CUDA, m) {
  m.impl("confusion_matrix_update_", &confusion_matrix_update_cuda);
}

}  // namespace nasfast
