#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../kernels/upsample_add.h"

namespace nasfast {
namespace {

void check_inputs(const at::Tensor& high, const at::Tensor& low) {
  TORCH_CHECK(high.dim() == 4 && low.dim() == 4, "upsample_add: expected 4-d NCHW tensors, got ",
              high.sizes(), " and ", low.sizes());
  TORCH_CHECK(high.size(0) == low.size(0) && high.size(1) == low.size(1),
              "upsample_add: batch and channels must match, got ", high.sizes(), " and ", low.sizes());
  TORCH_CHECK(high.scalar_type() == low.scalar_type(), "upsample_add: dtypes differ");
}

at::Tensor upsample_add_cpu(const at::Tensor& high_in, const at::Tensor& low_in) {
  check_inputs(high_in, low_in);
  const at::Tensor high = high_in.contiguous();
  const at::Tensor low = low_in.contiguous();
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
      for (int64_t p = begin; p < end; ++p) {
        kernels::upsample_add_plane(hp + p * H * W, lp + p * h * w, op + p * H * W, H, W, w, ty.data(), tx.data());
      }
    });
  });
  return out;
}

at::Tensor upsample_add_backward_low_cpu(const at::Tensor& grad_in, c10::SymIntArrayRef low_size) {
  const at::Tensor grad = grad_in.contiguous();
  const int64_t h = low_size[2].expect_int(), w = low_size[3].expect_int();
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
      for (int64_t p = begin; p < end; ++p) {
        kernels::upsample_add_backward_low_plane(gp + p * H * W, lp + p * h * w, H, W, w, ty.data(), tx.data());
      }
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
