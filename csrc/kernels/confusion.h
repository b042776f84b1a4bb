// Streaming confusion matrix: the label of each pixel against the argmax of the logits,
// bilinearly upsampled (align_corners=False) to the label's size on the fly, so neither the
// upsampled logits nor the argmax map is ever materialised.
#pragma once
#include "common.h"

namespace nasfast {
namespace kernels {

// The class with the largest interpolated logit at label pixel (y, x); the first one on ties,
// as torch.argmax. `logits` points at one image: K planes of h x w.
template <typename T>
NASFAST_HOST_DEVICE inline int64_t upsampled_argmax(const T* logits, int64_t K, int64_t h, int64_t w,
                                                    const LinearTap<T>& ty, const LinearTap<T>& tx) {
  int64_t best = 0;
  T best_value = T(0);
  for (int64_t c = 0; c < K; ++c) {
    const T* p = logits + c * h * w;
    const T v = ty.w0 * (tx.w0 * p[ty.i0 * w + tx.i0] + tx.w1 * p[ty.i0 * w + tx.i1]) +
                ty.w1 * (tx.w0 * p[ty.i1 * w + tx.i0] + tx.w1 * p[ty.i1 * w + tx.i1]);
    if (c == 0 || v > best_value) {
      best = c;
      best_value = v;
    }
  }
  return best;
}

// Adds the pixels of rows [row_begin, row_end) of one image to `counts` (K x K, row = label).
template <typename T, typename Label>
void confusion_from_logits_rows(const T* logits, const Label* target, int64_t* counts, int64_t K, int64_t h,
                                int64_t w, int64_t H, int64_t W, int64_t ignore_index, int64_t row_begin,
                                int64_t row_end) {
  for (int64_t y = row_begin; y < row_end; ++y) {
    const LinearTap<T> ty = linear_tap<T>(y, h, H);
    for (int64_t x = 0; x < W; ++x) {
      const int64_t label = static_cast<int64_t>(target[y * W + x]);
      if (label == ignore_index) continue;
      const LinearTap<T> tx = linear_tap<T>(x, w, W);
      counts[label * K + upsampled_argmax(logits, K, h, w, ty, tx)] += 1;
    }
  }
}

// The same from predicted labels (no logits).
template <typename Pred, typename Label>
void confusion_from_labels(const Pred* pred, const Label* target, int64_t* counts, int64_t K, int64_t n,
                           int64_t ignore_index) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t label = static_cast<int64_t>(target[i]);
    if (label != ignore_index) counts[label * K + static_cast<int64_t>(pred[i])] += 1;
  }
}

}  // namespace kernels
}  // namespace nasfast
