// Public C++ API of the CP tensor factorization kernels (PAPER.md §4): plain pointers and
// sizes. Validation lives in Python; these functions trust their inputs.
#pragma once
#include <cstdint>

#include "implicitreg/codes.h"
#include "implicitreg/optimizer.h"

namespace implicitreg {

// A batch of `batch` CP factorizations of order `order`: factor n of problem b is U_n of
// shape (dims[n], rank), stored as `order` arrays of shape (batch, dims[n], rank),
// C-contiguous. The tensor is W[i_1..i_N] = sum_r prod_n U_n[i_n, r].
struct CpShape {
  std::int64_t batch;
  int order;
  const int* dims;
  int rank;
};

// What is learned: target and mask (numel entries in C order per problem; batch stride 0
// shares one). loss = mean over observed entries of (W - target)^2 (PAPER.md §4.3: no 1/2).
// `observed` lists each problem's observed entries once, so that no call scans the mask: rows
// of `observed_slots` flat indices in ascending order, then -1 in the slots past the problem's
// count (batch stride 0 shares one row). A problem's list ends at its first slot outside
// [0, numel).
template <class T>
struct CpProblem {
  const T* target = nullptr;
  const std::uint8_t* mask = nullptr;
  const std::int64_t* observed = nullptr;
  std::int64_t target_stride = 0, mask_stride = 0, observed_stride = 0, observed_slots = 0;
};

namespace cpu {

// `steps` updates of every running problem, with the freeze and divergence semantics of
// dmf_step: before each update and once after the last, loss < tol freezes a problem as
// kConverged and a non-finite loss or update freezes it as kDiverged at its last finite
// iterate (optimizer state included; opt.m and opt.s, for adam, hold one array per factor);
// frozen_at gets the number of updates made (from step0).
// loss_out (batch,) receives the loss of the last iterate of each problem running at the
// start of the call; a problem frozen before the call is skipped (loss_out[b] unchanged).
template <class T>
void cp_step(T* const* factors, const CpShape& shape, const CpProblem<T>& problem, const T* lr,
             std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
             const OptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
             T* loss_out);

// The full tensors (batch, numel) of the factors.
template <class T>
void cp_tensor(const T* const* factors, const CpShape& shape, T* out);

// Estimated CP rank of each tensor T (batch, numel) of order `order` and mode sizes dims
// (PAPER.md §4.5): 0 when every |entry| <= 1e-8; else the smallest r in [1, max_rank] found
// by bisection whose CP-ALS fit (at most max_iter sweeps, stopped when the mean squared
// error is below tol) has mean squared error below tol, trying `restarts` seeded random
// starts per r and keeping the best; -1 for a tensor with a non-finite entry. Starts come
// from a counter-based generator keyed by (seed, tensor index, r, restart): deterministic
// whatever the batch or thread count.
void tensor_rank(const double* tensors, std::int64_t batch, int order, const int* dims, double tol,
                 int max_rank, int max_iter, int restarts, std::uint64_t seed,
                 std::int64_t* rank_out);

// The CP-ALS fit of one rank r from the seeded start (tensor index, r, restart): its mean
// squared error after at most max_iter sweeps (the building block of tensor_rank).
double cp_als_mse(const double* tensor, int order, const int* dims, int r, double tol, int max_iter,
                  std::uint64_t seed, std::int64_t index, int restart);

}  // namespace cpu

namespace cuda {

// cpu::cp_step and cpu::cp_tensor on device memory (orders 1..kMaxCpOrder, mode
// sizes 1..kMaxCpDim): every array is a device pointer (the array of factor pointers is read on the
// host). They run on `stream` (a cudaStream_t); cp_step waits once per call, for the count of
// observed entries that sizes its scratch, and errors throw std::runtime_error.
template <class T>
void cp_step(T* const* factors, const CpShape& shape, const CpProblem<T>& problem, const T* lr,
             std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
             const OptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
             T* loss_out, void* stream);

template <class T>
void cp_tensor(const T* const* factors, const CpShape& shape, T* out, void* stream);

}  // namespace cuda
}  // namespace implicitreg
