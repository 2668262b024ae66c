// CPU driver of the singular values: 2x2 in closed form over the whole batch (vectorized
// across matrices), other sizes by one-sided Jacobi or bidiagonalization + QR on packs of L
// matrices held lane-packed, in double, one pack per thread at a time. Each matrix is scaled by a
// power of two (exact) so that its largest entry lies in [1/2, 1), and scaled back at the end.
#include "kernels/svdvals.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/threads.h"
#include "implicitreg/metrics.h"

namespace implicitreg {
namespace {

template <class T>
constexpr T kNaN = std::numeric_limits<T>::quiet_NaN();

// Largest |entry| of x[0..size), or a NaN/inf when some entry is not finite.
template <class T>
T max_abs(const T* x, std::int64_t size) {
  T mx = 0, bad = 0;
#pragma omp simd reduction(max : mx) reduction(+ : bad)
  for (std::int64_t e = 0; e < size; ++e) {
    mx = std::max(mx, std::fabs(x[e]));
    bad += x[e] - x[e];  // NaN exactly when x[e] is NaN or inf
  }
  return mx + bad;
}

template <class T>
void svd2x2_batch(const T* X, std::int64_t batch, T* s, std::int8_t* info) {
  const T lo = std::ldexp(T(1), -kernels::kSafeExp<T>), hi = std::ldexp(T(1), kernels::kSafeExp<T>);
  // the closed form: about 30 flops, but its two square roots and division take the time of
  // about 100 (30 cycles a matrix on one core)
  const int threads = cpu::team(batch, 100);
#pragma omp parallel for num_threads(threads) schedule(dynamic, cpu::chunk(batch, threads))
  for (std::int64_t b = 0; b < batch; ++b) {
    const T* x = X + 4 * b;
    const T mx = std::max(std::max(std::fabs(x[0]), std::fabs(x[1])),
                          std::max(std::fabs(x[2]), std::fabs(x[3])));
    // x - x is NaN exactly for NaN and inf, which std::max would drop.
    const T bad = (x[0] - x[0]) + (x[1] - x[1]) + (x[2] - x[2]) + (x[3] - x[3]);
    T s1, s2;
    kernels::svd2x2(x[0], x[1], x[2], x[3], s1, s2);
    s[2 * b] = s1;
    s[2 * b + 1] = s2;
    info[b] = !(mx >= lo && mx <= hi && bad == T(0));  // fixed up below
  }
  // Rare: out-of-range, zero or non-finite matrices.
#pragma omp parallel for num_threads(threads) schedule(dynamic, cpu::chunk(batch, threads))
  for (std::int64_t b = 0; b < batch; ++b) {
    if (!info[b]) continue;
    info[b] = std::int8_t(kernels::svd2x2_scaled(X + 4 * b, s[2 * b], s[2 * b + 1]));
  }
}

// The singular values of an M x N matrix with M >= N: X itself when m >= n, else X^T (same
// singular values), so that the columns are the longer vectors. The work is done in double
// (C) whatever T: float32 input gets values within an ulp or so of the exact ones. Small N:
// one-sided Jacobi on its columns (relatively accurate); larger N: bidiagonalization and QR
// (absolutely accurate, a few ulps * sigma_1), with Jacobi as the fallback for a lane whose QR
// stalls.
using C = double;

// Where svd_packs writes the singular vectors (svd), or nothing (svdvals).
template <class T>
struct Vectors {
  T* U = nullptr;   // (batch, m, k)
  T* Vh = nullptr;  // (batch, k, n)
};

template <class T, int L, int SM = 0, int SN = 0>
void svd_packs(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info,
               int max_sweeps, bool allow_bidiagonal = true, Vectors<T> vec = {}) {
  const bool transpose = m < n;
  const int M = transpose ? n : m, N = transpose ? m : n;
  const std::int64_t mn = std::int64_t(m) * n, npacks = (batch + L - 1) / L;
  const bool vectors = vec.U != nullptr;
  const bool bidiagonal = allow_bidiagonal && !vectors && N >= kernels::kBidiagonalFrom;
  // about 8 sweeps of N^2 / 2 rotations of 6 M flops (more with vectors)
  const double pack_flops = L * 24.0 * M * N * N * (vectors ? 2 : 1);
#pragma omp parallel num_threads(cpu::team(npacks, pack_flops))
  {
    std::vector<C> A(std::int64_t(M) * N * L), norm2(std::int64_t(N) * L);
    std::vector<C> V(vectors ? std::int64_t(N) * N * L : 0);
    std::vector<C> work(vectors ? kernels::vectors_scratch(M, N) : 0);
    std::vector<int> order(vectors ? kernels::vectors_scratch_ints(N) : 0);
    std::vector<C> e(bidiagonal ? std::int64_t(N) * L : 0), w(bidiagonal ? std::int64_t(M) * L : 0);
    std::vector<C> scratch(bidiagonal ? 0 : kernels::jacobi_scratch(L, N));
    std::vector<int> pairs(bidiagonal ? 0 : std::int64_t(N + 1) * (N + 1));
    const int rounds = bidiagonal ? 0 : kernels::round_robin(N, pairs.data());
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t pack = 0; pack < npacks; ++pack) {
      const std::int64_t b0 = pack * L;
      int ex[L];
      bool bad[L], by_factor[L], unconverged[L];
      for (int l = 0; l < L; ++l) {
        const std::int64_t b = b0 + l < batch ? b0 + l : b0;  // padding lanes repeat b0
        const T* x = X + b * mn;
        const T mx = max_abs(x, mn);
        bad[l] = !std::isfinite(mx);
        ex[l] = 0;
        if (!bad[l] && mx > T(0)) std::frexp(mx, &ex[l]);
        // 2^-ex as a factor when it is a normal number (multiplying by it is exact), else
        // ldexp entry by entry.
        by_factor[l] = std::abs(ex[l]) < std::numeric_limits<C>::max_exponent - 2;
        const C scale = bad[l] ? C(0) : by_factor[l] ? std::ldexp(C(1), -ex[l]) : C(1);
        for (int r = 0; r < m; ++r)
          for (int c = 0; c < n; ++c) {
            // Entry (r, c) of X is entry (c, r) of X^T: column r of the transpose.
            const std::int64_t at = transpose ? std::int64_t(r) * M + c : std::int64_t(c) * M + r;
            const C v = x[std::int64_t(r) * n + c];
            A[at * L + l] = bad[l] ? C(0) : by_factor[l] ? v * scale : std::ldexp(v, -ex[l]);
          }
      }
      // sv[c * L + l]: the singular values of lane l, unsorted.
      C* sv = norm2.data();
      if (bidiagonal) {
        kernels::pack_bidiagonalize<C, L>(A.data(), M, N, sv, e.data(), w.data());
        kernels::pack_bidiagonal_qr<C, L>(sv, e.data(), N, 8 * N, unconverged);
        for (int i = 0; i < N * L; ++i) sv[i] = std::fabs(sv[i]);
      } else {  // the squared column norms
        if (vectors) {
          std::fill(V.begin(), V.end(), C(0));
          for (int c = 0; c < N; ++c)
            for (int l = 0; l < L; ++l) V[(std::int64_t(c) * N + c) * L + l] = C(1);
        }
        kernels::pack_jacobi<C, L, SM, SN>(A.data(), M, N, pairs.data(), rounds, scratch.data(), sv,
                                           max_sweeps, unconverged, vectors ? V.data() : nullptr);
        for (int i = 0; i < N * L; ++i) sv[i] = std::sqrt(sv[i]);
      }
      if (vectors) {
        for (int l = 0; l < L && b0 + l < batch; ++l)
          kernels::singular_vectors(A.data(), V.data(), sv, M, N, l, L, transpose, bad[l],
                                    vec.U + (b0 + l) * std::int64_t(m) * N,
                                    vec.Vh + (b0 + l) * std::int64_t(N) * n, work.data(),
                                    order.data());
      }
      // Odd-even transposition sort, descending, in every lane at once (branch-free: the
      // order differs from lane to lane).
      C* nrm = sv;
      for (int round = 0; round < N; ++round)
        for (int c = round & 1; c + 1 < N; c += 2)
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const C hi = std::max(nrm[c * L + l], nrm[(c + 1) * L + l]);
            const C lo = std::min(nrm[c * L + l], nrm[(c + 1) * L + l]);
            nrm[c * L + l] = hi;
            nrm[(c + 1) * L + l] = lo;
          }
      for (int l = 0; l < L && b0 + l < batch; ++l) {
        const std::int64_t b = b0 + l;
        const C back = std::ldexp(C(1), by_factor[l] ? ex[l] : 0);
        for (int c = 0; c < N; ++c) {
          const C v = nrm[c * L + l];
          s[b * N + c] = bad[l] ? kNaN<T> : T(by_factor[l] ? v * back : std::ldexp(v, ex[l]));
        }
        info[b] = bad[l] ? kSvdNonFinite : unconverged[l] ? kSvdNotConverged : kSvdOk;
      }
    }
  }
  if (bidiagonal) {  // the rare stalled QR: that matrix again, by Jacobi
    for (std::int64_t b = 0; b < batch; ++b)
      if (info[b] == kSvdNotConverged)
        svd_packs<T, 1>(X + b * mn, 1, m, n, s + b * N, info + b, max_sweeps, false);
  }
}

