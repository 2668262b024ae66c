// Fused gradient-descent step of a deep matrix factorization E = W_N ... W_1 on a *pack* of
// L problems at once.
//
// Layout: every matrix of a pack is stored [rows][cols][L], the lane (problem) index
// innermost, so each scalar operation of the math below is one SIMD operation over L
// different problems. Lanes never mix: a problem's arithmetic is the same whichever lane,
// pack or batch size it lands in.
//
// Math (paper notation, loss l(E), G = dl/dE):
//   forward   P_1 = W_1,  P_j = W_j P_{j-1},  E = P_N
//   residual  completion: G = mask * (E - target);  sensing: r_k = <A_k, E> - y_k, G = sum r_k A_k
//   backward  H_N = G,  dW_j = H_j P_{j-1}^T (dW_1 = H_1),  H_{j-1} = W_j^T H_j
// All gradients come from the same iterate; new factors go to a second buffer, so a
// non-finite update can be refused and the last finite iterate kept. Plain gradient descent
// is fused into the backward pass (each new entry written as its gradient is summed); the
// other optimizers (kernels/optimizer.h) get the whole gradient in that buffer first.
//
// `Dims` is either StaticDims<D> (every d_j = D, known at compile time, so the loops unroll
// and a small problem lives in registers) or RuntimeDims.
#pragma once
#include <cmath>
#include <cstdint>

#include "implicitreg/dmf_step.h"
#include "kernels/freeze.h"
#include "kernels/gemm.h"
#include "kernels/hd.h"
#include "kernels/optimizer.h"

