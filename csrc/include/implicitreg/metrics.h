// Public C++ API of the singular values and the rank and norm metrics (PAPER.md §5).
// Validation lives in Python; these functions trust their inputs.
#pragma once
#include <cstdint>

#include "implicitreg/codes.h"
#include "implicitreg/dmf_step.h"

namespace implicitreg {

// One requested metric. param: kEntry the flat index i * n + j, kSchatten p, kDistRank r,
// kRank an absolute tolerance; rtol (kRank only) adds rtol * sigma_1 to that tolerance.
struct MetricSpec {
  std::int32_t kind;
  double param;
  double rtol;
};

namespace cpu {

// Singular values s (batch, min(m, n)), descending, of X (batch, m, n) C-contiguous; info
// (batch,) gets an SvdInfo. A matrix with a non-finite entry gets NaN singular values; one
// whose Jacobi iteration is cut by max_sweeps gets its last iterate and kSvdNotConverged.
template <class T>
void svdvals(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info,
             int max_sweeps = kMaxSweeps);

// The thin SVD X = U diag(s) Vh of X (batch, m, n) C-contiguous: U (batch, m, k), s (batch,
// k) descending, Vh (batch, k, n), k = min(m, n), by one-sided Jacobi with the rotations
// accumulated; left vectors of zero singular values complete U to orthonormal columns. info
// and non-finite or unconverged matrices as svdvals (NaN everywhere for a non-finite one).
template <class T>
void svd(const T* X, std::int64_t batch, int m, int n, T* U, T* s, T* Vh, std::int8_t* info,
         int max_sweeps = kMaxSweeps);

// Metrics of singular values s (batch, k), descending: out[i * batch + b] = spec i of problem
// b. Only the kinds kFro ... kDistRank. NaN singular values give NaN metrics.
template <class T>
void svals_metrics(const T* s, std::int64_t batch, int k, const MetricSpec* specs, int n_specs,
                   double* out);

// max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F per problem (0 at depth 1), in double.
template <class T>
void balancedness(const T* const* factors, const DmfShape& shape, double* out);

// Every metric of one fit() log point in one call: out (rows, batch), one row per spec in
// order, except kSvals which takes min(m, n) rows. Singular values come from one SVD of each
// end-to-end matrix; det is in double (the product of the factors' determinants when they
// are all square, so its sign is exact even where the product rounds to rank one).
// kReconError is ||E - truth||_F / ||truth||_F (unnormalized when truth is 0), truth of shape
// (m, n) per problem at batch stride truth_stride (0: shared; null when no kReconError).
template <class T>
void dmf_measure(const T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem,
                 const MetricSpec* specs, int n_specs, double* out, const T* truth = nullptr,
                 std::int64_t truth_stride = 0);

}  // namespace cpu

namespace cuda {

// The cpu:: functions above on device memory (factor pointer arrays read on the host), on
// `stream` (a cudaStream_t), without waiting; errors throw std::runtime_error.
template <class T>
void svdvals(const T* X, std::int64_t batch, int m, int n, T* s, std::int8_t* info, int max_sweeps,
             void* stream);

template <class T>
void svd(const T* X, std::int64_t batch, int m, int n, T* U, T* s, T* Vh, std::int8_t* info,
         int max_sweeps, void* stream);

template <class T>
void svals_metrics(const T* s, std::int64_t batch, int k, const MetricSpec* specs, int n_specs,
                   double* out, void* stream);

template <class T>
void balancedness(const T* const* factors, const DmfShape& shape, double* out, void* stream);

template <class T>
void dmf_measure(const T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem,
                 const MetricSpec* specs, int n_specs, double* out, const T* truth,
                 std::int64_t truth_stride, void* stream);

}  // namespace cuda
}  // namespace implicitreg
