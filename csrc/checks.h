// Argument checks shared by the CPU and CUDA registrations (host code, C++14).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>

namespace nasfast {

// x: N x C x H x W; depthwise: C x 1 x k x k (k odd); pointwise: Cout x C x 1 x 1 (or Cout x C).
inline void check_separable(const at::Tensor& x, const at::Tensor& depthwise, const at::Tensor& pointwise,
                            int64_t dilation) {
  TORCH_CHECK(x.dim() == 4, "sep_conv: x must be N x C x H x W, got ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK(depthwise.dim() == 4 && depthwise.size(0) == C && depthwise.size(1) == 1 &&
                  depthwise.size(2) == depthwise.size(3) && depthwise.size(2) % 2 == 1,
              "sep_conv: depthwise weight must be C x 1 x k x k with C = ", C, " and k odd, got ",
              depthwise.sizes());
  TORCH_CHECK((pointwise.dim() == 4 && pointwise.size(2) == 1 && pointwise.size(3) == 1) || pointwise.dim() == 2,
              "sep_conv: pointwise weight must be Cout x C x 1 x 1, got ", pointwise.sizes());
  TORCH_CHECK(pointwise.size(1) == C, "sep_conv: pointwise weight must have ", C, " input channels, got ",
              pointwise.sizes());
  TORCH_CHECK(dilation >= 1, "sep_conv: dilation must be >= 1, got ", dilation);
  // The CUDA kernels offset taps by dilation * (k / 2) in 32-bit ints.
  TORCH_CHECK(dilation <= INT32_MAX / std::max<int64_t>(1, depthwise.size(2) / 2), "sep_conv: dilation ", dilation,
              " is too large for a ", depthwise.size(2), "x", depthwise.size(2), " kernel");
  TORCH_CHECK(x.scalar_type() == depthwise.scalar_type() && x.scalar_type() == pointwise.scalar_type(),
              "sep_conv: x and weights must have the same dtype, got ", x.scalar_type(), ", ",
              depthwise.scalar_type(), " and ", pointwise.scalar_type());
  TORCH_CHECK(x.device() == depthwise.device() && x.device() == pointwise.device(),
              "sep_conv: x and weights must be on the same device");
}

// A dilation of max(H, W) or more leaves every tap but the centre outside an H x W map, as any
// larger one does: the kernels take the smaller, so that their padding stays within the map's size
// (a dilation near INT32_MAX once overflowed the CPU's scratch size).
inline int64_t effective_dilation(int64_t dilation, const at::Tensor& x) {
  return std::min(dilation, std::max<int64_t>({x.size(2), x.size(3), 1}));
}

inline void check_bias(const at::Tensor& x, const at::Tensor& pointwise, const at::Tensor& bias) {
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == pointwise.size(0), "sep_conv_bn_relu: bias must have ",
              pointwise.size(0), " values, got ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == x.scalar_type() && bias.device() == x.device(),
              "sep_conv_bn_relu: bias must have x's dtype and device");
}

inline void check_upsample_add(const at::Tensor& high, const at::Tensor& low) {
  TORCH_CHECK(high.dim() == 4 && low.dim() == 4, "upsample_add: expected 4-d NCHW tensors, got ", high.sizes(),
              " and ", low.sizes());
  TORCH_CHECK(high.size(0) == low.size(0) && high.size(1) == low.size(1),
              "upsample_add: batch and channels must match, got ", high.sizes(), " and ", low.sizes());
  TORCH_CHECK(high.scalar_type() == low.scalar_type(), "upsample_add: dtypes differ (", high.scalar_type(), " and ",
              low.scalar_type(), ")");
  TORCH_CHECK(high.device() == low.device(), "upsample_add: tensors are on different devices");
  TORCH_CHECK(low.size(2) > 0 && low.size(3) > 0, "upsample_add: low must not be empty, got ", low.sizes());
}

// grad: N x C x H x W; low_size: upsample_add's `low`, N x C x h x w with h, w > 0.
inline void check_upsample_add_backward_low(const at::Tensor& grad, c10::SymIntArrayRef low_size) {
  TORCH_CHECK(grad.dim() == 4 && low_size.size() == 4 && low_size[0] == grad.size(0) &&
                  low_size[1] == grad.size(1) && low_size[2] > 0 && low_size[3] > 0,
              "upsample_add_backward_low: grad must be N x C x H x W and low_size N x C x h x w with h, w > 0, got ",
              grad.sizes(), " and ", low_size);
}

