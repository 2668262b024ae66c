// CUDA driver of the singular values, with the CPU's math (kernels/svdvals.h). Every size but
// 2x2 works in double, on the matrix scaled by a power of two:
//   - 2x2: the closed form, a matrix per thread, in registers;
//   - up to 8 rows and columns: a matrix per thread, by one-sided Jacobi in local memory;
//   - up to 32: a matrix per warp, by one-sided Jacobi in shared memory: the lanes share a
//     round's disjoint column pairs, a few lanes per pair splitting its rows (a matrix per
//     thread would keep 9.8 KB of local memory per thread at 32 x 32 and leave an SM with a
//     handful of warps);
//   - larger: a matrix per thread, by bidiagonalization + QR (Jacobi as the fallback), in a
//     slice of global scratch.
// The thin SVD with vectors (svd) is the CPU's too: one-sided Jacobi with the rotations
// accumulated and kernels::singular_vectors, a matrix per thread, in local memory up to 8 x 8
// and in global scratch above.
#include <algorithm>
#include <limits>

#include "cuda/common.cuh"
#include "implicitreg/metrics.h"
#include "kernels/svdvals.h"

namespace implicitreg {
namespace cuda {
namespace {

constexpr int kBlock = 128;

template <class T>
__global__ void svd2x2_kernel(const T* X, std::int64_t batch, T* s, std::int8_t* info) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const T* x = X + 4 * b;
  const T lo = std::ldexp(T(1), -kernels::kSafeExp<T>), hi = std::ldexp(T(1), kernels::kSafeExp<T>);
  const T mx = fmax(fmax(fabs(x[0]), fabs(x[1])), fmax(fabs(x[2]), fabs(x[3])));
  const T bad = (x[0] - x[0]) + (x[1] - x[1]) + (x[2] - x[2]) + (x[3] - x[3]);
  T s1, s2;
  std::int8_t code = kSvdOk;
  if (mx >= lo && mx <= hi && bad == T(0))
    kernels::svd2x2(x[0], x[1], x[2], x[3], s1, s2);
  else
    code = std::int8_t(kernels::svd2x2_scaled(x, s1, s2));
  s[2 * b] = s1;
  s[2 * b + 1] = s2;
  info[b] = code;
}

__global__ void round_robin_kernel(int n, int* pairs) { kernels::round_robin(n, pairs); }

// Where svd_one writes the singular vectors, with its scratch for them; U null: values only.
template <class T>
struct Vectors {
  T* U = nullptr;          // m x k
  T* Vh = nullptr;         // k x n
  double* V = nullptr;     // N x N
  double* work = nullptr;  // kernels::vectors_scratch(M, N)
  int* order = nullptr;    // kernels::vectors_scratch_ints(N)
};

// Doubles of scratch per matrix with M >= N, and with vectors its V and work.
__host__ __device__ std::int64_t scratch_per_matrix(int M, int N, bool vectors) {
  return std::int64_t(M) * N + 2 * std::int64_t(N) + M + kernels::jacobi_scratch(1, N) +
         (vectors ? std::int64_t(N) * N + kernels::vectors_scratch(M, N) : 0);
}

// Singular values of one m x n matrix x (M x N with M >= N after transposing) into s[0..N)
// (and its vectors where vec.U is set) and its SvdInfo; A (M * N), sv (N), e (N), w (M) and
// jac (Jacobi scratch) are the thread's.
template <class T>
__device__ std::int8_t svd_one(const T* x, int m, int n, T* s, int max_sweeps, const int* pairs,
                               int rounds, double* A, double* sv, double* e, double* w, double* jac,
                               Vectors<T> vec = {}) {
  const bool transpose = m < n;
  const int M = transpose ? n : m, N = transpose ? m : n;
  const std::int64_t mn = std::int64_t(m) * n;
  T mx = T(0), bad = T(0);
  for (std::int64_t i = 0; i < mn; ++i) {
    mx = fmax(mx, fabs(x[i]));
    bad += x[i] - x[i];  // NaN exactly when an entry is NaN or inf
  }
  if (bad != T(0)) {
    for (int c = 0; c < N; ++c) s[c] = std::numeric_limits<T>::quiet_NaN();
    if (vec.U != nullptr)
      kernels::singular_vectors(A, vec.V, sv, M, N, 0, 1, transpose, true, vec.U, vec.Vh, vec.work,
                                vec.order);
    return kSvdNonFinite;
  }
  int ex = 0;
  if (mx > T(0)) std::frexp(double(mx), &ex);
  // Column-major M x N, scaled by 2^-ex (exact): entry (r, c) of X is (c, r) of X^T.
  auto load = [&]() {
    for (int r = 0; r < m; ++r)
      for (int c = 0; c < n; ++c) {
        const std::int64_t at = transpose ? std::int64_t(r) * M + c : std::int64_t(c) * M + r;
        A[at] = std::ldexp(double(x[std::int64_t(r) * n + c]), -ex);
      }
  };
  load();
  bool unconverged = false, done = false;
  if (N >= kernels::kBidiagonalFrom && vec.U == nullptr) {
    kernels::pack_bidiagonalize<double, 1>(A, M, N, sv, e, w);
    kernels::pack_bidiagonal_qr<double, 1>(sv, e, N, 8 * N, &unconverged);
    for (int i = 0; i < N; ++i) sv[i] = fabs(sv[i]);
    done = !unconverged;
    if (!done) load();  // a stalled QR: this matrix again, by Jacobi
  }
  if (!done) {
    if (vec.U != nullptr)
      for (int c = 0; c < N; ++c)
        for (int r = 0; r < N; ++r) vec.V[c * N + r] = r == c ? 1.0 : 0.0;
    kernels::pack_jacobi<double, 1>(A, M, N, pairs, rounds, jac, sv, max_sweeps, &unconverged,
                                    vec.V);
    for (int i = 0; i < N; ++i) sv[i] = sqrt(sv[i]);
    if (vec.U != nullptr)
      kernels::singular_vectors(A, vec.V, sv, M, N, 0, 1, transpose, false, vec.U, vec.Vh, vec.work,
                                vec.order);
  }
  for (int round = 0; round < N; ++round)  // descending
    for (int c = round & 1; c + 1 < N; c += 2) {
      const double hi = fmax(sv[c], sv[c + 1]), lo = fmin(sv[c], sv[c + 1]);
      sv[c] = hi;
      sv[c + 1] = lo;
    }
  for (int c = 0; c < N; ++c) s[c] = T(std::ldexp(sv[c], ex));
  return unconverged ? kSvdNotConverged : kSvdOk;
}

// Matrices with M <= MaxM rows and N <= MaxN columns (after transposing): the work arrays are
// the thread's local memory, which the hardware interleaves across threads (coalesced) and
// caches in L1. U and Vh null: values only.
template <class T, int MaxM, int MaxN, bool WithVectors>
__global__ void __launch_bounds__(kBlock)
    svd_local_kernel(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info,
                     int max_sweeps, const int* pairs, int rounds, T* U, T* Vh) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  double A[MaxM * MaxN], sv[MaxN], e[MaxN], w[MaxM], jac[kernels::jacobi_scratch(1, MaxN)];
  const int N = m < n ? m : n;
  const T* x = X + b * std::int64_t(m) * n;
  if constexpr (WithVectors) {
    double V[MaxN * MaxN], work[MaxM * MaxN + MaxM];
    int order[2 * MaxN];
    const Vectors<T> vec{U + b * std::int64_t(m) * N, Vh + b * std::int64_t(N) * n, V, work, order};
    info[b] = svd_one(x, m, n, s + b * N, max_sweeps, pairs, rounds, A, sv, e, w, jac, vec);
  } else {
    info[b] = svd_one(x, m, n, s + b * N, max_sweeps, pairs, rounds, A, sv, e, w, jac);
  }
}

// Larger matrices: the work arrays in a slice of global scratch per thread (and order, with
// vectors, in a slice of int scratch).
template <class T>
__global__ void svd_global_kernel(const T* X, std::int64_t batch, int m, int n, T* s,
                                  std::int8_t* info, int max_sweeps, const int* pairs, int rounds,
                                  double* scratch, T* U, T* Vh, int* order) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const int M = m > n ? m : n, N = m < n ? m : n;
  const bool vectors = U != nullptr;
  double* A = scratch + b * scratch_per_matrix(M, N, vectors);
  double* sv = A + std::int64_t(M) * N;
  double* e = sv + N;
  double* w = e + N;
  double* jac = w + M;
  Vectors<T> vec;
  if (vectors) {
    vec.U = U + b * std::int64_t(m) * N;
    vec.Vh = Vh + b * std::int64_t(N) * n;
    vec.V = jac + kernels::jacobi_scratch(1, N);
    vec.work = vec.V + std::int64_t(N) * N;
    vec.order = order + b * kernels::vectors_scratch_ints(N);
  }
  info[b] = svd_one(X + b * std::int64_t(m) * n, m, n, s + b * N, max_sweeps, pairs, rounds, A, sv,
                    e, w, jac, vec);
}

