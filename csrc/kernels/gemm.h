// Products of one problem's matrices from about 32x32 up, on the CPU: packed, cache-blocked
// and register-tiled, in the manner of BLIS/GotoBLAS. The DMF step of a research-scale
// problem (100x100 at depth 3: six products of 10^6 multiply-adds) spends all its time here.
//
// C (M x N) = A (M x K) * B (K x N), where the operands are read through strides, so that one
// routine serves A B, A^T B and A B^T: a(i, k) = A[i * a_i + k * a_k], b(k, j) = B[k * b_k +
// j * b_j]. C is row-major with row stride N.
//
// Blocking: k in blocks of KC; within one, A's rows are packed into MR-row panels (k-major,
// all of M: it stays in L2) and B into one KC x NR panel at a time (L1), zero-padded to NR;
// an MR x NR tile of C then lives in registers for the whole k block (MR * NV vector
// accumulators, NV vectors of NR / NV lanes each). The tile sizes follow the vector
// registers the build targets (32 of 64 bytes with AVX-512, 16 of 32 or 16 bytes below).
//
// Summation order: every entry of C is the sum over k ascending, one fused multiply-add per
// term starting from zero, the order of the plain loop this replaces; for K > KC the partial
// sum of each k block is added to the one before.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace implicitreg {
namespace kernels {
namespace gemm {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64, kMR = 8;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32, kMR = 6;
#else
constexpr int kVectorBytes = 16, kMR = 6;
#endif
constexpr int kNV = 2;                 // vectors per tile row
constexpr int kPanelBytes = 16 << 10;  // B's panel: half of the smallest L1 data cache

template <class T>
struct Tile {
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  static constexpr int kLanes = kVectorBytes / int(sizeof(T));
  static constexpr int kNR = kNV * kLanes;
  static constexpr int kKC = kPanelBytes / (kNR * int(sizeof(T)));
};

// C tile (mr x cols) at C (row stride ldc) = [C +] Ap (kc x MR_ panel, k-major) * Bp (kc x NR);
// only the first `cols` columns are stored.
template <class T, int MR_, int NV_>
inline void micro_kernel(int kc, const T* __restrict Ap, const T* __restrict Bp, T* __restrict C,
                         int ldc, int cols, bool accumulate) {
  using Vec = typename Tile<T>::Vec;
  constexpr int NL = Tile<T>::kLanes, NR = Tile<T>::kNR;
  Vec acc[MR_][NV_];
  for (int r = 0; r < MR_; ++r)
    for (int v = 0; v < NV_; ++v) acc[r][v] = Vec{};
  for (int k = 0; k < kc; ++k) {
    Vec b[NV_];
    for (int v = 0; v < NV_; ++v) std::memcpy(&b[v], Bp + k * NR + v * NL, sizeof(Vec));
    for (int r = 0; r < MR_; ++r) {
      const T a = Ap[k * MR_ + r];
      for (int v = 0; v < NV_; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR_; ++r) {
    T* c = C + std::int64_t(r) * ldc;
    if (cols == NV_ * NL) {
      for (int v = 0; v < NV_; ++v) {
        if (accumulate) {
          Vec old;
          std::memcpy(&old, c + v * NL, sizeof(Vec));
          acc[r][v] += old;
        }
        std::memcpy(c + v * NL, &acc[r][v], sizeof(Vec));
      }
    } else {
      T row[NV_ * NL];
      std::memcpy(row, acc[r], sizeof(row));
      for (int j = 0; j < cols; ++j) c[j] = accumulate ? c[j] + row[j] : row[j];
    }
  }
}

// The tile kernel for a panel of mr <= MR rows and nv <= NV vectors.
template <class T, int MR_ = kMR>
inline void tile(int mr, int nv, int kc, const T* Ap, const T* Bp, T* C, int ldc, int cols,
                 bool accumulate) {
  if constexpr (MR_ > 1) {
    if (mr < MR_) return tile<T, MR_ - 1>(mr, nv, kc, Ap, Bp, C, ldc, cols, accumulate);
  }
  if (nv == kNV) return micro_kernel<T, MR_, kNV>(kc, Ap, Bp, C, ldc, cols, accumulate);
  micro_kernel<T, MR_, 1>(kc, Ap, Bp, C, ldc, cols, accumulate);
}

// Packing buffers of the calling thread, kept between calls (a problem's products all reuse
// them, and OpenMP's threads outlive the call).
template <class T>
std::vector<T>& scratch(int which) {
  thread_local std::vector<T> buffers[2];
  return buffers[which];
}

template <class T>
void product(T* __restrict C, const T* __restrict A, std::int64_t a_i, std::int64_t a_k,
             const T* __restrict B, std::int64_t b_k, std::int64_t b_j, int M, int K, int N) {
  constexpr int NL = Tile<T>::kLanes, NR = Tile<T>::kNR, KC = Tile<T>::kKC;
  std::vector<T>& Ap = scratch<T>(0);
  std::vector<T>& Bp = scratch<T>(1);
  Ap.resize(std::size_t(M) * std::min(K, KC));
  Bp.resize(std::size_t(NR) * std::min(K, KC));
  for (int k0 = 0; k0 < K; k0 += KC) {
    const int kc = std::min(KC, K - k0);
    // A's panels: rows i0..i0+mr, entry (k, r) at i0 * kc + k * mr + r
    for (int i0 = 0; i0 < M; i0 += kMR) {
      const int mr = std::min(kMR, M - i0);
      T* dst = Ap.data() + std::int64_t(i0) * kc;
      for (int k = 0; k < kc; ++k)
        for (int r = 0; r < mr; ++r) dst[k * mr + r] = A[(i0 + r) * a_i + (k0 + k) * a_k];
    }
    for (int j0 = 0; j0 < N; j0 += NR) {
      const int cols = std::min(NR, N - j0);
      for (int k = 0; k < kc; ++k) {
        T* dst = Bp.data() + k * NR;
        for (int j = 0; j < cols; ++j) dst[j] = B[(k0 + k) * b_k + (j0 + j) * b_j];
        for (int j = cols; j < NR; ++j) dst[j] = T(0);
      }
      const int nv = (cols + NL - 1) / NL;
      for (int i0 = 0; i0 < M; i0 += kMR)
        tile<T>(std::min(kMR, M - i0), nv, kc, Ap.data() + std::int64_t(i0) * kc, Bp.data(),
                C + std::int64_t(i0) * N + j0, N, cols, k0 > 0);
    }
  }
}

}  // namespace gemm
}  // namespace kernels
}  // namespace implicitreg