// A pack holds L matrices (svd_sized's choice) while it stays within half of L2; bigger
// matrices run in narrower packs, down to one at a time. (Wide packs streaming from L2
// beat narrow ones held in L1: at 32x32 and 48x48, 8 lanes of float64 are 1.0x and 1.35x
// faster than 4.)
constexpr std::int64_t kPackBytes = std::int64_t(512) << 10;

template <class T, int L>
void svd_lanes(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info,
               int max_sweeps, Vectors<T> vec = {}) {
  if constexpr (L > 1) {
    if (std::int64_t(m) * n * L * std::int64_t(sizeof(C)) > kPackBytes)
      return svd_lanes<T, L / 2>(X, batch, m, n, s, info, max_sweeps, vec);
  }
  if (m == n) {  // small square sizes at compile time: every loop unrolled
    switch (n) {  // clang-format off
      case 3: return svd_packs<T, L, 3, 3>(X, batch, m, n, s, info, max_sweeps, true, vec);
      case 4: return svd_packs<T, L, 4, 4>(X, batch, m, n, s, info, max_sweeps, true, vec);
      case 5: return svd_packs<T, L, 5, 5>(X, batch, m, n, s, info, max_sweeps, true, vec);
      case 6: return svd_packs<T, L, 6, 6>(X, batch, m, n, s, info, max_sweeps, true, vec);
      case 7: return svd_packs<T, L, 7, 7>(X, batch, m, n, s, info, max_sweeps, true, vec);
      case 8: return svd_packs<T, L, 8, 8>(X, batch, m, n, s, info, max_sweeps, true, vec);
      default: break;
    }            // clang-format on
  }
  svd_packs<T, L>(X, batch, m, n, s, info, max_sweeps, true, vec);
}

