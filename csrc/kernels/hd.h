// IR_HD marks math shared by the CPU and CUDA builds; IR_INLINE forces inlining so that
// compile-time sizes propagate into the loops of small kernels; IR_SIMD_SUM vectorizes a sum;
// IR_UNROLL unrolls a loop over layers in device code (a CUDA thread's arrays stay in registers
// only when every index is a constant).
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
