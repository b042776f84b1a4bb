// The schemas of every nasfast op. Backends register kernels in cpu/, cuda/ and autograd/.
#include <torch/library.h>

TORCH_LIBRARY(nasfast, m) {
  m.def("upsample_add(Tensor high, Tensor low) -> Tensor");
  m.def("upsample_add_backward_low(Tensor grad, SymInt[] low_size) -> Tensor");
}
