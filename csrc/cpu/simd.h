// x86-64 builds target the baseline ISA (SSE2). The hot loops of the CPU kernels are compiled
// twice more, for x86-64-v3 (AVX2, FMA) and x86-64-v4 (AVX-512), and the variant the processor
// supports is picked when the library loads (GCC function multiversioning). Elsewhere (aarch64
// for the Jetson, clang, MSVC) the attribute is empty.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
#define NASFAST_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// The widest vectors of the clone that runs, in bytes, for kernels/separable_tiles.h: 64 with
// AVX-512, 32 with AVX2 + FMA, 0 without (the tiles need one or the other).
inline int vector_bytes() {
  return __builtin_cpu_supports("x86-64-v4") ? 64 : __builtin_cpu_supports("x86-64-v3") ? 32 : 0;
}
#else
#define NASFAST_CPU_CLONES
inline int vector_bytes() { return 0; }
#endif
