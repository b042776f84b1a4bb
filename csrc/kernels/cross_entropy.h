// Softmax cross-entropy of logits bilinearly upsampled (align_corners=False) to the labels' size,
// and its gradient, without materialising the upsampled logits (at a search's label sizes they
// are hundreds of MB per loss, and writing and reading them costs more than the arithmetic):
// each label row's K upsampled logits are blended from two low rows interpolated along x once
// (common.h), and the gradient goes back the same way, transposed. CPU only (see
// csrc/composite/cross_entropy.cpp for the GPU).
#pragma once
#include <cmath>
#include <cstring>

#include "common.h"

namespace nasfast {
namespace kernels {

// exp(x) for the softmax's x <= 0. std::exp is a library call per element; this form vectorises:
// Cephes' expf, exp(r) on [-ln 2 / 2, ln 2 / 2] by a polynomial, times 2^n, within 1 ulp of
// exp down to -87 (where exp leaves float's normal range; below, exp(-87) ~ 1.6e-38, nothing
// next to the largest term's 1). NaN stays NaN. Needs IEEE arithmetic as written (no -ffast-math).
template <typename T>
NASFAST_CPU_INLINE T exp_nonpositive(T x) {
  return std::exp(x);
}

template <>
NASFAST_CPU_INLINE float exp_nonpositive<float>(float x) {
  float safe = x < -87.0f ? -87.0f : x;
  safe = safe == safe ? safe : 0.0f;  // no NaN into the integer conversion below
  const float n = (safe * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // rounded to nearest (1.5 * 2^23)
  const float r = safe - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof two_to_n);
  return x == x ? p * two_to_n : x;
}

// Over the K x W logits z of one label row: m = the largest logit of each pixel (NaN if any is),
// s = sum over classes of exp(z - m); with Exponentiate, z becomes exp(z - m).
template <bool Exponentiate, typename T>
NASFAST_CPU_INLINE void softmax_sums(T* NASFAST_RESTRICT z, T* NASFAST_RESTRICT m, T* NASFAST_RESTRICT s, int64_t K,
                                     int64_t W) {
  for (int64_t x = 0; x < W; ++x) {
    m[x] = z[x];
    s[x] = T(0);
  }
  for (int64_t k = 1; k < K; ++k) {
    const T* NASFAST_RESTRICT row = z + k * W;
    for (int64_t x = 0; x < W; ++x) m[x] = row[x] > m[x] || row[x] != row[x] ? row[x] : m[x];
  }
  for (int64_t k = 0; k < K; ++k) {
    T* NASFAST_RESTRICT row = z + k * W;
    for (int64_t x = 0; x < W; ++x) {
      const T e = exp_nonpositive(row[x] - m[x]);
      s[x] += e;
      if (Exponentiate) row[x] = e;
    }
  }
}

// The logits of one image (K planes of h x w) upsampled row by row: the label rows (H x W) must
// come in order. `lows`: 2 x K x W values, the x-interpolated low rows of each parity (common.h).
template <typename T>
struct UpsampledRows {
  const T* logits;
  int64_t K, h, w, H, W;
  const LinearTap<T>* tx;
  T* lows;
  ParityRows held;