namespace implicitreg {
namespace kernels {

template <int D>
struct StaticDims {
  static constexpr bool kStatic = true;
  static constexpr int kWidth = D;
  IR_HD constexpr int operator[](int) const { return D; }
};

struct RuntimeDims {
  static constexpr bool kStatic = false;
  static constexpr int kWidth = 0;
  const int* d;
  IR_HD int operator[](int j) const { return d[j]; }
};

// Lane-parallel products of a pack with runtime sizes, register-blocked: for an IB x JB block of
// outputs, out(i, j)[l] = sum_k a(i, k)[l] * b(k, j)[l], k ascending, each a(i, k) and b(k, j)
// vector loaded once per k for IB * JB multiply-adds. a(i, k) and b(k, j) return pointers to L
// lanes; store(i, j, acc) receives each finished sum. Blocking changes no result: every
// output is the same sum in the same order.
template <class T, int L, int IB, int JB, class FA, class FB, class Store>
IR_HD IR_INLINE void pack_block(int i0, int j0, int K, FA a, FB b, Store store) {
  T acc[IB][JB][L];
  for (int ib = 0; ib < IB; ++ib)
    for (int jb = 0; jb < JB; ++jb)
      for (int l = 0; l < L; ++l) acc[ib][jb][l] = a(i0 + ib, 0)[l] * b(0, j0 + jb)[l];
  for (int k = 1; k < K; ++k)
    for (int ib = 0; ib < IB; ++ib)
      for (int jb = 0; jb < JB; ++jb)
        for (int l = 0; l < L; ++l) acc[ib][jb][l] += a(i0 + ib, k)[l] * b(k, j0 + jb)[l];
  for (int ib = 0; ib < IB; ++ib)
    for (int jb = 0; jb < JB; ++jb) store(i0 + ib, j0 + jb, acc[ib][jb]);
}

template <class T, int L, class FA, class FB, class Store>
IR_HD IR_INLINE void pack_products(int M, int K, int N, FA a, FB b, Store store) {
  constexpr int IB = 2, JB = 4;
  int i = 0;
  for (; i + IB <= M; i += IB) {
    int j = 0;
    for (; j + JB <= N; j += JB) pack_block<T, L, IB, JB>(i, j, K, a, b, store);
    for (; j < N; ++j) pack_block<T, L, IB, 1>(i, j, K, a, b, store);
  }
  for (; i < M; ++i) {
    int j = 0;
    for (; j + JB <= N; j += JB) pack_block<T, L, 1, JB>(i, j, K, a, b, store);
    for (; j < N; ++j) pack_block<T, L, 1, 1>(i, j, K, a, b, store);
  }
}

#ifndef __CUDACC__
// Products of CPU packs whose sizes are all D, known at compile time, with one 64-byte vector
// per entry: 4 x 4 blocks of outputs as vector values, which the compiler keeps in
// registers, each a(i, k) and b(k, j) loaded once per block and k. The loops of the generic
// forms below kept one partial sum per output instead, a chain of D dependent multiply-adds
// reading both operands from memory (16x16 depth 3 float64 on AMD Zen 4: 1.35x the steps
// per second; 8x8: 1.4x). Same sums in the same order, with k unrolled whole like theirs, so
// that the compiler fuses the same multiply-adds: the same results bit for bit (a rolled k
// loop rounds the first product of each sum where the unrolled forms round the second).
// Not without AVX-512, where a 64-byte entry is 2 or 4 registers and a block would not fit in
// 16 of them; nor under the address sanitizer, whose instrumentation of the unrolled blocks
// took 1.6x the build time of the sanitized module (it checks the generic loops).
template <class T, int L, int D>
constexpr int kRegisterBlock =
#if defined(__AVX512F__) && !defined(__SANITIZE_ADDRESS__)
    L * int(sizeof(T)) == 64 && D >= 8 && D % 4 == 0 ? 4 : 0;
#else
    0;
#endif
template <class T, int L, int D, class FA, class FB, class Store>
IR_INLINE void pack_products_in_registers(FA a, FB b, Store store) {
  constexpr int Blk = kRegisterBlock<T, L, D>;
  using V = SimdVec<T, L>;
  for (int i0 = 0; i0 < D; i0 += Blk)
    for (int j0 = 0; j0 < D; j0 += Blk) {
      V acc[Blk][Blk], x[Blk];
#pragma GCC unroll 4
      for (int ib = 0; ib < Blk; ++ib) x[ib] = simd_load<V>(a(i0 + ib, 0));
#pragma GCC unroll 4
      for (int jb = 0; jb < Blk; ++jb) {
        const V y = simd_load<V>(b(0, j0 + jb));
#pragma GCC unroll 4
        for (int ib = 0; ib < Blk; ++ib) acc[ib][jb] = x[ib] * y;
      }
#pragma GCC unroll 16
      for (int k = 1; k < D; ++k) {  // D <= 16 (the compile-time widths)
#pragma GCC unroll 4
        for (int ib = 0; ib < Blk; ++ib) x[ib] = simd_load<V>(a(i0 + ib, k));
#pragma GCC unroll 4
        for (int jb = 0; jb < Blk; ++jb) {
          const V y = simd_load<V>(b(k, j0 + jb));
#pragma GCC unroll 4
          for (int ib = 0; ib < Blk; ++ib) acc[ib][jb] += x[ib] * y;
        }
      }
#pragma GCC unroll 4
      for (int ib = 0; ib < Blk; ++ib)
#pragma GCC unroll 4
        for (int jb = 0; jb < Blk; ++jb) store(i0 + ib, j0 + jb, acc[ib][jb]);
    }
}
// C (D x D) = A B, or A^T B, with a(i, k) the lanes of the left factor's entry (i, k).
template <class T, int L, int D, class FA>
IR_INLINE void pack_mm_in_registers(T* __restrict C, FA a, const T* __restrict B) {
  pack_products_in_registers<T, L, D>(
      a, [&](int k, int j) { return B + (k * D + j) * L; },
      [&](int i, int j, SimdVec<T, L> acc) { simd_store(C + (i * D + j) * L, acc); });
}
#else
template <class T, int L, int D>
constexpr int kRegisterBlock = 0;
#endif

// C (M x N) = A (M x K) * B (K x N). D (here and below): M = K = N = D at compile time, or 0.
template <class T, int L, bool Block, int D = 0>
IR_HD IR_INLINE void pack_mm(T* __restrict C, const T* __restrict A, const T* __restrict B, int M,
                             int K, int N) {
#ifndef __CUDACC__
  if constexpr (kRegisterBlock<T, L, D> > 0) {
    pack_mm_in_registers<T, L, D>(C, [&](int i, int k) { return A + (i * K + k) * L; }, B);
    return;
  }
#endif
  if constexpr (L == 1 && Block) {  // one big problem (CPU only): the packed product
    gemm::product(C, A, K, 1, B, N, 1, M, K, N);
    return;
  }
  if constexpr (L == 1) {  // one small problem: rows of C accumulate, contiguous in j
    for (int i = 0; i < M; ++i) {
      T* c = C + i * N;
      for (int j = 0; j < N; ++j) c[j] = A[i * K] * B[j];
      for (int k = 1; k < K; ++k) {
        const T a = A[i * K + k];
        const T* b = B + k * N;
        for (int j = 0; j < N; ++j) c[j] += a * b[j];
      }
    }
    return;
  }
  if constexpr (!Block) {  // compile-time sizes: the compiler unrolls this whole
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        T acc[L];
        for (int l = 0; l < L; ++l) acc[l] = A[(i * K) * L + l] * B[j * L + l];
        for (int k = 1; k < K; ++k)
          for (int l = 0; l < L; ++l) acc[l] += A[(i * K + k) * L + l] * B[(k * N + j) * L + l];
        for (int l = 0; l < L; ++l) C[(i * N + j) * L + l] = acc[l];
      }
    return;
  }
  pack_products<T, L>(
      M, K, N, [&](int i, int k) { return A + (i * K + k) * L; },
      [&](int k, int j) { return B + (k * N + j) * L; },
      [&](int i, int j, const T* acc) {
        for (int l = 0; l < L; ++l) C[(i * N + j) * L + l] = acc[l];
      });
}

// C (M x N) = A^T B with A (K x M), B (K x N)
template <class T, int L, bool Block, int D = 0>
IR_HD IR_INLINE void pack_mm_tn(T* __restrict C, const T* __restrict A, const T* __restrict B,
                                int M, int K, int N) {
#ifndef __CUDACC__
  if constexpr (kRegisterBlock<T, L, D> > 0) {
    pack_mm_in_registers<T, L, D>(C, [&](int i, int k) { return A + (k * M + i) * L; }, B);
    return;
  }
#endif
  if constexpr (L == 1 && Block) {
    gemm::product(C, A, 1, M, B, N, 1, M, K, N);
    return;
  }
  if constexpr (L == 1) {
    for (int i = 0; i < M; ++i) {
      T* c = C + i * N;
      for (int j = 0; j < N; ++j) c[j] = A[i] * B[j];
      for (int k = 1; k < K; ++k) {
        const T a = A[k * M + i];
        const T* b = B + k * N;
        for (int j = 0; j < N; ++j) c[j] += a * b[j];
      }
    }
    return;
  }
  if constexpr (!Block) {
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        T acc[L];
        for (int l = 0; l < L; ++l) acc[l] = A[i * L + l] * B[j * L + l];
        for (int k = 1; k < K; ++k)
          for (int l = 0; l < L; ++l) acc[l] += A[(k * M + i) * L + l] * B[(k * N + j) * L + l];
        for (int l = 0; l < L; ++l) C[(i * N + j) * L + l] = acc[l];
      }
    return;
  }
  pack_products<T, L>(
      M, K, N, [&](int i, int k) { return A + (k * M + i) * L; },
      [&](int k, int j) { return B + (k * N + j) * L; },
      [&](int i, int j, const T* acc) {
        for (int l = 0; l < L; ++l) C[(i * N + j) * L + l] = acc[l];
      });
}

