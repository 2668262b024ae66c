// IR_HD marks math shared by the CPU and CUDA builds; IR_INLINE forces inlining so that
// compile-time sizes propagate into the loops of small kernels; IR_SIMD_SUM vectorizes a sum;
// IR_UNROLL unrolls a loop over layers in device code (a CUDA thread's arrays stay in registers
// only when every index is a constant). On the CPU, SimdVec is a SIMD vector as one value.
#pragma once
#ifdef __CUDACC__
#define IR_HD __host__ __device__
#define IR_INLINE __forceinline__
#define IR_SIMD_SUM(acc)
#define IR_UNROLL _Pragma("unroll")
#else
#define IR_HD
#define IR_INLINE inline __attribute__((always_inline))
// Lets the compiler reassociate one sum into SIMD partial sums (a fixed order for a given
// build and size, so results stay reproducible).
#define IR_PRAGMA(x) _Pragma(#x)
#define IR_SIMD_SUM(acc) IR_PRAGMA(omp simd reduction(+ : acc))
#define IR_UNROLL
#endif

#ifndef __CUDACC__
#include <cstring>

namespace implicitreg {
namespace kernels {

// W values of T as one SIMD value (GCC/Clang vector extension): CPU code that keeps its sums
// in vector registers, whatever the compiler would do with an array of W.
template <class T, int W>
using SimdVec [[gnu::vector_size(W * sizeof(T))]] = T;

// Such a value from, or to, W consecutive T at any alignment.
template <class V, class T>
inline V simd_load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V, class T>
inline void simd_store(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

}  // namespace kernels
}  // namespace implicitreg
#endif
