// CPU kernels of the separable convolution ops (see kernels/separable.h for the fusion choices).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <tuple>

#include "../checks.h"
#include "../kernels/separable.h"
#include "simd.h"

namespace nasfast {
namespace {

struct Geometry {
  int64_t N, C, Cout, H, W, k, d;
  int64_t band_rows, bands;
  int vector_bytes;  // cpu/simd.h
};

Geometry geometry(const at::Tensor& x, const at::Tensor& depthwise, const at::Tensor& pointwise, int64_t dilation) {
  Geometry g;
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.Cout = pointwise.size(0);
  g.k = depthwise.size(2);
  g.d = effective_dilation(dilation, x);
  // Bands of about kBandPixels, and at least as many tasks (images x bands) as threads: at batch
  // 1 a small map would otherwise be one task on one thread.
  const int64_t bands_per_image = std::max<int64_t>(1, (at::get_num_threads() + g.N - 1) / std::max<int64_t>(1, g.N));
  g.band_rows = std::max<int64_t>(1, std::min<int64_t>({g.H, kernels::kBandPixels / std::max<int64_t>(1, g.W),
                                                        (g.H + bands_per_image - 1) / bands_per_image}));
  g.bands = g.H == 0 ? 0 : (g.H + g.band_rows - 1) / g.band_rows;
  g.vector_bytes = vector_bytes();
  return g;
}

void check_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "sep_conv: the CPU kernels take float32 or float64, got ", x.scalar_type());
}

int64_t pad(const Geometry& g) { return g.d * (g.k / 2); }

// Uninitialised scratch (a zeroed std::vector cost 4% of the forward): every element is written
// before it is read.
template <typename T>
std::unique_ptr<T[]> scratch(int64_t size) {
  return std::unique_ptr<T[]>(new T[std::max<int64_t>(size, 1)]);
}

// Scratch for the zero-padded rows of `rows` output rows.
int64_t padded_size(const Geometry& g, int64_t rows) { return (rows + 2 * pad(g)) * (g.W + 2 * pad(g)); }

// The depthwise output of image n, rows [y0, y1), all channels, into buffer (C rows, stride ld).
template <typename T>
NASFAST_CPU_CLONES void depthwise_image_band(const Geometry& g, const T* x, const T* dw, T* buffer, int64_t ld,
                                             T* padded, int64_t n, int64_t y0, int64_t y1) {
  for (int64_t c = 0; c < g.C; ++c) {
    kernels::depthwise_band(x + (n * g.C + c) * g.H * g.W, dw + c * g.k * g.k, buffer + c * ld, padded, g.H, g.W, g.k,
                            g.d, y0, y1, g.vector_bytes);
  }
}

// Whether the register tiles of Bytes-wide vectors fit the product; if so, it is computed on them
// (else multiply() calls BLAS).
template <typename T, int Bytes>
NASFAST_CPU_CLONES bool try_pointwise_tiles(const T* weight, const T* in, T* out, const T* bias, int64_t rows,
                                            int64_t inner, int64_t P, int64_t ld_in, int64_t ld) {
  if (!kernels::pointwise_tiles_fit<T, Bytes>(rows, P)) return false;
  kernels::pointwise_tiled<T, Bytes>(weight, in, out, bias, rows, inner, P, ld_in, ld);
  return true;
}

// out (rows x P, row stride ld) = weight (rows x inner) in (inner x P, row stride ld_in), then
// max(out + bias, 0) when bias is not null: on the CPU's vector tiles where they fit
// (kernels/separable.h), else BLAS. The threads of at::parallel_for do not inherit the caller's
// dispatch state: a caller's ATen calls there must exclude autograd themselves, or an out= call
// with a weight that requires grad is refused.
template <typename T>
void multiply(int vector_bytes, const at::Tensor& weight, const T* in, int64_t ld_in, T* out, const T* bias, int64_t P,
              int64_t ld) {
  const int64_t rows = weight.size(0), inner = weight.size(1);
  const T* w = weight.data_ptr<T>();
  if ((vector_bytes >= 64 && try_pointwise_tiles<T, 64>(w, in, out, bias, rows, inner, P, ld_in, ld)) ||
      (vector_bytes >= 32 && try_pointwise_tiles<T, 32>(w, in, out, bias, rows, inner, P, ld_in, ld))) {
    return;
  }
  at::Tensor out_matrix = at::from_blob(out, {rows, P}, {ld, 1}, weight.options());
  at::mm_out(out_matrix, weight, at::from_blob(const_cast<T*>(in), {inner, P}, {ld_in, 1}, weight.options()));
  if (bias) kernels::bias_relu_rows(out, bias, rows, P, ld);
}