// The L lanes of one entry: Wn = W - lr * grad, fin accumulating probes of Wn (NaN in a lane
// as soon as one of its new entries is not finite); unfused, Wn = grad, the gradient, for the
// optimizer. One loop over the lanes, which the compiler vectorizes whole (a call per lane
// was vectorized two lanes at a time: half the steps per second at 2x2). Simd: the loop is
// declared free of dependences. Inside the products of runtime sizes and of compile-time
// sizes from 8 (kSimdStoreFrom) that are not register-blocked (builds without AVX-512) GCC
// ran it lane by lane otherwise (steps per second with it: 1.2x at 16x16 float64, 1.6x
// float32, 1.3x at 8x8); below 8 the pragma made the unrolled code slower (0.86x at 4x4).
constexpr int kSimdStoreFrom = 8;
template <bool Fused, class T, int L, bool Simd = false>
IR_HD IR_INLINE void pack_store(T* Wn, const T* W, const T* lr, T* fin, const T* grad) {
  if constexpr (!Fused) {
    for (int l = 0; l < L; ++l) Wn[l] = grad[l];
  } else if constexpr (Simd) {
#pragma omp simd
    for (int l = 0; l < L; ++l) {
      const T w = W[l] - lr[l] * grad[l];
      Wn[l] = w;
      fin[l] += probe(w);
    }
  } else {
    for (int l = 0; l < L; ++l) {
      const T w = W[l] - lr[l] * grad[l];
      Wn[l] = w;
      fin[l] += probe(w);
    }
  }
}

