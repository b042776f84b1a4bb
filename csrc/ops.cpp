// The schemas of every nasfast op, in one place. The folders hold the kernels, by the dispatch key
// they register for:
//   cpu/            CPU: every op (and memory_cache.cpp, the CPU allocator that keeps freed blocks,
//                   whose two ops are CompositeImplicitAutograd: they take no tensor)
//   cuda/           CUDA, built with nvcc: upsample_add, sep_conv, sep_conv_bn_relu, confusion_matrix_update_
//   cuda_fallback/  CUDA, built without nvcc: the same ops made of ATen ops, at the references' speed
//   composite/      CompositeExplicitAutograd: upsample_cross_entropy made of ATen ops, for the GPU
//   autograd/       Autograd: the differentiable ops' backward passes
// The kernels themselves are torch-free headers in kernels/ (.h: CPU loops and per-element code
// shared with CUDA; .cuh: CUDA kernels); tools/ compiles them alone and runs the CUDA kernels on
// the CPU, for the tests.
#include <torch/library.h>

TORCH_LIBRARY(nasfast, m) {
  // high + bilinear upsampling of low to high's size (align_corners=False). Differentiable.
  m.def("upsample_add(Tensor high, Tensor low) -> Tensor");
  m.def("upsample_add_backward_low(Tensor grad, SymInt[] low_size) -> Tensor");

  // Separable convolution: depthwise k x k (C x 1 x k x k, "same" padding, dilation) then
  // pointwise 1 x 1 (Cout x C x 1 x 1), no biases. Differentiable.
  m.def("sep_conv(Tensor x, Tensor depthwise, Tensor pointwise, int dilation) -> Tensor");
  m.def("sep_conv_backward(Tensor grad, Tensor x, Tensor depthwise, Tensor pointwise, int dilation, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Inference: relu(sep_conv(x, depthwise, pointwise) + bias), with BN folded into pointwise and bias.
  m.def("sep_conv_bn_relu(Tensor x, Tensor depthwise, Tensor pointwise, Tensor bias, int dilation) -> Tensor");

  // matrix (K x K int64, row = label) += counts of (label, argmax of logits upsampled to the label
  // size) for float N x K x h x w scores, or of (label, prediction) for integer N x H x W scores;
  // pixels labelled ignore_index are skipped.
  m.def("confusion_matrix_update_(Tensor(a!) matrix, Tensor scores, Tensor target, int ignore_index) -> ()");

  // The mean over pixels whose label is not ignore_index of the softmax cross-entropy of N x K x h x w
  // logits bilinearly upsampled (align_corners=False) to the N x H x W int64 labels' size: as
  // F.cross_entropy(F.interpolate(logits, ...), target, ignore_index=ignore_index), NaN when no pixel
  // counts. Differentiable in logits.
  m.def("upsample_cross_entropy(Tensor logits, Tensor target, int ignore_index) -> Tensor");
  m.def("upsample_cross_entropy_backward(Tensor grad, Tensor logits, Tensor target, int ignore_index) -> Tensor");

  // CPU tensors' memory: frees the blocks kept, then keeps freed blocks of 1 MiB or more for reuse
  // by size, up to `capacity` bytes (0, the default: none); returns the capacity before. And the
  // bytes kept now.
  m.def("set_cpu_memory_cache(int capacity) -> int");
  m.def("cpu_memory_cached() -> int");
}
