// Singular values of small matrices, written once for the CPU (lane-packed, L problems per
// SIMD vector) and reusable by CUDA (IR_HD): the 2x2 closed form, and one-sided (Hestenes)
// Jacobi for every other size.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/hd.h"

namespace implicitreg {
namespace kernels {

// Matrices whose largest entry lies in [2^-kSafeExp, 2^kSafeExp] go through the closed form
// and Jacobi unscaled: sums of squares and products of entries neither overflow nor lose the
// small singular value to underflow. Others are first scaled by an exact power of two.
template <class T>
constexpr int kSafeExp = sizeof(T) == 8 ? 250 : 30;

// Singular values s1 >= s2 of [[a, b], [c, d]], for max(|a|, |b|, |c|, |d|) in the safe range.
//   s1 = (|(a + d, b - c)| + |(a - d, b + c)|) / 2  (a sum of non-negative terms: no cancellation)
//   s2 = |det| / s1, with det = ad - bc by Kahan's FMA algorithm (error within 2 ulps), so that s2
//   keeps its relative accuracy when s1 >> s2, unlike the difference of the two norms.
template <class T>
IR_HD IR_INLINE void svd2x2(T a, T b, T c, T d, T& s1, T& s2) {
  const T p = a + d, q = b - c, r = a - d, u = b + c;
  s1 = T(0.5) * (std::sqrt(p * p + q * q) + std::sqrt(r * r + u * u));
  const T w = b * c;
  const T err = std::fma(-b, c, w);  // w - bc exactly
  const T det = std::fma(a, d, -w) + err;
  s2 = s1 > T(0) ? std::fabs(det) / s1 : T(0);
  s2 = s2 < s1 ? s2 : s1;  // s2 <= s1 also where rounding would say otherwise
}

// Round-robin ("circle") order of all column pairs of n columns: n' - 1 rounds (n' = n
// rounded up to even) of n' / 2 disjoint pairs, written to pairs[(round * n'/2 + i) * 2 + {0,1}]
// (-1 marks the bye of odd n). Disjoint pairs let one round's dot products, rotation
// parameters and rotations run side by side instead of as one long dependency chain.
inline int round_robin(int n, int* pairs) {
  const int np = n + (n & 1), half = np / 2;
  for (int round = 0; round < np - 1; ++round)
    for (int i = 0; i < half; ++i) {
      // Player 0 stays; the others turn one seat per round.
      auto seat = [&](int k) { return k == 0 ? 0 : 1 + (k - 1 + round) % (np - 1); };
      int p = seat(i), q = seat(np - 1 - i);
      if (p >= n) p = -1;
      if (q >= n) q = -1;
      pairs[(round * half + i) * 2] = p < 0 || q < 0 ? -1 : (p < q ? p : q);
      pairs[(round * half + i) * 2 + 1] = p < 0 || q < 0 ? -1 : (p < q ? q : p);
    }
  return np - 1;
}

// Scratch of pack_jacobi for n columns and L lanes.
template <class T, int L>
struct JacobiScratch {
  static std::int64_t size(int n) { return std::int64_t(n / 2 + 1) * 5 * L; }
};

// One-sided Jacobi on a pack of L matrices with m rows and n <= m columns, lane-packed:
// A[(c * m + r) * L + l] is entry (r, c) of lane l, its largest entry of order 1. Sweeps of
// round-robin rounds rotate column pairs until every pair is orthogonal to within
// tol = eps * sqrt(m) relative to the column norms (the LAPACK dgesvj criterion), in every
// lane, or max_sweeps sweeps have run. Pairs whose inner product is below `tiny` (far below
// eps * sigma_1 when the largest entry is of order 1) are not rotated. On return
// norm2[c * L + l] is the squared norm of column c: the squared singular values, unsorted.
// Returns the number of sweeps run; unconverged[l] says which lanes hit the cap.
// SM and SN, when not 0, are m and n known at compile time (fully unrolled small sizes).
//
// Rotation: with d = aqq - app and x = apq, t = 2x sign(d) / (|d| + sqrt(d^2 + 4x^2)) (the
// smaller root of t^2 + (d/x) t - 1 = 0), c = 1 / sqrt(1 + t^2), s = c t; the pair becomes
// (c a_p - s a_q, s a_p + c a_q) and the squared norms move by -t x and +t x. It is applied
// in Rutishauser's form a_p - s (a_q + tau a_p), a_q + s (a_p - tau a_q), tau = s / (1 + c):
// corrections to the old columns, so that rounding does not inflate the column norms sweep
// after sweep (the form c a_p - s a_q drifts upward by about max(m, n) ulps at size 256).
// Lanes that need no rotation take t = 0 (s = tau = 0), so one instruction stream serves the
// pack; all lanes share the sweep count.
template <class T, int L, int SM = 0, int SN = 0>
inline int pack_jacobi(T* A, int m_rt, int n_rt, const int* pairs, int rounds, T* scratch, T* norm2,
                       int max_sweeps, bool* unconverged) {
  const int m = SM ? SM : m_rt, n = SN ? SN : n_rt;
  const T tol = std::numeric_limits<T>::epsilon() * std::sqrt(T(m));
  const T tol2 = tol * tol;
  const T tiny2 = std::numeric_limits<T>::min() * T(1 << 20);
  const int half = (n + (n & 1)) / 2;
  T* apq = scratch;
  T* app = apq + half * L;
  T* aqq = app + half * L;
  T* tau = aqq + half * L;
  T* sn = tau + half * L;
  auto col = [&](int c) { return A + std::int64_t(c) * m * L; };
  auto fresh_norms = [&]() {
    for (int c = 0; c < n; ++c) {
      T acc[L] = {};
      const T* a = col(c);
      for (int r = 0; r < m; ++r)
#pragma omp simd
        for (int l = 0; l < L; ++l) acc[l] += a[r * L + l] * a[r * L + l];
      for (int l = 0; l < L; ++l) norm2[c * L + l] = acc[l];
    }
  };
  int sweep = 0;
  bool rotated = true;
  for (; sweep < max_sweeps && rotated; ++sweep) {
    rotated = false;
    fresh_norms();  // each sweep, so that the updates' rounding never accumulates
    for (int round = 0; round < rounds; ++round) {
      const int* pr = pairs + round * half * 2;
      for (int i = 0; i < half; ++i) {
        const int p = pr[2 * i] < 0 ? 0 : pr[2 * i], q = pr[2 * i + 1] < 0 ? 1 : pr[2 * i + 1];
        // Two partial sums per lane: half the dependency chain of one.
        T acc0[L] = {}, acc1[L] = {};
        if (pr[2 * i] >= 0) {
          const T* ap = col(p);
          const T* aq = col(q);
          int r = 0;
          for (; r + 1 < m; r += 2)
#pragma omp simd
            for (int l = 0; l < L; ++l) {
              acc0[l] += ap[r * L + l] * aq[r * L + l];
              acc1[l] += ap[(r + 1) * L + l] * aq[(r + 1) * L + l];
            }
          if (r < m)
#pragma omp simd
            for (int l = 0; l < L; ++l) acc0[l] += ap[r * L + l] * aq[r * L + l];
        }
        for (int l = 0; l < L; ++l) {
          apq[i * L + l] = acc0[l] + acc1[l];
          app[i * L + l] = norm2[p * L + l];
          aqq[i * L + l] = norm2[q * L + l];
        }
      }
      int any = 0;  // first only the test, so that converged rounds skip the sqrt and division
#pragma omp simd reduction(| : any)
      for (int e = 0; e < half * L; ++e) {
        const T x2 = apq[e] * apq[e];
        any |= (x2 > tol2 * app[e] * aqq[e]) & (x2 > tiny2);
      }
      if (!any) continue;
#pragma omp simd
      for (int e = 0; e < half * L; ++e) {
        // Everything computed unconditionally and then selected, so that the loop vectorizes
        // (a NaN from a lane that does not rotate is discarded by the select).
        const T x = apq[e], d = aqq[e] - app[e], x2 = x * x;
        const int rot = (x2 > tol2 * app[e] * aqq[e]) & (x2 > tiny2);
        const T t_rot = std::copysign(T(2), d) * x / (std::fabs(d) + std::sqrt(d * d + T(4) * x2));
        const T t = rot ? t_rot : T(0);
        // s = t / sq and tau = t / (1 + sq), sq = sqrt(1 + t^2), from one division.
        const T sq = std::sqrt(T(1) + t * t);
        const T r = T(1) / (sq * (T(1) + sq));
        sn[e] = t * (T(1) + sq) * r;
        tau[e] = t * sq * r;
        app[e] -= t * x;
        aqq[e] += t * x;
      }
      rotated = true;
      for (int i = 0; i < half; ++i) {
        if (pr[2 * i] < 0) continue;
        const int p = pr[2 * i], q = pr[2 * i + 1];
        bool need = false;
        for (int l = 0; l < L; ++l) {
          need |= sn[i * L + l] != T(0);
          norm2[p * L + l] = app[i * L + l];
          norm2[q * L + l] = aqq[i * L + l];
        }
        if (!need) continue;
        T* ap = col(p);
        T* aq = col(q);
        const T* ta = tau + i * L;
        const T* sv = sn + i * L;
        for (int r = 0; r < m; ++r)
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const T x = ap[r * L + l], y = aq[r * L + l];
            ap[r * L + l] = x - sv[l] * (y + ta[l] * x);
            aq[r * L + l] = y + sv[l] * (x - ta[l] * y);
          }
      }
    }
  }
  fresh_norms();  // the final values from the columns themselves
  for (int l = 0; l < L; ++l) unconverged[l] = false;
  if (rotated) {  // the cap was hit: say which lanes still want a rotation
    for (int p = 0; p < n - 1; ++p)
      for (int q = p + 1; q < n; ++q)
        for (int l = 0; l < L; ++l) {
          T x = 0;
          for (int r = 0; r < m; ++r) x += col(p)[r * L + l] * col(q)[r * L + l];
          unconverged[l] |= x * x > tol2 * norm2[p * L + l] * norm2[q * L + l] && x * x > tiny2;
        }
  }
  return sweep;
}

}  // namespace kernels
}  // namespace implicitreg
