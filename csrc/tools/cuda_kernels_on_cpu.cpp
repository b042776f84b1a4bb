// The CUDA kernels of csrc/kernels, in float32 (the reward's logits in float64, to compare its
// argmax exactly), run on the CPU through cuda_on_cpu.h: a C
// interface for tests/test_cuda_kernels_on_cpu.py (ctypes), which picks the grids (those of the
// launchers in csrc/cuda and smaller ones, so that the kernels' loops over the grid run too) and
// compares the results with the PyTorch references. Each function returns 0, or 1 on a deadlock.
// Not part of the library.
#include "cuda_on_cpu.h"

#include "../kernels/confusion.cuh"
#include "../kernels/separable.cuh"
#include "../kernels/upsample_add.cuh"

using cuda_on_cpu::launch;
namespace k = nasfast::kernels;

extern "C" {

int sep_conv_forward(const float* x, const float* dw, const float* pw, const float* bias, float* out, int N, int C,
                     int Cout, int H, int W, int ks, int d, unsigned int images) {
  const int tile_out = k::sep_tile_out(Cout);
  const dim3 grid((H * W + k::kTilePixels - 1) / k::kTilePixels, (Cout + tile_out - 1) / tile_out, images);
  return k::with_kernel_size(ks, [&](auto size) {
    const auto kernel = bias ? k::sep_conv_forward_for<float, float, true>(size, W)
                             : k::sep_conv_forward_for<float, float, false>(size, W);
    return launch(kernel, grid, dim3(k::kPixelLanes * tile_out / 4), 0, x, dw, pw, bias, out, N, C, Cout, H, W, ks, d);
  }) ? 0 : 1;
}

int depthwise_planes(const float* in, const float* dw, float* out, int planes, int C, int H, int W, int ks, int d,
                     int input_grad, unsigned int blocks_x, unsigned int blocks_y) {
  return k::with_kernel_size(ks, [&](auto size) {
    constexpr int K = decltype(size)::value;
    const auto kernel = input_grad ? k::depthwise_planes_kernel<float, float, true, K>
                                   : k::depthwise_planes_kernel<float, float, false, K>;
    return launch(kernel, dim3(blocks_x, blocks_y), dim3(k::kThreads), 0, in, dw, out, planes, C, H, W, ks, d);
  }) ? 0 : 1;
}

// grad_dw: C x ks x ks, zeroed; spans: the blocks per channel.
int depthwise_weight_grad(const float* gy, const float* x, float* grad_dw, int N, int C, int H, int W, int ks, int d,
                          unsigned int spans) {
  if (ks != 3 && ks != 5) {
    return launch(k::depthwise_weight_grad_any_kernel<float, float>, dim3(C, ks * ks), dim3(k::kThreads), 0, gy, x,
                  grad_dw, N, C, H, W, ks, d) ? 0 : 1;
  }
  const int span = static_cast<int>(((static_cast<int64_t>(H) * W + spans - 1) / spans + 3) / 4 * 4);  // as the host
  const auto kernel = ks == 3 ? k::depthwise_weight_grad_kernel<float, float, 3>
                              : k::depthwise_weight_grad_kernel<float, float, 5>;
  return launch(kernel, dim3(C, spans), dim3(k::kThreads), 0, gy, x, grad_dw, N, C, H, W, d, span) ? 0 : 1;
}

int upsample_add(const float* high, const float* low, float* out, int64_t planes, int H, int W, int h, int w,
                 unsigned int blocks_x, unsigned int blocks_y, unsigned int threads_x, unsigned int threads_y) {
  return launch(k::upsample_add_kernel<float, float, int32_t>, dim3(blocks_x, blocks_y), dim3(threads_x, threads_y), 0,
                high, low, out, planes, H, W, h, w) ? 0 : 1;
}

int upsample_add_backward_low(const float* grad, float* grad_low, int64_t planes, int H, int W, int h, int w,
                              unsigned int blocks_x, unsigned int blocks_y, unsigned int threads_x,
                              unsigned int threads_y) {
  return launch(k::upsample_add_backward_low_kernel<float, float, int32_t>, dim3(blocks_x, blocks_y),
                dim3(threads_x, threads_y), 0, grad, grad_low, planes, H, W, h, w) ? 0 : 1;
}

// counts: K x K int64, added to; bad: one int, zeroed; staged: the staged kernel (logits upsampled).
int confusion_from_logits(const double* logits, const int64_t* target, int64_t* counts, int64_t N, int64_t K,
                          int64_t h, int64_t w, int64_t H, int64_t W, int64_t ignore_index, int shared_counts,
                          int staged, int* bad, unsigned int bands, unsigned int images, unsigned int threads) {
  auto* cells = reinterpret_cast<unsigned long long*>(counts);
  if (staged) {
    const size_t shared_bytes = k::staged_shared_bytes(K, w, sizeof(double), shared_counts != 0);
    return launch(k::confusion_from_staged_rows_kernel<double, double>, dim3(bands, images), dim3(threads),
                  shared_bytes, logits, target, cells, N, K, h, w, H, W, ignore_index, shared_counts != 0, bad) ? 0 : 1;
  }
  const size_t shared_bytes = shared_counts ? K * K * sizeof(unsigned int) : 0;
  return launch(k::confusion_from_logits_kernel<double, double>, dim3(bands, images), dim3(threads), shared_bytes,
                logits, target, cells, N, K, h, w, H, W, ignore_index, shared_counts != 0, bad) ? 0 : 1;
}

int confusion_from_labels(const int64_t* pred, const int64_t* target, int64_t* counts, int64_t n, int64_t K,
                          int64_t ignore_index, int shared_counts, int* bad, unsigned int blocks,
                          unsigned int threads) {
  const size_t shared_bytes = shared_counts ? K * K * sizeof(unsigned int) : 0;
  return launch(k::confusion_from_labels_kernel<int64_t>, dim3(blocks), dim3(threads), shared_bytes, pred, target,
                reinterpret_cast<unsigned long long*>(counts), n, K, ignore_index, shared_counts != 0, bad) ? 0 : 1;
}

// A kernel whose barrier only some threads reach: the emulation must report it, not hang.
static __global__ void divergent_barrier_kernel() {
  if (threadIdx.x % 2 == 0) __syncthreads();
}

void set_barrier_timeout_ms(int ms) { cuda_on_cpu::barrier_timeout = std::chrono::milliseconds(ms); }

int divergent_barrier() { return launch(divergent_barrier_kernel, dim3(1), dim3(64), 0) ? 0 : 1; }

}  // extern "C"