// Wn (M x N) = W - lr * (H P^T) with H (M x K), P (N x K), through pack_store.
template <bool Fused, class T, int L, bool Block, bool Simd, int D = 0>
IR_HD IR_INLINE void pack_update_nt(T* __restrict Wn, const T* __restrict W, const T* __restrict H,
                                    const T* __restrict P, const T* __restrict lr,
                                    T* __restrict fin, int M, int K, int N) {
#ifndef __CUDACC__
  if constexpr (kRegisterBlock<T, L, D> > 0) {
    using V = SimdVec<T, L>;
    const V rate = simd_load<V>(lr);
    V probes = simd_load<V>(fin);
    pack_products_in_registers<T, L, D>([&](int i, int k) { return H + (i * K + k) * L; },
                                        [&](int k, int j) { return P + (j * K + k) * L; },
                                        [&](int i, int j, V grad) {
                                          T* wn = Wn + (i * N + j) * L;
                                          if constexpr (Fused) {
                                            const V w =
                                                simd_load<V>(W + (i * N + j) * L) - rate * grad;
                                            simd_store(wn, w);
                                            probes += probe(w);
                                          } else {
                                            simd_store(wn, grad);
                                          }
                                        });
    simd_store(fin, probes);
    return;
  }
#endif
  if constexpr (L == 1 && Block) {  // the gradient into Wn, then the update in place
    gemm::product(Wn, H, K, 1, P, 1, K, M, K, N);
    if constexpr (Fused)
      for (int e = 0; e < M * N; ++e) {
        const T g = Wn[e];
        pack_store<true, T, 1>(Wn + e, W + e, lr, fin, &g);
      }
  } else if constexpr (!Block) {  // compile-time sizes, L = 1 included
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        T acc[L];
        for (int l = 0; l < L; ++l) acc[l] = H[(i * K) * L + l] * P[(j * K) * L + l];
        for (int k = 1; k < K; ++k)
          for (int l = 0; l < L; ++l) acc[l] += H[(i * K + k) * L + l] * P[(j * K + k) * L + l];
        pack_store<Fused, T, L, Simd>(Wn + (i * N + j) * L, W + (i * N + j) * L, lr, fin, acc);
      }
  } else if constexpr (L == 1) {  // dot products of contiguous rows, vectorized as a reduction
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        const T* h = H + i * K;
        const T* p = P + j * K;
        T acc = T(0);
        IR_SIMD_SUM(acc)
        for (int k = 0; k < K; ++k) acc += h[k] * p[k];
        pack_store<Fused, T, L>(Wn + i * N + j, W + i * N + j, lr, fin, &acc);
      }
  } else {
    pack_products<T, L>(
        M, K, N, [&](int i, int k) { return H + (i * K + k) * L; },
        [&](int k, int j) { return P + (j * K + k) * L; },
        [&](int i, int j, const T* acc) {
          pack_store<Fused, T, L, Simd>(Wn + (i * N + j) * L, W + (i * N + j) * L, lr, fin, acc);
        });
  }
}

// Wn = W - lr * H (the first factor, whose right cofactor P_0 is the identity); unfused, H
template <bool Fused, class T, int L>
IR_HD IR_INLINE void pack_update_id(T* __restrict Wn, const T* __restrict W, const T* __restrict H,
                                    const T* __restrict lr, T* __restrict fin, int size) {
  for (int e = 0; e < size; ++e) pack_store<Fused, T, L>(Wn + e * L, W + e * L, lr, fin, H + e * L);
}