// Forward, with the inference epilogue (bias + ReLU) when `bias` is defined.
at::Tensor forward(const at::Tensor& x_in, const at::Tensor& dw_in, const at::Tensor& pw_in, const at::Tensor& bias_in,
                   int64_t dilation) {
  check_separable(x_in, dw_in, pw_in, dilation);
  if (bias_in.defined()) check_bias(x_in, pw_in, bias_in);
  check_cpu(x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dw = dw_in.contiguous();
  const Geometry g = geometry(x, dw, pw_in, dilation);
  const at::Tensor pw = pw_in.reshape({g.Cout, g.C}).contiguous();
  const at::Tensor bias = bias_in.defined() ? bias_in.contiguous() : bias_in;
  at::Tensor out = at::empty({g.N, g.Cout, g.H, g.W}, x.options());
  if (out.numel() == 0) return out;
  const int64_t HW = g.H * g.W;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sep_conv_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dwp = dw.data_ptr<scalar_t>();
    const scalar_t* biasp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    scalar_t* outp = out.data_ptr<scalar_t>();
    const int64_t ld = kernels::scratch_stride<scalar_t>(g.band_rows * g.W);
    at::parallel_for(0, g.N * g.bands, 1, [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // see multiply()
      auto buffer = scratch<scalar_t>(g.C * ld);
      auto padded = scratch<scalar_t>(padded_size(g, g.band_rows));
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / g.bands, y0 = (t % g.bands) * g.band_rows, y1 = std::min(g.H, y0 + g.band_rows);
        const int64_t P = (y1 - y0) * g.W;
        depthwise_image_band(g, xp, dwp, buffer.get(), ld, padded.get(), n, y0, y1);
        multiply(g.vector_bytes, pw, buffer.get(), ld, outp + n * g.Cout * HW + y0 * g.W, biasp, P, HW);
      }
    });
  });
  return out;
}

at::Tensor sep_conv_cpu(const at::Tensor& x, const at::Tensor& depthwise, const at::Tensor& pointwise,
                        int64_t dilation) {
  return forward(x, depthwise, pointwise, at::Tensor(), dilation);
}

at::Tensor sep_conv_bn_relu_cpu(const at::Tensor& x, const at::Tensor& depthwise, const at::Tensor& pointwise,
                                const at::Tensor& bias, int64_t dilation) {
  return forward(x, depthwise, pointwise, bias, dilation);
}

template <typename T>
struct BackwardBuffers {
  int64_t ld;  // row stride of y and gy
  T* y;        // C x HW: the recomputed depthwise output
  T* gy;       // C x HW: its gradient, pw^T g
  T* padded;   // one zero-padded plane
  T* flipped;  // k x k
};

// The depthwise part of the backward of one image (x: its C planes): recomputes y when
// `need_y`, adds the weight gradient to grad_dw and writes grad_x (each when not null).
template <typename T>
NASFAST_CPU_CLONES void depthwise_image_backward(const Geometry& g, const T* x, const T* dw, T* grad_x, T* grad_dw,
                                                 bool need_y, const BackwardBuffers<T>& b) {
  const int64_t HW = g.H * g.W, kk = g.k * g.k;
  for (int64_t c = 0; c < g.C; ++c) {
    if (need_y || grad_dw) kernels::pad_rows(x + c * HW, b.padded, g.H, g.W, pad(g), 0, g.H);
    if (need_y) kernels::correlate_valid(b.padded, dw + c * kk, b.y + c * b.ld, g.H, g.W, g.k, g.d, g.vector_bytes);
    if (grad_dw) {
      kernels::depthwise_weight_grad(b.gy + c * b.ld, b.padded, grad_dw + c * kk, g.H, g.W, g.k, g.d, g.vector_bytes);
    }
    if (grad_x) {
      kernels::depthwise_plane_input_grad(b.gy + c * b.ld, dw + c * kk, grad_x + c * HW, b.padded, b.flipped, g.H, g.W,
                                          g.k, g.d, g.vector_bytes);
    }
  }
}

