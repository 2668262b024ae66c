// CUDA driver of the singular values, one matrix per thread, with the CPU's math
// (kernels/svdvals.h): 2x2 in closed form in registers; other sizes in double, scaled by a
// power of two, by one-sided Jacobi (fewer than 12 columns) or bidiagonalization + QR with
// Jacobi as the fallback, each thread working in its own slice of global scratch.
#include <algorithm>
#include <limits>

#include "cuda/common.cuh"
#include "implicitreg/metrics.h"
#include "kernels/svdvals.h"

namespace implicitreg {
namespace cuda {
namespace {

constexpr int kBlock = 128;
constexpr int kBidiagonalFrom = 12;  // as on the CPU (cpu/svdvals.cpp)

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

template <class T>
__global__ void svd_general_kernel(const T* X, std::int64_t batch, int m, int n, T* s,
                                   std::int8_t* info, int max_sweeps, const int* pairs, int rounds,
                                   double* scratch) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const bool transpose = m < n;
  const int M = transpose ? n : m, N = transpose ? m : n;
  const std::int64_t mn = std::int64_t(m) * n;
  double* A = scratch + b * scratch_per_matrix(M, N);
  double* sv = A + std::int64_t(M) * N;
  double* e = sv + N;
  double* w = e + N;
  double* jac = w + M;
  const T* x = X + b * mn;
  T mx = T(0), bad = T(0);
  for (std::int64_t i = 0; i < mn; ++i) {
    mx = fmax(mx, fabs(x[i]));
    bad += x[i] - x[i];
  }
  if (bad != T(0)) {
    for (int c = 0; c < N; ++c) s[b * N + c] = std::numeric_limits<T>::quiet_NaN();
    info[b] = kSvdNonFinite;
    return;
  }
  int ex = 0;
  if (mx > T(0)) std::frexp(double(mx), &ex);
  // Column-major M x N in A: entry (r, c) of X is (c, r) of X^T.
  auto load = [&]() {
    for (int r = 0; r < m; ++r)
      for (int c = 0; c < n; ++c) {
        const std::int64_t at = transpose ? std::int64_t(r) * M + c : std::int64_t(c) * M + r;
        A[at] = std::ldexp(double(x[std::int64_t(r) * n + c]), -ex);
      }
  };
  load();
  bool unconverged = false;
  bool done = false;
  if (N >= kBidiagonalFrom) {
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
  for (int c = 0; c < N; ++c) s[b * N + c] = T(std::ldexp(sv[c], ex));
  info[b] = unconverged ? kSvdNotConverged : kSvdOk;
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
    svd2x2_kernel<T><<<grid_for(batch, kBlock), kBlock, 0, st>>>(X, batch, s, info);
    IR_CUDA_LAUNCHED("svdvals (2x2)");
    return;
  }
  const int M = std::max(m, n), N = std::min(m, n);
  const int np = N + (N & 1);
  Scratch<int> pairs(std::int64_t(np) * np, st);
  round_robin_kernel<<<1, 1, 0, st>>>(N, pairs.get());
  IR_CUDA_LAUNCHED("svdvals (pairs)");
  const int rounds = np - 1;
  Scratch<double> scratch(batch * scratch_per_matrix(M, N), st);
  svd_general_kernel<T><<<grid_for(batch, kBlock), kBlock, 0, st>>>(
      X, batch, m, n, s, info, max_sweeps, pairs.get(), rounds, scratch.get());
  IR_CUDA_LAUNCHED("svdvals");
}

template void svdvals<float>(const float*, std::int64_t, int, int, float*, std::int8_t*, int,
                             void*);
template void svdvals<double>(const double*, std::int64_t, int, int, double*, std::int8_t*, int,
                              void*);

}  // namespace cuda
}  // namespace implicitreg
