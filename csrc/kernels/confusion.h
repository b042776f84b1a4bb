// Streaming confusion matrix: the label of each pixel against the argmax of the logits,
// bilinearly upsampled (align_corners=False) to the label's size on the fly, so neither the
// upsampled logits nor the argmax map is ever materialised.
#pragma once
#include "common.h"

namespace nasfast {
namespace kernels {

// The class with the largest interpolated logit at one label pixel, the first one on ties (as
// torch.argmax); NaN counts as the largest (as torch.argmax). `logits` points at one image: K
// planes of h x w. Interpolation in Acc (float for half logits).
template <typename Acc, typename T>
NASFAST_HOST_DEVICE inline int64_t upsampled_argmax(const T* logits, int64_t K, int64_t h, int64_t w,
                                                    const LinearTap<Acc>& ty, const LinearTap<Acc>& tx) {
  int64_t best = 0;
  Acc best_value = Acc(0);
  for (int64_t k = 0; k < K; ++k) {
    const Acc v = bilinear_at<Acc>(logits + k * h * w, w, ty, tx);
    if (k == 0 || v > best_value || (v != v && best_value == best_value)) {
      best = k;
      best_value = v;
    }
  }
  return best;
}

// The same at label resolution (logits already H x W): no interpolation, so that infinite or NaN
// logits give exactly torch.argmax's answer. `pixel` indexes one plane of hw values.
template <typename Acc, typename T>
NASFAST_HOST_DEVICE inline int64_t argmax_at(const T* logits, int64_t K, int64_t hw, int64_t pixel) {
  int64_t best = 0;
  Acc best_value = Acc(0);
  for (int64_t k = 0; k < K; ++k) {
    const Acc v = static_cast<Acc>(logits[k * hw + pixel]);
    if (k == 0 || v > best_value || (v != v && best_value == best_value)) {
      best = k;
      best_value = v;
    }
  }
  return best;
}

// Adds the pixels of rows [row_begin, row_end) of one image to `counts` (K x K, row = label).
// `ty` and `tx` are the interpolation taps of every label row and column (unused when the
// logits are already h x w = H x W). The upsampling runs in two passes (see common.h): each low
// row of every class is interpolated along x once, and each label row keeps, column by column,
// the running argmax over the classes of the blend of two such rows. `scratch`: (2 K + 1) x W
// values; `best`: W.
template <typename T, typename Label>
NASFAST_CPU_INLINE void confusion_from_logits_rows(const T* logits, const Label* target, int64_t* counts, int64_t K,
                                                   int64_t h, int64_t w, int64_t H, int64_t W, int64_t ignore_index,
                                                   const LinearTap<T>* ty, const LinearTap<T>* tx, int64_t row_begin,
                                                   int64_t row_end, T* scratch, int64_t* NASFAST_RESTRICT best) {
  if (h == H && w == W) {  // no interpolation, so that infinite or NaN logits give torch.argmax's answer
    for (int64_t q = row_begin * W; q < row_end * W; ++q) {
      const int64_t label = static_cast<int64_t>(target[q]);
      if (label != ignore_index) counts[label * K + argmax_at<T>(logits, K, H * W, q)] += 1;
    }
    return;
  }
  T* NASFAST_RESTRICT best_value = scratch + 2 * K * W;
  ParityRows held;
  for (int64_t y = row_begin; y < row_end; ++y) {
    for (int j = 0; j < 2; ++j) {
      const int64_t i = j == 0 ? ty[y].i0 : ty[y].i1;
      if (held.hold(i) == i) continue;
      for (int64_t k = 0; k < K; ++k) interpolate_row(logits + (k * h + i) * w, scratch + ((i & 1) * K + k) * W, W, tx);
    }
    const T* row0 = scratch + (ty[y].i0 & 1) * K * W;
    const T* row1 = scratch + (ty[y].i1 & 1) * K * W;
    const T wy0 = ty[y].w0, wy1 = ty[y].w1;
    for (int64_t x = 0; x < W; ++x) {
      best_value[x] = wy0 * row0[x] + wy1 * row1[x];
      best[x] = 0;
    }
    for (int64_t k = 1; k < K; ++k) {
      const T* NASFAST_RESTRICT a = row0 + k * W;
      const T* NASFAST_RESTRICT b = row1 + k * W;
      for (int64_t x = 0; x < W; ++x) {  // the first largest; NaN counts as the largest (as torch.argmax)
        const T v = wy0 * a[x] + wy1 * b[x];
        const bool better = v > best_value[x] || (v != v && best_value[x] == best_value[x]);
        best_value[x] = better ? v : best_value[x];
        best[x] = better ? k : best[x];
      }
    }
    for (int64_t x = 0; x < W; ++x) {
      const int64_t label = static_cast<int64_t>(target[y * W + x]);
      if (label != ignore_index) counts[label * K + best[x]] += 1;
    }
  }
}

// The same from predicted labels (no logits).
template <typename Pred, typename Label>
NASFAST_CPU_INLINE void confusion_from_labels(const Pred* pred, const Label* target, int64_t* counts, int64_t K, int64_t n,
                           int64_t ignore_index) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t label = static_cast<int64_t>(target[i]);
    if (label != ignore_index) counts[label * K + static_cast<int64_t>(pred[i])] += 1;
  }
}

}  // namespace kernels
}  // namespace nasfast
