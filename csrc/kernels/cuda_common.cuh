// Device helpers shared by the CUDA kernels (plain CUDA C++14, no torch).
#pragma once
#include "common.h"

namespace nasfast {
namespace kernels {

constexpr int kThreads = 256;

// A grid-stride loop's index type: 64-bit, so that tensors of more than 2^31 elements work.
__device__ inline int64_t global_thread() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ inline int64_t grid_threads() { return static_cast<int64_t>(blockDim.x) * gridDim.x; }

#ifndef NASFAST_CUDA_ON_CPU  // csrc/tools/cuda_on_cpu.h, which runs the kernels on the CPU, has its own
// The block's dynamic shared memory as an array of T (of at most 8-byte alignment). One
// declaration for every kernel: nvcc rejects the same extern __shared__ name with two types.
template <typename T>
__device__ inline T* dynamic_shared() {
  extern __shared__ double nasfast_dynamic_shared[];
  return reinterpret_cast<T*>(nasfast_dynamic_shared);
}
#endif

__device__ inline void atomic_add(float* address, float value) { atomicAdd(address, value); }

__device__ inline void atomic_add(double* address, double value) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 600
  atomicAdd(address, value);
#else
  unsigned long long* bits = reinterpret_cast<unsigned long long*>(address);
  unsigned long long old = *bits, assumed;
  do {
    assumed = old;
    old = atomicCAS(bits, assumed, __double_as_longlong(value + __longlong_as_double(assumed)));
  } while (assumed != old);
#endif
}

}  // namespace kernels
}  // namespace nasfast