// Buffers of one pack. Offsets are derived from the dims, so with StaticDims they are
// compile-time multiples of the layer index.
template <class T, int L, class Dims>
struct PackLayout {
  Dims d;
  int depth;
  IR_HD int factor_size(int j) const { return d[j] * d[j - 1]; }
  IR_HD int max_rows() const {
    int r = d[1];
    for (int j = 2; j <= depth; ++j) r = d[j] > r ? d[j] : r;
    return r;
  }
  // Closed forms for compile-time sizes: a CUDA thread's buffers then stay in registers.
  IR_HD std::int64_t factors_size() const {
    if constexpr (Dims::kStatic) return std::int64_t(depth) * d[0] * d[0] * L;
    std::int64_t s = 0;
    for (int j = 1; j <= depth; ++j) s += factor_size(j);
    return s * L;
  }
  IR_HD std::int64_t factor_offset(int j) const {  // j = 1..depth
    if constexpr (Dims::kStatic) return std::int64_t(j - 1) * d[0] * d[0] * L;
    std::int64_t s = 0;
    for (int k = 1; k < j; ++k) s += factor_size(k);
    return s * L;
  }
  // prefix products P_2..P_N, each (d_j x n); P_1 aliases W_1
  IR_HD std::int64_t prefix_offset(int j) const {
    if constexpr (Dims::kStatic) return std::int64_t(j > 2 ? j - 2 : 0) * d[0] * d[0] * L;
    std::int64_t s = 0;
    for (int k = 2; k < j; ++k) s += std::int64_t(d[k]) * d[0];
    return s * L;
  }
  IR_HD std::int64_t prefix_size() const { return prefix_offset(depth + 1); }
};

// Forward pass: fills the prefix products; returns a pointer to E (m x n).
template <class T, int L, class Dims>
IR_HD IR_INLINE const T* pack_forward(const PackLayout<T, L, Dims>& lay, const T* W, T* P) {
  const auto& d = lay.d;
  const T* prev = W;  // P_1 = W_1
  IR_UNROLL
  for (int j = 2; j <= lay.depth; ++j) {
    T* cur = P + lay.prefix_offset(j);
    pack_mm<T, L, !Dims::kStatic, Dims::kWidth>(cur, W + lay.factor_offset(j), prev, d[j], d[j - 1],
                                                d[0]);
    prev = cur;
  }
  return prev;
}

// Problem data of a pack, gathered once per call.
template <class T>
struct PackProblem {
  bool sensing;
  const T* target;  // (m n) x L      completion
  const T* mask;    // (m n) x L, 0/1 completion
  const T* A;       // K x (m n) x L  sensing
  const T* y;       // K x L          sensing
  int K;
};

// x where the 0/1 mask m observes the entry, else 0 (and no NaN from an unobserved x).
template <class T>
IR_HD IR_INLINE T observed(T m, T x) {
  return m != T(0) ? x : T(0);
}

// Residual G and loss of E for every lane.
template <class T, int L>
IR_HD IR_INLINE void pack_residual(const PackProblem<T>& pb, const T* __restrict E, T* __restrict G,
                                   T* __restrict loss, int mn) {
  for (int l = 0; l < L; ++l) loss[l] = T(0);
  if (!pb.sensing) {
    for (int e = 0; e < mn; ++e)
      for (int l = 0; l < L; ++l) {
        const T r = observed(pb.mask[e * L + l], E[e * L + l] - pb.target[e * L + l]);
        G[e * L + l] = r;
        loss[l] += r * r;
      }
  } else {
    for (int e = 0; e < mn; ++e)
      for (int l = 0; l < L; ++l) G[e * L + l] = T(0);
    for (int k = 0; k < pb.K; ++k) {
      const T* Ak = pb.A + std::int64_t(k) * mn * L;
      T r[L];
      for (int l = 0; l < L; ++l) r[l] = -pb.y[k * L + l];
      for (int e = 0; e < mn; ++e)
        for (int l = 0; l < L; ++l) r[l] += Ak[e * L + l] * E[e * L + l];
      for (int e = 0; e < mn; ++e)
        for (int l = 0; l < L; ++l) G[e * L + l] += r[l] * Ak[e * L + l];
      for (int l = 0; l < L; ++l) loss[l] += r[l] * r[l];
    }
  }
  for (int l = 0; l < L; ++l) loss[l] *= T(0.5);
}

