// The schemas of every nasfast op. Backends register kernels in cpu/, cuda/ and autograd/.
#include <torch/library.h>

TORCH_LIBRARY(nasfast, m) {
  m.def("upsample_add(Tensor high, Tensor low) -> Tensor");
  m.def("upsample_add_backward_low(Tensor grad, SymInt[] low_size) -> Tensor");
  // matrix (K x K int64, row = label) += counts of (label, argmax of upsampled logits) or
  // (label, predicted label); pixels labelled ignore_index are skipped.
  m.def("confusion_matrix_update_(Tensor(a!) matrix, Tensor scores, Tensor target, int ignore_index) -> ()");
}