// ---- a matrix per warp, up to 32 x 32 ----------------------------------------------------
constexpr int kWarpMax = 32;           // rows and columns of the largest matrix
constexpr int kWarpLd = kWarpMax + 1;  // column stride in shared memory (odd: fewer conflicts)
constexpr int kWarpsPerBlock = 4;

template <class T>
__device__ __forceinline__ T warp_max(T v) {
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

template <class T>
__device__ __forceinline__ T warp_add(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// One-sided Jacobi as kernels::pack_jacobi (the same pairs, tolerance, skip threshold and
// update form; converged once a sweep's worth of consecutive rounds, rather than pairs, has
// passed without a rotation), with the warp's lanes in place of a pack's lanes: lane group
// `pair` (of `span` lanes) takes the round's pair `pair` and the rows part, part + span, ...
// A is column-major with stride kWarpLd, norm2 the squared column norms (both shared).
// Returns whether the sweep cap was hit with a pair still to rotate.
__device__ bool warp_jacobi(double* A, double* norm2, int M, int N, const int* pairs, int rounds,
                            int max_sweeps) {
  const int lane = threadIdx.x & 31;
  const double tol = std::numeric_limits<double>::epsilon() * sqrt(double(M));
  const double tol2 = tol * tol;
  const double tiny2 = std::numeric_limits<double>::min() * double(1 << 20);
  const int half = (N + (N & 1)) / 2;
  int span = 32;  // lanes per pair: a power of two, span * half <= 32
  while (span * half > 32) span >>= 1;
  const int pair = lane / span, part = lane % span;
  auto fresh_norms = [&]() {
    __syncwarp();
    if (lane < N) {
      double acc = 0;
      for (int r = 0; r < M; ++r) acc += A[lane * kWarpLd + r] * A[lane * kWarpLd + r];
      norm2[lane] = acc;
    }
    __syncwarp();
  };
  int quiet = 0;
  bool rotated = rounds > 0;
  for (int sweep = 0; sweep < max_sweeps && rotated; ++sweep) {
    fresh_norms();
    for (int round = 0; round < rounds && rotated; ++round) {
      const int* pr = pairs + round * half * 2;
      const bool mine = pair < half && pr[2 * pair] >= 0;  // a bye (odd N) is -1
      const int p = mine ? pr[2 * pair] : 0, q = mine ? pr[2 * pair + 1] : 0;
      double x = 0;
      if (mine)
        for (int r = part; r < M; r += span) x += A[p * kWarpLd + r] * A[q * kWarpLd + r];
      for (int off = span / 2; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
      const double app = norm2[p], aqq = norm2[q], x2 = x * x;
      const bool rot = mine && x2 > tol2 * app * aqq && x2 > tiny2;
      if (!__any_sync(0xffffffffu, rot)) {
        rotated = ++quiet < rounds;
        continue;
      }
      quiet = 0;
      __syncwarp();  // every lane has read the norms it needs before any is rewritten
      if (rot) {
        const double d = aqq - app;
        const double t = copysign(2.0, d) * x / (fabs(d) + sqrt(d * d + 4.0 * x2));
        const double sq = sqrt(1.0 + t * t);
        const double inv = 1.0 / (sq * (1.0 + sq));
        const double sn = t * (1.0 + sq) * inv, tau = t * sq * inv;
        for (int r = part; r < M; r += span) {
          const double a = A[p * kWarpLd + r], b = A[q * kWarpLd + r];
          A[p * kWarpLd + r] = a - sn * (b + tau * a);
          A[q * kWarpLd + r] = b + sn * (a - tau * b);
        }
        if (part == 0) {
          norm2[p] = app - t * x;
          norm2[q] = aqq + t * x;
        }
      }
      __syncwarp();  // the next round reads what this one wrote
    }
  }
  fresh_norms();  // the final values from the columns themselves
  if (!rotated) return false;
  bool want = false;  // the cap was hit: does a pair still want a rotation?
  for (int k = lane; k < N * N; k += 32) {
    const int p = k / N, q = k % N;
    if (p >= q) continue;
    double x = 0;
    for (int r = 0; r < M; ++r) x += A[p * kWarpLd + r] * A[q * kWarpLd + r];
    want = want || (x * x > tol2 * norm2[p] * norm2[q] && x * x > tiny2);
  }
  return __any_sync(0xffffffffu, want);
}

// Matrices of at most kWarpMax rows and columns, one per warp: singular values descending into
// s and the SvdInfo, as svd_one.
template <class T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    svd_warp_kernel(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info,
                    int max_sweeps, const int* pairs, int rounds) {
  __shared__ double As[kWarpsPerBlock][kWarpMax * kWarpLd];
  __shared__ double norms[kWarpsPerBlock][kWarpMax];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const std::int64_t b = blockIdx.x * std::int64_t(kWarpsPerBlock) + warp;
  if (b >= batch) return;  // the whole warp: nothing here synchronizes across warps
  double* A = As[warp];
  double* norm2 = norms[warp];
  const bool transpose = m < n;
  const int M = transpose ? n : m, N = transpose ? m : n, mn = m * n;
  const T* x = X + b * mn;
  T* out = s + b * N;
  T mx = T(0), bad = T(0);
  for (int i = lane; i < mn; i += 32) {
    mx = fmax(mx, fabs(x[i]));
    bad += x[i] - x[i];  // NaN exactly when an entry is NaN or inf
  }
  mx = warp_max(mx);
  bad = warp_add(bad);
  if (bad != T(0)) {
    if (lane < N) out[lane] = std::numeric_limits<T>::quiet_NaN();
    if (lane == 0) info[b] = kSvdNonFinite;
    return;
  }
  int ex = 0;
  if (mx > T(0)) std::frexp(double(mx), &ex);
  for (int i = lane; i < mn; i += 32) {  // column-major M x N, scaled by 2^-ex (exact)
    const int r = i / n, c = i % n;
    A[transpose ? r * kWarpLd + c : c * kWarpLd + r] = std::ldexp(double(x[i]), -ex);
  }
  const bool unconverged = warp_jacobi(A, norm2, M, N, pairs, rounds, max_sweeps);
  if (lane < N) {  // descending: each value goes to its rank (ties by column)
    const double v = norm2[lane];
    int at = 0;
    for (int c = 0; c < N; ++c) at += norm2[c] > v || (norm2[c] == v && c < lane);
    out[at] = T(std::ldexp(sqrt(v), ex));
  }
  if (lane == 0) info[b] = unconverged ? kSvdNotConverged : kSvdOk;
}

}  // namespace

namespace {

// svdvals, and svd where U is set.
template <class T>
void run(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info, int max_sweeps,
         cudaStream_t st, T* U = nullptr, T* Vh = nullptr) {
  if (batch == 0) return;
  if (m == 0 || n == 0) {
    IR_CUDA_CHECK(cudaMemsetAsync(info, kSvdOk, std::size_t(batch), st));
    return;
  }
  const bool vectors = U != nullptr;
  if (m == 2 && n == 2 && !vectors) {
    launch(svd2x2_kernel<T>, grid_for(batch, kBlock), kBlock, 0, st, X, batch, s, info);
    IR_CUDA_LAUNCHED("svdvals (2x2)");
    return;
  }
  const int M = std::max(m, n), N = std::min(m, n);
  const int np = N + (N & 1);
  Scratch<int> pairs(std::int64_t(np) * np, st);
  launch(round_robin_kernel, 1, 1, 0, st, N, pairs.get());
  IR_CUDA_LAUNCHED("svdvals (pairs)");
  const int rounds = np - 1;
  const unsigned grid = grid_for(batch, kBlock);
  const int* p = pairs.get();
  if (M <= 8) {
    if (vectors)
      launch(svd_local_kernel<T, 8, 8, true>, grid, kBlock, 0, st, X, batch, m, n, s, info,
             max_sweeps, p, rounds, U, Vh);
    else
      launch(svd_local_kernel<T, 8, 8, false>, grid, kBlock, 0, st, X, batch, m, n, s, info,
             max_sweeps, p, rounds, U, Vh);
  } else if (M <= kWarpMax && !vectors) {
    launch(svd_warp_kernel<T>, grid_for(batch, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, st, X,
           batch, m, n, s, info, max_sweeps, p, rounds);
  } else {
    Scratch<double> scratch(batch * scratch_per_matrix(M, N, vectors), st);
    Scratch<int> order(vectors ? batch * kernels::vectors_scratch_ints(N) : 0, st);
    launch(svd_global_kernel<T>, grid, kBlock, 0, st, X, batch, m, n, s, info, max_sweeps, p,
           rounds, scratch.get(), U, Vh, order.get());
  }
  if (vectors)
    IR_CUDA_LAUNCHED("svd");
  else
    IR_CUDA_LAUNCHED("svdvals");
}

}  // namespace

template <class T>
void svdvals(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info, int max_sweeps,
             void* stream) {
  run(X, batch, m, n, s, info, max_sweeps, as_stream(stream));
}

template <class T>
void svd(const T* X, std::int64_t batch, int m, int n, T* U, T* s, T* Vh, std::int8_t* info,
         int max_sweeps, void* stream) {
  run(X, batch, m, n, s, info, max_sweeps, as_stream(stream), U, Vh);
}

template void svdvals<float>(const float*, std::int64_t, int, int, float*, std::int8_t*, int,
                             void*);
template void svdvals<double>(const double*, std::int64_t, int, int, double*, std::int8_t*, int,
                              void*);
template void svd<float>(const float*, std::int64_t, int, int, float*, float*, float*, std::int8_t*,
                         int, void*);
template void svd<double>(const double*, std::int64_t, int, int, double*, double*, double*,
                          std::int8_t*, int, void*);

}  // namespace cuda
}  // namespace implicitreg
