// Public C++ API of the deep matrix factorization kernels: plain pointers, sizes, strides.
// Validation lives in Python; these functions trust their inputs.
#pragma once
#include <cstdint>

#include "implicitreg/codes.h"
#include "implicitreg/optimizer.h"

namespace implicitreg {

// A batch of `batch` factorizations E = W_N ... W_1 with W_j of shape (d_j, d_{j-1}),
// stored as `depth` arrays of shape (batch, d_j, d_{j-1}), C-contiguous.
struct DmfShape {
  std::int64_t batch;
  int depth;
  const int* dims;  // depth + 1 entries: d_0 = n (columns of E), ..., d_N = m (rows of E)
};

// What is learned. Batch strides are in elements; a stride of 0 broadcasts one problem.
//  completion: loss = 1/2 sum_{mask} (E - target)^2, target/mask of shape (m, n) per problem;
//  sensing:    loss = 1/2 sum_k (<A_k, E> - y_k)^2, A of shape (K, m, n), y of shape (K,).
template <class T>
struct DmfProblem {
  bool sensing = false;
  const T* target = nullptr;
  const std::uint8_t* mask = nullptr;
  std::int64_t target_stride = 0, mask_stride = 0;
  const T* A = nullptr;
  const T* y = nullptr;
  int K = 0;
  std::int64_t A_stride = 0, y_stride = 0;
};

// First crossings of loss thresholds, recorded inside the step loop so that they are exact
// to the step however sparsely the caller logs. thresholds: `count` values, strictly
// decreasing. step (batch, count): the first step whose iterate had loss < thresholds[k], -1
// until then; a problem's crossings so far are its leading non-negative entries, so calls
// continue where the last one stopped. snapshots: one array per factor, (batch, count, d_j,
// d_{j-1}), receiving that iterate's factors (null: steps only).
template <class T>
struct DmfCrossings {
  int count = 0;
  const T* thresholds = nullptr;
  std::int64_t* step = nullptr;
  T* const* snapshots = nullptr;
};

namespace cpu {

// `steps` simultaneous updates of every running problem's factors by the optimizer (gd:
// W_j <- W_j - lr_b dL/dW_j, fused into the backward pass). Before each update, and once after the
// last, a problem whose loss is below `tol` is frozen as kConverged; one whose loss or next iterate
// is non-finite is frozen as kDiverged at its last finite iterate. frozen_at[b] receives the number
// of updates the frozen iterate has had (step0 counts those made before this call). Frozen problems
// are never touched; each problem's arithmetic does not depend on the others. Threshold crossings
// are checked on the same losses, before the tolerance freezes a problem.
template <class T>
void dmf_step(T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem, const T* lr,
              std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
              const OptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
              const DmfCrossings<T>& crossings = {});

// Loss (batch,) and end-to-end product (batch, m, n) of the current factors.
template <class T>
void dmf_loss(const T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem, T* loss,
              T* product);

}  // namespace cpu

namespace cuda {

// cpu::dmf_step and cpu::dmf_loss on device memory: every array is a device pointer (the
// arrays of pointers, factors and snapshots, are read on the host). They run on `stream` (a
// cudaStream_t) and return without waiting; errors throw std::runtime_error. Depth <=
// kMaxCudaDepth.
template <class T>
void dmf_step(T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem, const T* lr,
              std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
              const OptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
              const DmfCrossings<T>& crossings, void* stream);

template <class T>
void dmf_loss(const T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem, T* loss,
              T* product, void* stream);

}  // namespace cuda

// Build facts reported by implicitreg.build_info().
int simd_lanes_f64();
bool openmp_enabled();

namespace cpu {
// The measured multiply-add throughput in flop/s of `threads` threads, each running `rounds`
// rounds of independent FMA chains on the kernels' vectors (cpu/fma_probe.cpp).
template <class T>
double fma_probe(int threads, std::int64_t rounds);
}  // namespace cpu

}  // namespace implicitreg
