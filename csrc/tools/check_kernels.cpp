// Instantiates every CPU kernel template of csrc/kernels for float and double, so that a plain
// C++14 compiler without torch (g++ -std=c++14, see tests/test_build.py) checks the headers the
// Jetson's older toolchain must compile. Not part of the library build.
#include "../kernels/confusion.h"
#include "../kernels/cross_entropy.h"
#include "../kernels/separable.h"
#include "../kernels/upsample_add.h"

namespace nasfast {
namespace kernels {

#define NASFAST_INSTANTIATE(T)                                                                                      \
  template void make_taps<T>(LinearTap<T>*, int64_t, int64_t);                                                      \
  template void upsample_add_plane<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, const LinearTap<T>*,        \
                                      const LinearTap<T>*, T*);                                                     \
  template void upsample_add_backward_low_plane<T>(const T*, T*, int64_t, int64_t, int64_t, const LinearTap<T>*,     \
                                                   const LinearTap<T>*, T*);                                        \
  template void confusion_from_logits_rows<T, int64_t>(const T*, const int64_t*, int64_t*, int64_t, int64_t,         \
                                                       int64_t, int64_t, int64_t, int64_t, const LinearTap<T>*,     \
                                                       const LinearTap<T>*, int64_t, int64_t, T*, int64_t*);        \
  template void depthwise_band<T>(const T*, const T*, T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,      \
                                  int);                                                                             \
  template void depthwise_plane_input_grad<T>(const T*, const T*, T*, T*, T*, int64_t, int64_t, int64_t, int64_t,    \
                                              int);                                                                 \
  template void depthwise_weight_grad<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int);          \
  template void pointwise_tiled<T, 32>(const T*, const T*, T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void pointwise_tiled<T, 64>(const T*, const T*, T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void bias_relu_rows<T>(T*, const T*, int64_t, int64_t, int64_t);                                         \
  template T depthwise_at<T, T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);          \
  template T depthwise_input_grad_at<T, T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void cross_entropy_image<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t,        \
                                       int64_t, const LinearTap<T>*, const LinearTap<T>*, T*, double*, int64_t*,    \
                                       int64_t*);                                                                   \
  template void cross_entropy_backward_image<T>(const T*, const int64_t*, T*, T, int64_t, int64_t, int64_t, int64_t,  \
                                                int64_t, int64_t, const LinearTap<T>*, const LinearTap<T>*, T*,     \
                                                int64_t*, int64_t*);

NASFAST_INSTANTIATE(float)
NASFAST_INSTANTIATE(double)

template void confusion_from_labels<int64_t, int64_t>(const int64_t*, const int64_t*, int64_t*, int64_t, int64_t,
                                                      int64_t);

}  // namespace kernels
}  // namespace nasfast
