// Launch helpers of the CUDA registrations (host code, C++14). c10/cuda only: no cuBLAS or
// cuSPARSE headers needed to compile the library.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

namespace nasfast {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over n elements.
inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, threads), 65535)));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace nasfast
