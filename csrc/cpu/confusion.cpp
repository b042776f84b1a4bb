#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../kernels/confusion.h"

namespace nasfast {
namespace {

// Each task counts into its own K x K histogram; the histograms are summed at the end.
void confusion_matrix_update_cpu(at::Tensor& matrix, const at::Tensor& scores_in, const at::Tensor& target_in,
                                 int64_t ignore_index) {
  const int64_t K = matrix.size(0);
  TORCH_CHECK(matrix.dim() == 2 && matrix.size(1) == K && matrix.scalar_type() == at::kLong &&
                  matrix.is_contiguous(),
              "confusion_matrix_update_: matrix must be a contiguous K x K int64 tensor");
  const at::Tensor target = target_in.contiguous().to(at::kLong);
  TORCH_CHECK(target.dim() == 3, "confusion_matrix_update_: target must be N x H x W, got ", target.sizes());
  const at::Tensor valid = target.ne(ignore_index);
  if (valid.any().item<bool>()) {
    const at::Tensor kept = target.masked_select(valid);
    TORCH_CHECK(kept.min().item<int64_t>() >= 0 && kept.max().item<int64_t>() < K,
                "confusion_matrix_update_: target values must be in [0, ", K, ") or ", ignore_index);
  }
  const int64_t N = target.size(0), H = target.size(1), W = target.size(2);
  const int64_t* tp = target.data_ptr<int64_t>();
  const bool from_logits = at::isFloatingType(scores_in.scalar_type());
  const at::Tensor scores = scores_in.contiguous();
  if (from_logits) {
    TORCH_CHECK(scores.dim() == 4 && scores.size(0) == N && scores.size(1) == K,
                "confusion_matrix_update_: logits must be N x K x h x w with K = ", K, ", got ", scores.sizes());
  } else {
    TORCH_CHECK(scores.sizes() == target.sizes(), "confusion_matrix_update_: predictions ", scores.sizes(),
                " and targets ", target.sizes(), " differ in shape");
  }
  const at::Tensor pred = from_logits ? scores : scores.to(at::kLong);
  const int64_t rows = N * H;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W));
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (rows + grain - 1) / grain));
  std::vector<std::vector<int64_t>> partial(tasks, std::vector<int64_t>(K * K, 0));
  const int64_t chunk = (rows + tasks - 1) / tasks;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      int64_t* counts = partial[t].data();
      for (int64_t r = t * chunk; r < std::min(rows, (t + 1) * chunk);) {
        const int64_t n = r / H, y0 = r % H, y1 = std::min(H, y0 + ((t + 1) * chunk - r));
        if (from_logits) {
          AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "confusion_from_logits", [&] {
            const int64_t h = pred.size(2), w = pred.size(3);
            kernels::confusion_from_logits_rows(pred.data_ptr<scalar_t>() + n * K * h * w, tp + n * H * W, counts,
                                                K, h, w, H, W, ignore_index, y0, y1);
          });
        } else {
          kernels::confusion_from_labels(pred.data_ptr<int64_t>() + n * H * W + y0 * W, tp + n * H * W + y0 * W,
                                         counts, K, (y1 - y0) * W, ignore_index);
        }
        r += y1 - y0;
      }
    }
  });
  int64_t* out = matrix.data_ptr<int64_t>();
  for (const auto& counts : partial) {
    for (int64_t i = 0; i < K * K; ++i) out[i] += counts[i];
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CPU, m) {
  m.impl("confusion_matrix_update_", &confusion_matrix_update_cpu);
}

}  // namespace nasfast
