#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../kernels/upsample_add.h"
#include "simd.h"

namespace nasfast {
namespace {

template <typename T>
NASFAST_CPU_CLONES void forward_planes(const T* high, const T* low, T* out, int64_t begin, int64_t end, int64_t H,
                                       int64_t W, int64_t h, int64_t w, const kernels::LinearTap<T>* ty,
                                       const kernels::LinearTap<T>* tx) {
  std::vector<T> rows(2 * W);
  for (int64_t p = begin; p < end; ++p) {
    kernels::upsample_add_plane(high + p * H * W, low + p * h * w, out + p * H * W, H, W, w, ty, tx, rows.data());
  }
}

template <typename T>
NASFAST_CPU_CLONES void backward_low_planes(const T* grad, T* grad_low, int64_t begin, int64_t end, int64_t H,
                                            int64_t W, int64_t h, int64_t w, const kernels::LinearTap<T>* ty,
                                            const kernels::LinearTap<T>* tx) {
  std::vector<T> rows(2 * W);
  for (int64_t p = begin; p < end; ++p) {
    kernels::upsample_add_backward_low_plane(grad + p * H * W, grad_low + p * h * w, H, W, w, ty, tx, rows.data());
  }
}

at::Tensor upsample_add_cpu(const at::Tensor& high_in, const at::Tensor& low_in) {
  check_upsample_add(high_in, low_in);
  TORCH_CHECK(high_in.scalar_type() == at::kFloat || high_in.scalar_type() == at::kDouble,
              "upsample_add: the CPU kernels take float32 or float64, got ", high_in.scalar_type());
  const at::Tensor high = high_in.contiguous();
  const at::Tensor low = low_in.contiguous();
  if (high.sizes() == low.sizes()) return at::add(high, low);  // nothing to interpolate
  at::Tensor out = at::empty_like(high);
  const int64_t planes = high.size(0) * high.size(1);
  const int64_t H = high.size(2), W = high.size(3), h = low.size(2), w = low.size(3);
  AT_DISPATCH_FLOATING_TYPES(high.scalar_type(), "upsample_add_cpu", [&] {
    const scalar_t* hp = high.data_ptr<scalar_t>();
    const scalar_t* lp = low.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    std::vector<kernels::LinearTap<scalar_t>> ty(H), tx(W);
    kernels::make_taps(ty.data(), h, H);
    kernels::make_taps(tx.data(), w, W);
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      forward_planes(hp, lp, op, begin, end, H, W, h, w, ty.data(), tx.data());
    });
  });
  return out;
}

at::Tensor upsample_add_backward_low_cpu(const at::Tensor& grad_in, c10::SymIntArrayRef low_size) {
  check_upsample_add_backward_low(grad_in, low_size);
  const at::Tensor grad = grad_in.contiguous();
  const int64_t h = low_size[2].expect_int(), w = low_size[3].expect_int();
  if (grad.size(2) == h && grad.size(3) == w) return grad.clone();
  at::Tensor grad_low = at::zeros({grad.size(0), grad.size(1), h, w}, grad.options());
  const int64_t planes = grad.size(0) * grad.size(1);
  const int64_t H = grad.size(2), W = grad.size(3);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "upsample_add_backward_low_cpu", [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* lp = grad_low.data_ptr<scalar_t>();
    std::vector<kernels::LinearTap<scalar_t>> ty(H), tx(W);
    kernels::make_taps(ty.data(), h, H);
    kernels::make_taps(tx.data(), w, W);
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      backward_low_planes(gp, lp, begin, end, H, W, h, w, ty.data(), tx.data());
    });
  });
  return grad_low;
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CPU, m) {
  m.impl("upsample_add", &upsample_add_cpu);
  m.impl("upsample_add_backward_low", &upsample_add_backward_low_cpu);
}

}  // namespace nasfast
