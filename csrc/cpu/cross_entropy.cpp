#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../checks.h"
#include "../kernels/cross_entropy.h"
#include "simd.h"

namespace nasfast {
namespace {

// Multiversioned (cpu/simd.h): the blends, the softmax and its exponentials vectorise.
template <typename T>
NASFAST_CPU_CLONES void loss_images(const T* logits, const int64_t* target, int64_t begin, int64_t end, int64_t K,
                                    int64_t h, int64_t w, int64_t H, int64_t W, int64_t ignore_index,
                                    const kernels::LinearTap<T>* ty, const kernels::LinearTap<T>* tx, double* sums,
                                    int64_t* counts, int64_t* invalid) {
  std::vector<T> scratch(kernels::cross_entropy_scratch(K, W));
  for (int64_t n = begin; n < end; ++n) {
    kernels::cross_entropy_image(logits + n * K * h * w, target + n * H * W, K, h, w, H, W, ignore_index, ty, tx,
                                 scratch.data(), sums + n, counts + n, invalid + n);
  }
}

template <typename T>
NASFAST_CPU_CLONES void gradient_images(const T* logits, const int64_t* target, T* grad_low, T scale, int64_t begin,
                                        int64_t end, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W,
                                        int64_t ignore_index, const kernels::LinearTap<T>* ty,
                                        const kernels::LinearTap<T>* tx, int64_t* counts, int64_t* invalid) {
  std::vector<T> scratch(kernels::cross_entropy_scratch(K, W));
  for (int64_t n = begin; n < end; ++n) {
    kernels::cross_entropy_backward_image(logits + n * K * h * w, target + n * H * W, grad_low + n * K * h * w, scale,
                                          K, h, w, H, W, ignore_index, ty, tx, scratch.data(), counts + n, invalid + n);
  }
}

template <typename T>
struct Taps {
  std::vector<kernels::LinearTap<T>> y, x;
  Taps(const at::Tensor& logits, const at::Tensor& target) : y(target.size(1)), x(target.size(2)) {
    kernels::make_taps(y.data(), logits.size(2), target.size(1));
    kernels::make_taps(x.data(), logits.size(3), target.size(2));
  }
};

// Per image: the counted pixels and the labels out of range.
struct PixelCounts {
  std::vector<int64_t> counted, invalid;
  explicit PixelCounts(int64_t images) : counted(images, 0), invalid(images, 0) {}

  // The total counted; refuses labels out of range.
  int64_t total(int64_t K, int64_t ignore_index) const {
    int64_t bad = 0, count = 0;
    for (size_t n = 0; n < counted.size(); ++n) {
      bad += invalid[n];
      count += counted[n];
    }
    fail_on_bad_label(bad > 0, K, ignore_index);
    return count;
  }
};

// Images are the tasks (the gradient of one image's logits is written by one task); the sums of
// the images are added in order, so the loss does not depend on the number of threads.
at::Tensor upsample_cross_entropy_cpu(const at::Tensor& logits_in, const at::Tensor& target_in, int64_t ignore_index) {
  check_cross_entropy(logits_in, target_in);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const int64_t N = logits.size(0), K = logits.size(1), h = logits.size(2), w = logits.size(3);
  const int64_t H = target.size(1), W = target.size(2);
  std::vector<double> sums(N, 0.0);
  PixelCounts pixels(N);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "upsample_cross_entropy_cpu", [&] {
    const Taps<scalar_t> taps(logits, target);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      loss_images(logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), begin, end, K, h, w, H, W, ignore_index,
                  taps.y.data(), taps.x.data(), sums.data(), pixels.counted.data(), pixels.invalid.data());
    });
  });
  const int64_t count = pixels.total(K, ignore_index);
  double sum = 0.0;
  for (const double s : sums) sum += s;
  const double mean = count > 0 ? sum / count : std::numeric_limits<double>::quiet_NaN();  // as F.cross_entropy
  return at::scalar_tensor(mean, logits.options());
}

// The gradient is computed for the summed loss times grad, then divided by the count.
at::Tensor upsample_cross_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logits_in,
                                               const at::Tensor& target_in, int64_t ignore_index) {
  check_cross_entropy(logits_in, target_in);
  TORCH_CHECK(grad.dim() == 0, "upsample_cross_entropy_backward: grad must be a scalar, got ", grad.sizes());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  at::Tensor grad_low = at::zeros_like(logits, at::MemoryFormat::Contiguous);
  const int64_t N = logits.size(0), K = logits.size(1), h = logits.size(2), w = logits.size(3);
  const int64_t H = target.size(1), W = target.size(2);
  PixelCounts pixels(N);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "upsample_cross_entropy_backward_cpu", [&] {
    const Taps<scalar_t> taps(logits, target);
    const scalar_t scale = grad.item<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      gradient_images(logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), grad_low.data_ptr<scalar_t>(), scale,
                      begin, end, K, h, w, H, W, ignore_index, taps.y.data(), taps.x.data(), pixels.counted.data(),
                      pixels.invalid.data());
    });
  });
  const int64_t count = pixels.total(K, ignore_index);
  return count > 0 ? grad_low.div_(count) : grad_low.zero_();  // none counted: zero, as F.cross_entropy
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CPU, m) {
  m.impl("upsample_cross_entropy", &upsample_cross_entropy_cpu);
  m.impl("upsample_cross_entropy_backward", &upsample_cross_entropy_backward_cpu);
}

}  // namespace nasfast
