// CUDA driver of the singular values, one matrix per thread, with the CPU's math
// (kernels/svdvals.h): 2x2 in closed form in registers; other sizes in double, scaled by a
// power of two, by one-sided Jacobi (fewer than 12 columns) or bidiagonalization + QR with
// Jacobi as the fallback, in the thread's local memory up to 32 x 32 and in a slice of global
// scratch beyond.
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

// Doubles of scratch per matrix with M >= N.
__host__ __device__ std::int64_t scratch_per_matrix(int M, int N) {
  return std::int64_t(M) * N + 2 * std::int64_t(N) + M + kernels::JacobiScratch<double, 1>::size(N);
}

// Singular values of one m x n matrix x (M x N with M >= N after transposing) into s[0..N)
// and its SvdInfo; A (M * N), sv (N), e (N), w (M) and jac (Jacobi scratch) are the thread's.
template <class T>
__device__ std::int8_t svd_one(const T* x, int m, int n, T* s, int max_sweeps, const int* pairs,
                               int rounds, double* A, double* sv, double* e, double* w,
                               double* jac) {
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
  if (N >= kernels::kBidiagonalFrom) {
    kernels::pack_bidiagonalize<double, 1>(A, M, N, sv, e, w);
    kernels::pack_bidiagonal_qr<double, 1>(sv, e, N, 8 * N, &unconverged);
    for (int i = 0; i < N; ++i) sv[i] = fabs(sv[i]);
    done = !unconverged;
    if (!done) load();  // a stalled QR: this matrix again, by Jacobi
  }
  if (!done) {
    kernels::pack_jacobi<double, 1>(A, M, N, pairs, rounds, jac, sv, max_sweeps, &unconverged);
    for (int i = 0; i < N; ++i) sv[i] = sqrt(sv[i]);
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
// caches in L1.
template <class T, int MaxM, int MaxN>
__global__ void __launch_bounds__(kBlock)
    svd_local_kernel(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info,
                     int max_sweeps, const int* pairs, int rounds) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  double A[MaxM * MaxN], sv[MaxN], e[MaxN], w[MaxM], jac[(MaxN / 2 + 1) * 6];
  const int N = m < n ? m : n;
  info[b] = svd_one(X + b * std::int64_t(m) * n, m, n, s + b * N, max_sweeps, pairs, rounds, A, sv,
                    e, w, jac);
}

// Larger matrices: the work arrays in a slice of global scratch per thread.
template <class T>
__global__ void svd_global_kernel(const T* X, std::int64_t batch, int m, int n, T* s,
                                  std::int8_t* info, int max_sweeps, const int* pairs, int rounds,
                                  double* scratch) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const int M = m > n ? m : n, N = m < n ? m : n;
  double* A = scratch + b * scratch_per_matrix(M, N);
  double* sv = A + std::int64_t(M) * N;
  double* e = sv + N;
  double* w = e + N;
  info[b] = svd_one(X + b * std::int64_t(m) * n, m, n, s + b * N, max_sweeps, pairs, rounds, A, sv,
                    e, w, w + M);
}

}  // namespace

template <class T>
void svdvals(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info, int max_sweeps,
             void* stream) {
  if (batch == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (m == 0 || n == 0) {
    IR_CUDA_CHECK(cudaMemsetAsync(info, kSvdOk, std::size_t(batch), st));
    return;
  }
  if (m == 2 && n == 2) {
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
  auto local = [&](auto kernel) {
    launch(kernel, grid, kBlock, 0, st, X, batch, m, n, s, info, max_sweeps,
           static_cast<const int*>(pairs.get()), rounds);
  };
  if (M <= 8)
    local(svd_local_kernel<T, 8, 8>);
  else if (M <= 16)
    local(svd_local_kernel<T, 16, 16>);
  else if (M <= 32)
    local(svd_local_kernel<T, 32, 32>);
  else {
    Scratch<double> scratch(batch * scratch_per_matrix(M, N), st);
    launch(svd_global_kernel<T>, grid, kBlock, 0, st, X, batch, m, n, s, info, max_sweeps,
           static_cast<const int*>(pairs.get()), rounds, scratch.get());
  }
  IR_CUDA_LAUNCHED("svdvals");
}

template void svdvals<float>(const float*, std::int64_t, int, int, float*, std::int8_t*, int,
                             void*);
template void svdvals<double>(const double*, std::int64_t, int, int, double*, std::int8_t*, int,
                              void*);

}  // namespace cuda
}  // namespace implicitreg