  // z (K x W) = the upsampled logits of the label row with vertical tap ty. retire(i) is called
  // for each low row i that no later label row reads, before its buffer is reused. Logits of the
  // labels' size are copied, not blended with weight 0 (an infinite neighbour would make NaN), as
  // the reference does not interpolate them.
  template <typename Retire>
  NASFAST_CPU_INLINE void row(const LinearTap<T>& ty, T* NASFAST_RESTRICT z, Retire retire) {
    const bool same_size = h == H && w == W;
    for (int j = 0; j < 2; ++j) {
      const int64_t i = j == 0 ? ty.i0 : ty.i1;
      const int64_t previous = held.hold(i);
      if (previous == i) continue;
      if (previous >= 0) retire(previous);
      if (same_size) continue;
      for (int64_t k = 0; k < K; ++k) interpolate_row(logits + (k * h + i) * w, lows + ((i & 1) * K + k) * W, W, tx);
    }
    if (same_size) {
      for (int64_t k = 0; k < K; ++k) std::memcpy(z + k * W, logits + (k * h + ty.i0) * w, W * sizeof(T));
      return;
    }
    const T* row0 = lows + (ty.i0 & 1) * K * W;
    const T* row1 = lows + (ty.i1 & 1) * K * W;
    for (int64_t q = 0; q < K * W; ++q) z[q] = ty.w0 * row0[q] + ty.w1 * row1[q];
  }
};

// Scratch values per task of cross_entropy_image and cross_entropy_backward_image.
inline int64_t cross_entropy_scratch(int64_t K, int64_t W) { return 5 * K * W + 2 * W; }

// Whether a pixel's label counts: neither ignore_index nor outside [0, K) (those are added to
// `invalid`, for the caller to refuse).
NASFAST_CPU_INLINE bool counted(int64_t label, int64_t K, int64_t ignore_index, int64_t* invalid) {
  if (label == ignore_index) return false;
  if (label < 0 || label >= K) {
    *invalid += 1;
    return false;
  }
  return true;
}

// Adds one image's summed loss (in double) and counted pixels to *sum and *count: logits
// K x h x w, target H x W.
template <typename T>
NASFAST_CPU_INLINE void cross_entropy_image(const T* logits, const int64_t* target, int64_t K, int64_t h, int64_t w,
                                            int64_t H, int64_t W, int64_t ignore_index, const LinearTap<T>* ty,
                                            const LinearTap<T>* tx, T* scratch, double* sum, int64_t* count,
                                            int64_t* invalid) {
  UpsampledRows<T> rows{logits, K, h, w, H, W, tx, scratch, {}};
  T* z = scratch + 2 * K * W;
  T* m = z + K * W;
  T* s = m + W;
  for (int64_t y = 0; y < H; ++y) {
    rows.row(ty[y], z, [](int64_t) {});
    softmax_sums<false>(z, m, s, K, W);
    const int64_t* labels = target + y * W;
    T row_sum = T(0);
    for (int64_t x = 0; x < W; ++x) {
      if (!counted(labels[x], K, ignore_index, invalid)) continue;
      row_sum += (m[x] - z[labels[x] * W + x]) + std::log(s[x]);  // m + log(s) would round log(s) away
      *count += 1;
    }
    *sum += static_cast<double>(row_sum);
  }
}

// grad_low (K x h x w, zeroed by the caller) = the gradient of one image's summed loss times
// `scale`: scale * (softmax - one-hot of the label) at each counted pixel, upsampling transposed.
// Each label row's gradient is added, weighted, to the two low rows it read (held along x in
// `grads`), and a low row is spread back along x once no later label row reads it. Adds the
// image's counted pixels to *count.
template <typename T>
NASFAST_CPU_INLINE void cross_entropy_backward_image(const T* logits, const int64_t* target, T* grad_low, T scale,
                                                     int64_t K, int64_t h, int64_t w, int64_t H, int64_t W,
                                                     int64_t ignore_index, const LinearTap<T>* ty,
                                                     const LinearTap<T>* tx, T* scratch, int64_t* count,
                                                     int64_t* invalid) {
  UpsampledRows<T> rows{logits, K, h, w, H, W, tx, scratch, {}};
  T* z = scratch + 2 * K * W;
  T* grads = z + K * W;
  T* m = grads + 2 * K * W;
  T* s = m + W;
  auto spread = [&](int64_t i) {
    for (int64_t k = 0; k < K; ++k) spread_row(grads + ((i & 1) * K + k) * W, grad_low + (k * h + i) * w, W, tx);
  };
  auto retire = [&](int64_t i) {
    spread(i);
    T* NASFAST_RESTRICT g = grads + (i & 1) * K * W;
    for (int64_t q = 0; q < K * W; ++q) g[q] = T(0);
  };
  for (int64_t q = 0; q < 2 * K * W; ++q) grads[q] = T(0);
  for (int64_t y = 0; y < H; ++y) {
    rows.row(ty[y], z, retire);
    softmax_sums<true>(z, m, s, K, W);  // z = exp(z - m)
    const int64_t* labels = target + y * W;
    T* NASFAST_RESTRICT factor = m;  // m is not needed any more
    for (int64_t x = 0; x < W; ++x) {  // scale * (exp(z - m) - one-hot * s) / s where counted, else 0
      const bool counts = counted(labels[x], K, ignore_index, invalid);
      if (counts) z[labels[x] * W + x] -= s[x];
      factor[x] = counts ? scale / s[x] : T(0);
      *count += counts ? 1 : 0;
    }
    for (int64_t k = 0; k < K; ++k) {
      T* NASFAST_RESTRICT row = z + k * W;
      for (int64_t x = 0; x < W; ++x) row[x] *= factor[x];
    }
    for (int j = 0; j < 2; ++j) {
      T* NASFAST_RESTRICT g = grads + ((j == 0 ? ty[y].i0 : ty[y].i1) & 1) * K * W;
      const T weight = j == 0 ? ty[y].w0 : ty[y].w1;
      for (int64_t q = 0; q < K * W; ++q) g[q] += weight * z[q];
    }
  }
  for (int k = 0; k < 2; ++k) {
    if (rows.held.held[k] >= 0) spread(rows.held.held[k]);
  }
}

}  // namespace kernels
}  // namespace nasfast