// logits: N x K x h x w, non-empty; target: N x H x W int64, H and W not 0. The kernels count the labels out of
// range (neither in [0, K) nor ignore_index) and refuse them with fail_on_bad_label: an IndexError, as
// F.cross_entropy's.
inline void check_cross_entropy(const at::Tensor& logits, const at::Tensor& target) {
  TORCH_CHECK(logits.dim() == 4 && logits.size(1) > 0 && logits.size(2) > 0 && logits.size(3) > 0,
              "upsample_cross_entropy: logits must be a non-empty N x K x h x w tensor, got ", logits.sizes());
  TORCH_CHECK(target.dim() == 3 && target.size(0) == logits.size(0) && target.size(1) > 0 && target.size(2) > 0,
              "upsample_cross_entropy: target must be N x H x W with N = ", logits.size(0), " and H, W > 0, got ",
              target.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "upsample_cross_entropy: logits must be float32 or float64, got ", logits.scalar_type());
  TORCH_CHECK(target.scalar_type() == at::kLong, "upsample_cross_entropy: target must be int64, got ",
              target.scalar_type());
  TORCH_CHECK(logits.device() == target.device(), "upsample_cross_entropy: logits and target are on different devices");
}

inline void fail_on_bad_label(bool bad, int64_t K, int64_t ignore_index) {
  TORCH_CHECK_INDEX(!bad, "upsample_cross_entropy: target values must be in [0, ", K, ") or ", ignore_index);
}

// Returns the targets as int64 N x H x W and checks the shapes of scores against them; the
// values are checked by check_confusion_values (or the CUDA backend's kernel).
inline at::Tensor check_confusion(const at::Tensor& matrix, const at::Tensor& scores, const at::Tensor& target,
                                  int64_t ignore_index) {
  TORCH_CHECK(matrix.dim() == 2 && matrix.size(0) == matrix.size(1) && matrix.scalar_type() == at::kLong &&
              matrix.is_contiguous(), "confusion_matrix_update_: matrix must be a contiguous K x K int64 tensor");
  const int64_t K = matrix.size(0);
  TORCH_CHECK(matrix.device() == scores.device() && matrix.device() == target.device(),
              "confusion_matrix_update_: matrix, scores and target must be on the same device");
  const bool integer = !at::isFloatingType(target.scalar_type()) && !at::isComplexType(target.scalar_type());
  TORCH_CHECK(target.dim() == 3 && integer, "confusion_matrix_update_: target must be integer N x H x W, got ",
              target.scalar_type(), " ", target.sizes());
  if (at::isFloatingType(scores.scalar_type())) {
    TORCH_CHECK(scores.dim() == 4 && scores.size(0) == target.size(0) && scores.size(1) == K,
                "confusion_matrix_update_: logits must be N x K x h x w with K = ", K, ", got ", scores.sizes());
    TORCH_CHECK(scores.size(2) > 0 && scores.size(3) > 0, "confusion_matrix_update_: empty logits");
  } else {
    TORCH_CHECK(scores.sizes() == target.sizes(), "confusion_matrix_update_: predictions ", scores.sizes(),
                " and targets ", target.sizes(), " differ in shape");
  }
  return target.to(at::kLong).contiguous();
}

// The errors for target values outside [0, K) other than ignore_index, and for predicted labels
// outside [0, K) where the target is counted.
inline void fail_on_bad_target(bool bad, int64_t K, int64_t ignore_index) {
  TORCH_CHECK(!bad, "confusion_matrix_update_: target values must be in [0, ", K, ") or ", ignore_index);
}

inline void fail_on_bad_prediction(bool bad, int64_t K) {
  TORCH_CHECK(!bad, "confusion_matrix_update_: predictions must be in [0, ", K, ")");
}

// Whether a value of `values` lies outside [0, K) where `counted` holds (in ATen: one pass, one sync).
inline bool any_outside(const at::Tensor& values, const at::Tensor& counted, int64_t K) {
  return counted.logical_and(values.lt(0).logical_or(values.ge(K))).any().item<bool>();
}

// Those checks in ATen (the CPU backend's; the CUDA one checks in one kernel pass).
inline void check_confusion_values(const at::Tensor& labels, const at::Tensor& scores, int64_t K,
                                   int64_t ignore_index) {
  const at::Tensor counted = labels.ne(ignore_index);
  fail_on_bad_target(any_outside(labels, counted, K), K, ignore_index);
  if (!at::isFloatingType(scores.scalar_type())) {
    fail_on_bad_prediction(any_outside(scores.to(at::kLong), counted, K), K);  // K may not fit uint8 or int8
  }
}

}  // namespace nasfast