// Backward pass and update of every factor into Wn (unfused: their gradients). H and H2 hold
// max_rows x n each.
template <bool Fused, class T, int L, class Dims>
IR_HD IR_INLINE void pack_backward(const PackLayout<T, L, Dims>& lay, const T* W, T* Wn, const T* P,
                                   const T* G, T* H, T* H2, const T* lr, T* fin) {
  const auto& d = lay.d;
  const T* Hj = G;
  IR_UNROLL
  for (int j = lay.depth; j >= 1; --j) {
    const T* Wj = W + lay.factor_offset(j);
    T* Wnj = Wn + lay.factor_offset(j);
    if (j == 1) {
      pack_update_id<Fused, T, L>(Wnj, Wj, Hj, lr, fin, d[1] * d[0]);
    } else {
      const T* Pprev = j == 2 ? W : P + lay.prefix_offset(j - 1);
      constexpr bool simd = !Dims::kStatic || Dims{}[0] >= kSimdStoreFrom;
      pack_update_nt<Fused, T, L, !Dims::kStatic, simd, Dims::kWidth>(Wnj, Wj, Hj, Pprev, lr, fin,
                                                                      d[j], d[0], d[j - 1]);
      T* Hn = (Hj == H) ? H2 : H;
      pack_mm_tn<T, L, !Dims::kStatic, Dims::kWidth>(Hn, Wj, Hj, d[j - 1], d[j], d[0]);
      Hj = Hn;
    }
  }
}

// A pack's optimizer: its settings, each lane's state and, for adam, the moments in the
// factors' layout (M, S) with buffers for their next values (Mn, Sn). `kind` is a compile-time
// optimizer when Kind < kOptimizerCount (a CUDA thread then keeps no unused state in
// registers), else read from `runtime_kind`.
template <class T, int L, int Kind = kOptimizerCount>
struct PackOptimizer {
  int runtime_kind = kGd;
  T beta = T(0), beta1 = T(0), beta2 = T(0), eps = T(0);
  T v[L];
  std::int64_t t[L];
  T *M = nullptr, *S = nullptr, *Mn = nullptr, *Sn = nullptr;
  IR_HD int kind() const { return Kind < kOptimizerCount ? Kind : runtime_kind; }
};

// The unfused update of a pack: Wn holds the gradient on entry and the next iterate on exit
// (Mn, Sn the next moments, v_new the next running means); fin accumulates their probes.
template <class T, int L, int Kind>
IR_HD IR_INLINE void pack_optimize(const PackOptimizer<T, L, Kind>& o, std::int64_t size,
                                   const T* __restrict W, T* __restrict Wn, const T* __restrict lr,
                                   T* __restrict v_new, T* __restrict fin) {
  if (o.kind() == kGroupRmsprop) {
    double sq[L];
    for (int l = 0; l < L; ++l) sq[l] = 0;
    for (std::int64_t e = 0; e < size; ++e)
      for (int l = 0; l < L; ++l) sq[l] += double(Wn[e * L + l]) * double(Wn[e * L + l]);
    T step[L];
    for (int l = 0; l < L; ++l) {
      step[l] = rmsprop_rate(lr[l], o.beta, o.eps, o.v[l], o.t[l], sq[l], v_new[l]);
      fin[l] += probe(step[l]) + probe(v_new[l]);
    }
    for (std::int64_t e = 0; e < size; ++e)
      for (int l = 0; l < L; ++l) {
        const T w = W[e * L + l] - step[l] * Wn[e * L + l];
        Wn[e * L + l] = w;
        fin[l] += probe(w);
      }
  } else if (o.kind() == kAdam) {
    AdamRate<T> r[L];
    for (int l = 0; l < L; ++l) r[l] = adam_rate(lr[l], o.beta1, o.beta2, o.t[l]);
    for (std::int64_t e = 0; e < size; ++e)
      for (int l = 0; l < L; ++l) {
        const std::int64_t i = e * L + l;
        T m = o.M[i], s = o.S[i];
        const T w = adam_update(W[i], Wn[i], m, s, o.beta1, o.beta2, o.eps, r[l]);
        Wn[i] = w;
        o.Mn[i] = m;
        o.Sn[i] = s;
        fin[l] += probe(w) + probe(m) + probe(s);
      }
  }
}

// Keeps the next values `next` in the lanes that keep[] them, the current ones elsewhere: in
// `next` (then swapped with cur) when Swap, else in `cur`.
template <bool Swap, class T, int L>
IR_HD IR_INLINE void pack_commit(T*& cur, T*& next, const bool* keep, bool keep_all,
                                 std::int64_t size) {
  if constexpr (Swap) {
    if (!keep_all)
      for (std::int64_t e = 0; e < size; ++e)
        for (int l = 0; l < L; ++l) next[e * L + l] = keep[l] ? next[e * L + l] : cur[e * L + l];
    T* t = cur;
    cur = next;
    next = t;
  } else {
    for (std::int64_t e = 0; e < size; ++e)
      for (int l = 0; l < L; ++l) cur[e * L + l] = keep[l] ? next[e * L + l] : cur[e * L + l];
  }
}

