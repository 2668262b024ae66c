// IR_HD marks math shared by the CPU and CUDA builds; IR_INLINE forces inlining so that
// compile-time sizes propagate into the loops of small kernels.
#pragma once
#ifdef __CUDACC__
#define IR_HD __host__ __device__
#define IR_INLINE __forceinline__
#else
#define IR_HD
#define IR_INLINE inline __attribute__((always_inline))
#endif
