// Singular values of small matrices, written once for the CPU (lane-packed, L problems per
// SIMD vector) and reusable by CUDA (IR_HD): the 2x2 closed form, one-sided (Hestenes)
// Jacobi, and Householder bidiagonalization with implicit-shift QR for larger sizes.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "implicitreg/metrics.h"
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

// Singular values of any 2x2 [[x0, x1], [x2, x3]] and its SvdInfo:
// NaN for a non-finite entry, 0 for the zero matrix, otherwise svd2x2 on the matrix scaled
// by an exact power of two so that its largest entry lies in [1/2, 1).
template <class T>
IR_HD IR_INLINE int svd2x2_scaled(const T* x, T& s1, T& s2) {
  T mx = T(0), bad = T(0);
  for (int e = 0; e < 4; ++e) {
    mx = std::fabs(x[e]) > mx ? std::fabs(x[e]) : mx;
    bad += x[e] - x[e];  // NaN exactly when x[e] is NaN or inf
  }
  if (bad != T(0)) {
    s1 = s2 = std::numeric_limits<T>::quiet_NaN();
    return kSvdNonFinite;
  }
  if (mx == T(0)) {
    s1 = s2 = T(0);
    return kSvdOk;
  }
  int ex;
  std::frexp(mx, &ex);
  svd2x2(std::ldexp(x[0], -ex), std::ldexp(x[1], -ex), std::ldexp(x[2], -ex), std::ldexp(x[3], -ex),
         s1, s2);
  s1 = std::ldexp(s1, ex);
  s2 = std::ldexp(s2, ex);
  return kSvdOk;
}

// Matrices with at least this many columns (of their M x N form, M >= N) take the bidiagonal
// path: Householder bidiagonalization (4 M N^2 flops) and implicit-shift QR, instead of
// Jacobi sweeps (about 6 M N^2 flops each, 7 to 10 of them).
constexpr int kBidiagonalFrom = 12;