// Packs of one SIMD vector of matrices; of two below kBidiagonalFrom columns, where the
// packs are small: two independent chains through each rotation's square roots and divisions
// (float64, one thread: svdvals 1.1x at 4x4, 8x8 and 11x11, svd 1.15x at 8x8; at 32x32, svd
// is 1.07x slower with two).
template <class T>
void svd_sized(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info,
               int max_sweeps, Vectors<T> vec = {}) {
  constexpr int L = 64 / int(sizeof(C));
  if (std::min(m, n) < kernels::kBidiagonalFrom)
    return svd_lanes<T, 2 * L>(X, batch, m, n, s, info, max_sweeps, vec);
  svd_lanes<T, L>(X, batch, m, n, s, info, max_sweeps, vec);
}

}  // namespace

namespace cpu {

template <class T>
void svdvals(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info,
             int max_sweeps) {
  if (batch == 0) return;
  if (m == 0 || n == 0) {
    std::fill(info, info + batch, std::int8_t(kSvdOk));
    return;
  }
  if (m == 2 && n == 2) return svd2x2_batch(X, batch, s, info);
  svd_sized(X, batch, m, n, s, info, max_sweeps);
}

template <class T>
void svd(const T* X, std::int64_t batch, int m, int n, T* U, T* s, T* Vh, std::int8_t* info,
         int max_sweeps) {
  if (batch == 0) return;
  if (m == 0 || n == 0) {
    std::fill(info, info + batch, std::int8_t(kSvdOk));
    return;
  }
  svd_sized(X, batch, m, n, s, info, max_sweeps, Vectors<T>{U, Vh});
}

template void svdvals<float>(const float*, std::int64_t, int, int, float*, std::int8_t*, int);
template void svdvals<double>(const double*, std::int64_t, int, int, double*, std::int8_t*, int);
template void svd<float>(const float*, std::int64_t, int, int, float*, float*, float*, std::int8_t*,
                         int);
template void svd<double>(const double*, std::int64_t, int, int, double*, double*, double*,
                          std::int8_t*, int);

}  // namespace cpu
}  // namespace implicitreg
