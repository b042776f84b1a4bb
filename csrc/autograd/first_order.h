// The native backward kernels have no derivatives of their own: a second derivative through them
// (backward with create_graph=True, which runs the backward with grad mode on) would silently be
// zero, so it is refused.
#pragma once

#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

namespace nasfast {

inline void refuse_second_derivative(const char* op) {
  TORCH_CHECK(!at::GradMode::is_enabled(), "nasfast::", op,
              ": second derivatives (backward with create_graph=True) are not implemented; build the module "
              "with fused=False (the pure-PyTorch ops) for them");
}

}  // namespace nasfast