// Per-lane state of a step loop: status, step at which the lane froze, and the loss below
// which it crosses its next threshold (-inf when none is left).
template <class T, int L>
struct PackState {
  std::int8_t st[L];
  std::int64_t fz[L];
  T next_thr[L];
};

// The step loop of dmf_step on one pack, shared by the CPU (L lanes) and CUDA (L = 1, one
// problem per thread) drivers. Before each of up to `steps` updates, and once after the last:
// crossings due at this iterate are recorded (on_cross(l, loss, step, W) records them and
// updates next_thr[l]); then the freeze rule (kernels/freeze.h) stops a lane whose loss is
// non-finite or below tol (frozen_at = the iterate's step), and a running lane whose update
// is not finite at its last finite iterate and optimizer state. W and Wn are the iterate and
// the buffer for the next; the returned pointer holds the final iterates, o.M and o.S the
// final moments (Swap: exchange the two pointers each step; else copy the next values in,
// which lets a CUDA thread keep both in registers).
template <bool Swap, class T, int L, class Dims, int Kind, class OnCross>
IR_HD IR_INLINE T* pack_steps(const PackLayout<T, L, Dims>& lay, const PackProblem<T>& pb, T* W,
                              T* Wn, T* P, T* G, T* H, T* H2, const T* lr, std::int64_t steps,
                              T tol, std::int64_t step0, PackState<T, L>& s,
                              PackOptimizer<T, L, Kind>& o, OnCross on_cross) {
  const int mn = lay.d[lay.depth] * lay.d[0];
  const std::int64_t size = lay.factors_size() / L;
  for (std::int64_t it = 0; it <= steps; ++it) {
    const T* E = pack_forward<T, L>(lay, W, P);
    T loss[L];
    pack_residual<T, L>(pb, E, G, loss, mn);
    // Crossings are rare: one vectorizable test per step, the bookkeeping only when one is due
    // (a NaN loss compares false; frozen lanes are skipped).
    bool crossing = false;
    for (int l = 0; l < L; ++l) crossing |= loss[l] < s.next_thr[l];
    if (crossing)
      for (int l = 0; l < L; ++l)
        if (s.st[l] == kRunning && loss[l] < s.next_thr[l]) on_cross(l, loss[l], step0 + it, W);
    int running = 0;
    for (int l = 0; l < L; ++l) {
      if (s.st[l] != kRunning) continue;
      s.st[l] = status_at(loss[l], tol);
      if (s.st[l] != kRunning)
        s.fz[l] = step0 + it;
      else
        ++running;
    }
    if (running == 0 || it == steps) break;
    T fin[L], v_new[L];
    for (int l = 0; l < L; ++l) fin[l] = T(0);
    if (o.kind() == kGd) {
      pack_backward<true, T, L>(lay, W, Wn, P, G, H, H2, lr, fin);
    } else {
      pack_backward<false, T, L>(lay, W, Wn, P, G, H, H2, lr, fin);
      pack_optimize<T, L>(o, size, W, Wn, lr, v_new, fin);
    }
    // Keep the new iterate only in lanes that are running and stayed finite.
    bool keep[L], keep_all = running == L;
    for (int l = 0; l < L; ++l) {
      if (s.st[l] == kRunning && !commits(fin[l])) {
        s.st[l] = kDiverged;
        s.fz[l] = step0 + it;
        keep_all = false;
      }
      keep[l] = s.st[l] == kRunning;
    }
    pack_commit<Swap, T, L>(W, Wn, keep, keep_all, size);
    if (o.kind() == kAdam) {
      pack_commit<Swap, T, L>(o.M, o.Mn, keep, keep_all, size);
      pack_commit<Swap, T, L>(o.S, o.Sn, keep, keep_all, size);
    }
    if (o.kind() != kGd)
      for (int l = 0; l < L; ++l)
        if (keep[l]) {
          if (o.kind() == kGroupRmsprop) o.v[l] = v_new[l];
          o.t[l] += 1;
        }
  }
  return W;
}

}  // namespace kernels
}  // namespace implicitreg
