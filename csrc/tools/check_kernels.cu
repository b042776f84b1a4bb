// Instantiates every CUDA kernel of csrc/kernels for float, double and a 16-bit storage type, so
// that compilers without torch check the device code (tests/test_build.py): clang++-16 for sm_62,
// what the Jetson TX2's own nvcc must accept, and the local nvcc for a current GPU. Not part of
// the library.

#include "../kernels/confusion.cuh"
#include "../kernels/separable.cuh"
#include "../kernels/upsample_add.cuh"

namespace nasfast {
namespace kernels {

// Stands for c10::Half and c10::BFloat16 (cuda_fp16.h needs CCCL headers that this CUDA root
// lacks): a 16-bit storage type (bfloat16's layout) converting to and from float.
struct Half16 {
  unsigned short bits;
  Half16() = default;
  __device__ Half16(float value) {
    union { float f; unsigned int u; } cast;
    cast.f = value;
    bits = static_cast<unsigned short>(cast.u >> 16);
  }
  __device__ operator float() const {
    union { float f; unsigned int u; } cast;
    cast.u = static_cast<unsigned int>(bits) << 16;
    return cast.f;
  }
};

#define NASFAST_INSTANTIATE_UPSAMPLE_ADD(T, Acc, Index)                                                             \
  template __global__ void upsample_add_kernel<T, Acc, Index>(const T*, const T*, T*, int64_t, Index, Index, Index,  \
                                                              Index);                                               \
  template __global__ void upsample_add_backward_low_kernel<T, Acc, Index>(const T*, T*, int64_t, Index, Index,      \
                                                                           Index, Index);

#define NASFAST_INSTANTIATE_FORWARD(T, Acc, K, kQuads)                                                              \
  template __global__ void sep_conv_forward_kernel<T, Acc, true, K, kQuads>(const T*, const T*, const T*, const T*, \
                                                                            T*, int, int, int, int, int, int, int); \
  template __global__ void sep_conv_forward_kernel<T, Acc, false, K, kQuads>(const T*, const T*, const T*,         \
                                                                             const T*, T*, int, int, int, int, int, \
                                                                             int, int);

// K: the kernel size the separable kernels unroll for (0: any).
#define NASFAST_INSTANTIATE_SEPARABLE(T, Acc, K)                                                                    \
  NASFAST_INSTANTIATE_FORWARD(T, Acc, K, false)                                                                     \
  template __global__ void depthwise_planes_kernel<T, Acc, false, K>(const T*, const T*, T*, int, int, int, int,    \
                                                                     int, int);                                     \
  template __global__ void depthwise_planes_kernel<T, Acc, true, K>(const T*, const T*, T*, int, int, int, int,     \
                                                                    int, int);

#define NASFAST_INSTANTIATE(T, Acc)                                                                                 \
  NASFAST_INSTANTIATE_UPSAMPLE_ADD(T, Acc, int32_t)                                                                 \
  NASFAST_INSTANTIATE_UPSAMPLE_ADD(T, Acc, int64_t)                                                                 \
  template __global__ void confusion_from_logits_kernel<T, Acc>(const T*, const int64_t*, unsigned long long*,       \
                                                                int64_t, int64_t, int64_t, int64_t, int64_t,         \
                                                                int64_t, int64_t, bool, int*);                       \
  template __global__ void confusion_from_staged_rows_kernel<T, Acc>(const T*, const int64_t*, unsigned long long*,  \
                                                                     int, int, int, int, int, int, int64_t, bool,    \
                                                                     int*);                                          \
  NASFAST_INSTANTIATE_SEPARABLE(T, Acc, 0)                                                                          \
  NASFAST_INSTANTIATE_SEPARABLE(T, Acc, 3)                                                                          \
  NASFAST_INSTANTIATE_SEPARABLE(T, Acc, 5)                                                                          \
  NASFAST_INSTANTIATE_FORWARD(T, Acc, 3, true)                                                                      \
  NASFAST_INSTANTIATE_FORWARD(T, Acc, 5, true)                                                                      \
  template __global__ void depthwise_weight_grad_kernel<T, Acc, 3>(const T*, const T*, Acc*, int, int, int, int,    \
                                                                   int, int);                                       \
  template __global__ void depthwise_weight_grad_kernel<T, Acc, 5>(const T*, const T*, Acc*, int, int, int, int,    \
                                                                   int, int);                                       \
  template __global__ void depthwise_weight_grad_any_kernel<T, Acc>(const T*, const T*, Acc*, int, int, int, int,   \
                                                                    int, int);

NASFAST_INSTANTIATE(float, float)
NASFAST_INSTANTIATE(double, double)
NASFAST_INSTANTIATE(Half16, float)

template __global__ void confusion_from_labels_kernel<int64_t>(const int64_t*, const int64_t*, unsigned long long*,
                                                               int64_t, int64_t, int64_t, bool, int*);

}  // namespace kernels
}  // namespace nasfast