// Images are the parallel tasks; each task sums its weight gradients privately, and the partial
// sums are added in task order. Per image: gy = pw^T g (BLAS); per channel, the padded input
// plane serves both the recomputed depthwise output (for grad_pw = g y^T) and grad_dw; grad_x is
// the correlation of gy with the rotated taps.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sep_conv_backward_cpu(const at::Tensor& grad_in,
                                                                     const at::Tensor& x_in,
                                                                     const at::Tensor& dw_in,
                                                                     const at::Tensor& pw_in, int64_t dilation,
                                                                     std::array<bool, 3> output_mask) {
  check_separable(x_in, dw_in, pw_in, dilation);
  check_cpu(x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dw = dw_in.contiguous();
  const Geometry g = geometry(x, dw, pw_in, dilation);
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == g.N && grad_in.size(1) == g.Cout &&
                  grad_in.size(2) == g.H && grad_in.size(3) == g.W,
              "sep_conv_backward: grad must be ", g.N, " x ", g.Cout, " x ", g.H, " x ", g.W, ", got ",
              grad_in.sizes());
  const at::Tensor grad = grad_in.contiguous().to(x.scalar_type());
  const at::Tensor pw_t = pw_in.reshape({g.Cout, g.C}).t().contiguous();
  const bool need_x = output_mask[0], need_dw = output_mask[1], need_pw = output_mask[2];
  at::Tensor grad_x = need_x ? at::empty_like(x) : at::Tensor();
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), g.N));
  at::Tensor grad_dw_parts = at::zeros({tasks, g.C, g.k * g.k}, x.options());
  at::Tensor grad_pw_parts = at::zeros({tasks, g.Cout, g.C}, x.options());
  const int64_t HW = g.H * g.W, kk = g.k * g.k;
  if (g.N > 0 && HW > 0 && (need_x || need_dw || need_pw)) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sep_conv_backward_cpu", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* dwp = dw.data_ptr<scalar_t>();
      scalar_t* gxp = need_x ? grad_x.data_ptr<scalar_t>() : nullptr;
      const int64_t per_task = (g.N + tasks - 1) / tasks;
      const int64_t ld = kernels::scratch_stride<scalar_t>(HW);
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        at::AutoDispatchBelowADInplaceOrView below_autograd;  // see multiply()
        auto y = scratch<scalar_t>(need_pw ? g.C * ld : 0);
        auto gy = scratch<scalar_t>(g.C * ld);
        auto padded = scratch<scalar_t>(padded_size(g, g.H));
        auto flipped = scratch<scalar_t>(kk);
        const at::Tensor y_matrix = at::from_blob(y.get(), {g.C, HW}, {ld, 1}, x.options());
        for (int64_t task = begin; task < end; ++task) {
          at::Tensor grad_pw_part = grad_pw_parts[task];
          scalar_t* gdw = grad_dw_parts[task].data_ptr<scalar_t>();
          for (int64_t n = task * per_task; n < std::min(g.N, (task + 1) * per_task); ++n) {
            const at::Tensor g_n = grad[n].view({g.Cout, HW});
            if (need_x || need_dw) {
              multiply<scalar_t>(g.vector_bytes, pw_t, g_n.data_ptr<scalar_t>(), HW, gy.get(), nullptr, HW, ld);
            }
            BackwardBuffers<scalar_t> buffers = {ld, y.get(), gy.get(), padded.get(), flipped.get()};
            depthwise_image_backward(g, xp + n * g.C * HW, dwp, need_x ? gxp + n * g.C * HW : nullptr,
                                     need_dw ? gdw : nullptr, need_pw, buffers);
            if (need_pw) grad_pw_part.addmm_(g_n, y_matrix.t());
          }
        }
      });
    });
  } else if (need_x) {
    grad_x.zero_();
  }
  at::Tensor grad_dw = need_dw ? grad_dw_parts.sum(0).view(dw_in.sizes()) : at::Tensor();
  at::Tensor grad_pw = need_pw ? grad_pw_parts.sum(0).view(pw_in.sizes()) : at::Tensor();
  return std::make_tuple(grad_x, grad_dw, grad_pw);
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CPU, m) {
  m.impl("sep_conv", &sep_conv_cpu);
  m.impl("sep_conv_bn_relu", &sep_conv_bn_relu_cpu);
  m.impl("sep_conv_backward", &sep_conv_backward_cpu);
}

}  // namespace nasfast