// Round-robin ("circle") order of all column pairs of n columns: n' - 1 rounds (n' = n
// rounded up to even) of n' / 2 disjoint pairs, written to pairs[(round * n'/2 + i) * 2 + {0,1}]
// (-1 marks the bye of odd n). Disjoint pairs let one round's dot products, rotation
// parameters and rotations run side by side instead of as one long dependency chain.
IR_HD inline int round_robin(int n, int* pairs) {
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

// Scratch of pack_jacobi for L lanes and n columns: sn and tau of each pair of a round, and
// whether it rotates.
IR_HD constexpr int jacobi_scratch(int L, int n) { return (2 * L + 1) * ((n + 1) / 2); }

// One-sided Jacobi on a pack of L matrices with m rows and n <= m columns, lane-packed:
// A[(c * m + r) * L + l] is entry (r, c) of lane l, its largest entry of order 1. Sweeps of
// round-robin rounds (pairs and rounds as round_robin writes them) rotate column pairs until
// every pair is orthogonal to within tol = eps * sqrt(m) relative to the column norms (the LAPACK
// dgesvj criterion), in every lane, or max_sweeps sweeps have run. Pairs whose inner product is
// below `tiny` (far below eps * sigma_1 when the largest entry is of order 1) are not rotated. On
// return norm2[c * L + l] is the squared norm of column c: the squared singular values, unsorted.
// Returns the number of sweeps run; unconverged[l] says which lanes hit the cap.
// SM and SN, when not 0, are m and n known at compile time (fully unrolled small sizes).
// V, when given (n x n per lane, laid out as A, the identity on entry), receives the product
// of the rotations: the right singular vectors, A_in V = A_out, whose columns are then the
// left singular vectors times the singular values.
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
IR_HD inline int pack_jacobi(T* A, int m_rt, int n_rt, const int* pairs, int rounds, T* scratch,
                             T* norm2, int max_sweeps, bool* unconverged, T* V = nullptr) {
  const int m = SM ? SM : m_rt, n = SN ? SN : n_rt;
  const T tol = std::numeric_limits<T>::epsilon() * std::sqrt(T(m));
  const T tol2 = tol * tol;
  const T tiny2 = std::numeric_limits<T>::min() * T(1 << 20);
  const int npairs = rounds * ((n + 1) / 2);  // byes included
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
  // The rotation of pair (p, q) in every lane: sn and tau (scratch slots of L), the squared
  // norms updated; false when no lane rotates.
  auto plan = [&](int p, int q, T* sn, T* tau) {
    const T* ap = col(p);
    const T* aq = col(q);
    // Two partial sums per lane: half the dependency chain of one.
    T acc0[L] = {}, acc1[L] = {};
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
    int need = 0;
#pragma omp simd reduction(| : need)
    for (int l = 0; l < L; ++l) {
      const T x = acc0[l] + acc1[l], x2 = x * x;
      need |= (x2 > tol2 * norm2[p * L + l] * norm2[q * L + l]) & (x2 > tiny2);
    }
    if (!need) return false;  // converged pairs skip the rest
#pragma omp simd
    for (int l = 0; l < L; ++l) {
      // Everything computed unconditionally and then selected, so that the loop vectorizes
      // (a NaN from a lane that does not rotate is discarded by the select).
      const T x = acc0[l] + acc1[l], x2 = x * x;
      const T app = norm2[p * L + l], aqq = norm2[q * L + l], d = aqq - app;
      const int rot = (x2 > tol2 * app * aqq) & (x2 > tiny2);
      const T t_rot = std::copysign(T(2), d) * x / (std::fabs(d) + std::sqrt(d * d + T(4) * x2));
      const T t = rot ? t_rot : T(0);
      // s = t / sq and tau = t / (1 + sq), sq = sqrt(1 + t^2), from one division.
      const T sq = std::sqrt(T(1) + t * t);
      const T rr = T(1) / (sq * (T(1) + sq));
      sn[l] = t * (T(1) + sq) * rr;
      tau[l] = t * sq * rr;
      norm2[p * L + l] = app - t * x;
      norm2[q * L + l] = aqq + t * x;
    }
    return true;
  };
  // the pair's rotation, on columns of `rows` entries: A's, and V's when accumulated
  auto rotate = [&](T* ap, T* aq, int rows, const T* sn_in, const T* tau_in) {
    T sn[L], tau[L];  // local copies: the compiler cannot tell that the columns do not alias
    for (int l = 0; l < L; ++l) {
      sn[l] = sn_in[l];
      tau[l] = tau_in[l];
    }
    for (int r = 0; r < rows; ++r)
#pragma omp simd
      for (int l = 0; l < L; ++l) {
        const T x = ap[r * L + l], y = aq[r * L + l];
        ap[r * L + l] = x - sn[l] * (y + tau[l] * x);
        aq[r * L + l] = y + sn[l] * (x - tau[l] * y);
      }
  };
  // Converged once npairs consecutive pairs (every pair once) have passed without a
  // rotation: pairs checked before the last rotation that touched them are checked again
  // after it. So the confirming pass usually ends part way into its sweep.
  // The pairs of a round share no column, so all of them are planned (dot products, then the
  // rotations' square roots and divisions) before the first rotates: their long dependency
  // chains run side by side, where planned one by one each waited for the one before.
  const int per_round = (n + 1) / 2;  // byes included
  T* rotates = scratch + 2 * L * per_round;
  auto plan_round = [&](int k0) {
    for (int i = 0; i < per_round; ++i) {
      const int p = pairs[2 * (k0 + i)], q = pairs[2 * (k0 + i) + 1];
      T* slot = scratch + 2 * L * i;
      rotates[i] = p >= 0 && plan(p, q, slot, slot + L) ? T(1) : T(0);
    }
  };
  int sweep = 0, quiet = 0;
  bool rotated = npairs > 0;
  for (; sweep < max_sweeps && rotated; ++sweep) {
    fresh_norms();  // each sweep, so that the updates' rounding never accumulates
    for (int k = 0; k < npairs && rotated; ++k) {
      const int i = k % per_round;
      if (i == 0) plan_round(k);
      if (rotates[i] == T(0)) {
        rotated = ++quiet < npairs;
        continue;
      }
      quiet = 0;
      const int p = pairs[2 * k], q = pairs[2 * k + 1];
      const T* sn = scratch + 2 * L * i;
      rotate(col(p), col(q), m, sn, sn + L);
      if (V != nullptr)
        rotate(V + std::int64_t(p) * n * L, V + std::int64_t(q) * n * L, n, sn, sn + L);
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

// Scratch of singular_vectors for the M x N form: doubles (work) and ints (order).
IR_HD inline std::int64_t vectors_scratch(int M, int N) { return std::int64_t(M) * N + M; }
IR_HD inline int vectors_scratch_ints(int N) { return 2 * N; }

// Lane l's thin SVD factors from a converged pack_jacobi with V (A: the columns sigma_c u_c of
// the M x N form, V its right vectors, sv the sigma_c, unsorted; lane-packed with L lanes),
// sorted by descending sigma (ties by column), into U (m x k) and Vh (k x n) of the m x n
// matrix, k = N: X itself, or X^T when `transpose` (then U_X = V and Vh_X = U_A^T). A column
// of zero (or negligible) norm has no direction: it is filled by the unit vector farthest
// from the other columns, orthogonalized against them (Gram-Schmidt, twice, for orthogonality
// to working precision). `bad` (a non-finite matrix) fills U and Vh with NaN. work and order
// are scratch of vectors_scratch(M, N) and vectors_scratch_ints(N).
template <class T, class C>
IR_HD inline void singular_vectors(const C* A, const C* V, const C* sv, int M, int N, int l, int L,
                                   bool transpose, bool bad, T* U, T* Vh, C* work, int* order) {
  const int m = transpose ? N : M, n = transpose ? M : N, k = N;
  if (bad) {
    for (std::int64_t i = 0; i < std::int64_t(m) * k; ++i)
      U[i] = std::numeric_limits<T>::quiet_NaN();
    for (std::int64_t i = 0; i < std::int64_t(k) * n; ++i)
      Vh[i] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  C* u = work;                        // M x N
  C* w = work + std::int64_t(M) * N;  // M
  int* have = order + N;
  for (int j = 0; j < N; ++j) {  // insertion sort, descending, stable
    int i = j;
    for (; i > 0 && sv[order[i - 1] * L + l] < sv[j * L + l]; --i) order[i] = order[i - 1];
    order[i] = j;
  }
  // Jacobi leaves a pair unrotated when its inner product is below sqrt(tiny2) (pack_jacobi),
  // so two columns are surely orthogonal to eps only when the product of their norms is at
  // least sqrt(tiny2) / eps: columns below the square root of that (2.6e-68, the matrix
  // scaled to entries below 1) take completed directions instead.
  const C floor = std::sqrt(std::sqrt(std::numeric_limits<C>::min() * C(1 << 20)) /
                            std::numeric_limits<C>::epsilon());
  // left vectors of the M x N form, column-major, in sorted order
  for (int j = 0; j < N; ++j) {
    const int c = order[j];
    const C sigma = sv[c * L + l];
    have[j] = sigma >= floor;
    for (int r = 0; r < M; ++r)
      u[std::int64_t(j) * M + r] = have[j] ? A[(std::int64_t(c) * M + r) * L + l] / sigma : C(0);
  }
  for (int j = 0; j < N; ++j) {
    if (have[j]) continue;
    // the unit vector e_best with the largest part outside the columns so far (at least
    // sqrt((M - columns) / M) of it), orthogonalized against them twice
    int best = 0;
    C most = -1;
    for (int e = 0; e < M; ++e) {
      C inside = 0;
      for (int i = 0; i < N; ++i)
        if (have[i]) inside += u[std::int64_t(i) * M + e] * u[std::int64_t(i) * M + e];
      if (C(1) - inside > most) {
        most = C(1) - inside;
        best = e;
      }
    }
    for (int r = 0; r < M; ++r) w[r] = r == best ? C(1) : C(0);
    for (int pass = 0; pass < 2; ++pass)
      for (int i = 0; i < N; ++i) {
        if (!have[i]) continue;
        C dot = 0;
        for (int r = 0; r < M; ++r) dot += u[std::int64_t(i) * M + r] * w[r];
        for (int r = 0; r < M; ++r) w[r] -= dot * u[std::int64_t(i) * M + r];
      }
    C nrm = 0;
    for (int r = 0; r < M; ++r) nrm += w[r] * w[r];
    nrm = std::sqrt(nrm);
    for (int r = 0; r < M; ++r) u[std::int64_t(j) * M + r] = w[r] / nrm;
    have[j] = 1;
  }
  // X = U_A S V_A^T (M x N form = X), or X = V_A S U_A^T (the form is X^T)
  for (int j = 0; j < N; ++j) {
    const C* vcol = V + std::int64_t(order[j]) * N * L;  // right vector c: V[(c N + r) L + l]
    for (int r = 0; r < M; ++r) {
      const T ur = T(u[std::int64_t(j) * M + r]);
      if (transpose)
        Vh[std::int64_t(j) * n + r] = ur;  // row j of Vh_X = u_j^T (n = M entries)
      else
        U[std::int64_t(r) * k + j] = ur;  // column j of U_X
    }
    for (int r = 0; r < N; ++r) {
      const T vr = T(vcol[r * L + l]);
      if (transpose)
        U[std::int64_t(r) * k + j] = vr;  // column j of U_X = v_j (m = N entries)
      else
        Vh[std::int64_t(j) * n + r] = vr;  // row j of Vh_X = v_j^T
    }
  }
}

// Householder reduction of a pack of L matrices (layout of pack_jacobi, m >= n) to upper
// bidiagonal form: diagonal d[k * L + l] (n entries) and superdiagonal e[k * L + l] (n - 1),
// with the same singular values. A is overwritten; w is scratch of m * L. Every reflector is
// computed lane by lane with selects, so one instruction stream serves the pack.
template <class T, int L>
IR_HD inline void pack_bidiagonalize(T* A, int m, int n, T* d, T* e, T* w) {
  auto at = [&](int c, int r) { return A + (std::int64_t(c) * m + r) * L; };
  // Reflector H = I - tau v v^T with v[0] = 1 mapping x to (beta, 0, ...): from x0 and the
  // sum of squares of the rest; returns beta and writes tau and 1 / (x0 - beta).
  auto reflector = [](T x0, T rest2, T& tau, T& inv_v0) {
    const T norm = std::sqrt(x0 * x0 + rest2);
    const T beta = -std::copysign(norm, x0);
    const T v0 = x0 - beta;
    tau = norm > T(0) ? (beta - x0) / beta : T(0);
    inv_v0 = v0 != T(0) ? T(1) / v0 : T(0);
    return norm > T(0) ? beta : T(0);
  };
  for (int k = 0; k < n; ++k) {
    // Left: column k, rows k..m-1.
    {
      T rest2[L] = {}, tau[L], inv[L];
      for (int r = k + 1; r < m; ++r)
#pragma omp simd
        for (int l = 0; l < L; ++l) rest2[l] += at(k, r)[l] * at(k, r)[l];
#pragma omp simd
      for (int l = 0; l < L; ++l) d[k * L + l] = reflector(at(k, k)[l], rest2[l], tau[l], inv[l]);
      for (int r = k + 1; r < m; ++r)
#pragma omp simd
        for (int l = 0; l < L; ++l) at(k, r)[l] *= inv[l];  // v, with v[0] = 1 implied
      for (int c = k + 1; c < n; ++c) {
        T dot[L];
        for (int l = 0; l < L; ++l) dot[l] = at(c, k)[l];
        for (int r = k + 1; r < m; ++r)
#pragma omp simd
          for (int l = 0; l < L; ++l) dot[l] += at(k, r)[l] * at(c, r)[l];
#pragma omp simd
        for (int l = 0; l < L; ++l) {
          dot[l] *= tau[l];
          at(c, k)[l] -= dot[l];
        }
        for (int r = k + 1; r < m; ++r)
#pragma omp simd
          for (int l = 0; l < L; ++l) at(c, r)[l] -= dot[l] * at(k, r)[l];
      }
    }
    if (k + 1 >= n) break;
    // Right: row k, columns k+1..n-1, applied to rows k+1..m-1.
    T rest2[L] = {}, tau[L], inv[L];
    for (int c = k + 2; c < n; ++c)
#pragma omp simd
      for (int l = 0; l < L; ++l) rest2[l] += at(c, k)[l] * at(c, k)[l];
#pragma omp simd
    for (int l = 0; l < L; ++l) e[k * L + l] = reflector(at(k + 1, k)[l], rest2[l], tau[l], inv[l]);
    for (int c = k + 2; c < n; ++c)
#pragma omp simd
      for (int l = 0; l < L; ++l) at(c, k)[l] *= inv[l];
    // w_r = (row r) . v over the columns, then row r -= tau w_r v.
    for (int r = k + 1; r < m; ++r)
#pragma omp simd
      for (int l = 0; l < L; ++l) w[r * L + l] = at(k + 1, r)[l];
    for (int c = k + 2; c < n; ++c)
      for (int r = k + 1; r < m; ++r)
#pragma omp simd
        for (int l = 0; l < L; ++l) w[r * L + l] += at(c, r)[l] * at(c, k)[l];
    for (int r = k + 1; r < m; ++r)
#pragma omp simd
      for (int l = 0; l < L; ++l) {
        w[r * L + l] *= tau[l];
        at(k + 1, r)[l] -= w[r * L + l];
      }
    for (int c = k + 2; c < n; ++c)
      for (int r = k + 1; r < m; ++r)
#pragma omp simd
        for (int l = 0; l < L; ++l) at(c, r)[l] -= w[r * L + l] * at(c, k)[l];
  }
}

// Singular values of L upper bidiagonal matrices (d, e as pack_bidiagonalize leaves them) by
// implicit-shift QR (Golub & Kahan; Golub & Van Loan, Algorithm 8.6.2), all lanes in lockstep.
// Each sweep chases a bulge down the bottom unreduced block [lo, hi] of every lane, shifted by
// the eigenvalue of the trailing 2x2 of B^T B nearer its last entry; lanes outside their block
// take identity rotations. Superdiagonal entries below eps * ||B|| are set to zero (absolute
// accuracy: a few ulps * sigma_1, as a backward-stable bidiagonalization gives anyway). On
// return |d| are the singular values, unsorted; unconverged[l] says which lanes hit
// max_sweeps (a zero on the diagonal can stall the shifted sweep; the caller falls back).
template <class T, int L>
IR_HD inline void pack_bidiagonal_qr(T* d, T* e, int n, int max_sweeps, bool* unconverged) {
  T thresh[L];
  int lo[L], hi[L];
  for (int l = 0; l < L; ++l) {
    T bnorm = 0;
    for (int k = 0; k < n; ++k)
      bnorm =
          std::max(bnorm, std::fabs(d[k * L + l]) + (k + 1 < n ? std::fabs(e[k * L + l]) : T(0)));
    thresh[l] = std::numeric_limits<T>::epsilon() * bnorm;
  }
  // Zero the negligible superdiagonal entries; find each lane's bottom unreduced block
  // [lo, hi]: hi = 1 + the last k with e[k] != 0 (0 if none), lo = 1 + the last k < hi with
  // e[k] == 0 (0 if none). Loops over k outside, lanes inside: one vector.
  auto deflate = [&]() {
    int h[L] = {}, j[L] = {};
    for (int k = 0; k + 1 < n; ++k)
#pragma omp simd
      for (int l = 0; l < L; ++l) {
        const T ek = std::fabs(e[k * L + l]) <= thresh[l] ? T(0) : e[k * L + l];
        e[k * L + l] = ek;
        h[l] = ek != T(0) ? k + 1 : h[l];
      }
    for (int k = 0; k + 1 < n; ++k)
#pragma omp simd
      for (int l = 0; l < L; ++l) j[l] = (e[k * L + l] == T(0)) & (k < h[l]) ? k + 1 : j[l];
    bool any = false;
    for (int l = 0; l < L; ++l) {
      lo[l] = j[l];
      hi[l] = h[l];
      any |= h[l] > j[l];
    }
    return any;
  };
  int sweep = 0;
  for (; sweep < max_sweeps && deflate(); ++sweep) {
    int kmin = n, kmax = 0;
    T y[L] = {}, z[L] = {}, mu[L];
    for (int l = 0; l < L; ++l) {
      mu[l] = T(0);
      if (hi[l] <= lo[l]) continue;
      kmin = std::min(kmin, lo[l]);
      kmax = std::max(kmax, hi[l]);
      // The shift, from the trailing 2x2 of B^T B before the sweep: the chase reaches rows h - 1
      // and h only after it has used the shift.
      const int h = hi[l];
      const T dh1 = d[(h - 1) * L + l], dh = d[h * L + l], eh1 = e[(h - 1) * L + l];
      const T eh2 = h - 2 >= lo[l] ? e[(h - 2) * L + l] : T(0);
      const T t11 = dh1 * dh1 + eh2 * eh2, t12 = dh1 * eh1, t22 = dh * dh + eh1 * eh1;
      const T delta = T(0.5) * (t11 - t22);
      const T den = delta + std::copysign(std::sqrt(delta * delta + t12 * t12), delta);
      mu[l] = t22 - (den != T(0) ? t12 * t12 / den : T(0));
    }
    for (int k = kmin; k < kmax; ++k) {
      // Every lane computes the step and keeps it where its block holds k (selects, not
      // branches, so that the lanes run as one vector; a NaN or inf of a lane outside its
      // block, or of a zero norm, is discarded by the select).
      const bool last = k + 1 >= n - 1;
      T* dk_p = d + k * L;
      T* ek_p = e + k * L;
      T* dk1_p = d + (k + 1) * L;
      T* ek1_p = e + (last ? k : k + 1) * L;   // e[k + 1] where it exists (else unused)
      T* ek0_p = e + (k > 0 ? k - 1 : k) * L;  // e[k - 1] where it exists (else unused)
#pragma omp simd
      for (int l = 0; l < L; ++l) {
        const bool active = (lo[l] <= k) & (k < hi[l]);
        const bool start = k == lo[l];  // the shift starts the chase
        const T dk = dk_p[l], ek = ek_p[l], dk1 = dk1_p[l], ek1 = last ? T(0) : ek1_p[l];
        const T ek0 = ek0_p[l];
        const T yk = start ? dk * dk - mu[l] : y[l], zk = start ? dk * ek : z[l];
        // Right rotation of columns k, k+1: zeroes z (the bulge above, or starts the chase).
        const T r1 = std::sqrt(yk * yk + zk * zk);
        const T c1 = r1 > T(0) ? yk / r1 : T(1), s1 = r1 > T(0) ? zk / r1 : T(0);
        const T dk_r = c1 * dk + s1 * ek, ek_r = c1 * ek - s1 * dk;
        const T below = s1 * dk1, dk1_r = c1 * dk1;
        // Left rotation of rows k, k+1: zeroes the bulge below the diagonal.
        const T r2 = std::sqrt(dk_r * dk_r + below * below);
        const T c2 = r2 > T(0) ? dk_r / r2 : T(1), s2 = r2 > T(0) ? below / r2 : T(0);
        const T ek_n = c2 * ek_r + s2 * dk1_r, dk1_n = c2 * dk1_r - s2 * ek_r;
        const T above = s2 * ek1, ek1_n = c2 * ek1;
        // (k > lo implies k > 0: e[k - 1] exists wherever it is written)
        ek0_p[l] = active & !start ? r1 : ek0;
        dk_p[l] = active ? r2 : dk;
        ek_p[l] = active ? ek_n : ek;
        dk1_p[l] = active ? dk1_n : dk1;
        if (!last) ek1_p[l] = active ? ek1_n : ek1;
        y[l] = active ? ek_n : y[l];
        z[l] = active ? above : z[l];
      }
    }
  }
  if (sweep == max_sweeps) deflate();
  for (int l = 0; l < L; ++l) unconverged[l] = sweep == max_sweeps && hi[l] > lo[l];
}

}  // namespace kernels
}  // namespace implicitreg
