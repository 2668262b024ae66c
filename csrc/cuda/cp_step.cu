// CUDA driver of the CP tensor factorization kernels: one problem per block.
//
// A call first copies each problem's observed entries from its list (problem.observed: made
// once per problem, so that no call scans the mask or reads a count back) into global
// scratch: the multi-index packed in 10-bit fields, and the target. Each step then runs in two
// phases, in a kernel compiled for each order (so that the per-mode rows, digits and partial
// products stay in registers):
//   1. residuals: each warp takes an entry, its lanes the components r, and sums the product
//      over modes with a warp reduction; the loss is their mean square (summed in double);
//   2. gradient: the block's threads form `groups` groups, each with its own copy of the
//      gradient; a thread owns components r of its group's copy and walks the group's share of
//      the observed entries (every groups-th), adding g * (prefix * suffix) to its own columns,
//      so that no two threads ever write the same word. The copies are then summed in group
//      order. Groups put a block's idle threads to work when R is small (R = 16 alone would
//      leave a warp per block), and the sums stay deterministic (no atomics).
// The update, its finiteness check and the optimizer state follow cpu::cp_step exactly
// (freezing, divergence at the last finite iterate); only the order in which products and
// sums are formed differs (the CPU groups entries that share all indices but the last, which
// a thread per component gains nothing from). The gradient copies and residuals live in shared
// memory when they fit, else (one group) in a per-block slice of global scratch; the factors
// stay in global memory (each thread reads its own columns, coalesced across the block, and
// L1 keeps them).
#include <algorithm>
#include <cmath>

#include "cuda/common.cuh"
#include "implicitreg/cp_step.h"
#include "kernels/cp_step.h"
#include "kernels/freeze.h"
#include "kernels/optimizer.h"

namespace implicitreg {
namespace cuda {
namespace {

constexpr int kMaxOrder = kMaxCpOrder;
constexpr int kDigitBits = 10;  // mode sizes up to kMaxCpDim
static_assert(kMaxCpDim <= (1 << kDigitBits) && kMaxOrder * kDigitBits <= 64);
constexpr int kMaxThreads = 256;
constexpr int kScanThreads = 256;

template <class T>
struct CpArgs {
  T* U[kMaxOrder];
  int dims[kMaxOrder];
  int order, rank;
  std::int64_t batch, numel, size;  // size: entries of one problem's factors
  CpProblem<T> pb;
  const T* lr;
  std::int64_t lr_stride, steps, step0;
  T tol;
  OptimizerState<T> opt;  // opt.m and opt.s point to host arrays: the kernels read M and S
  T* M[kMaxOrder];        // adam's moments, one array per factor
  T* S[kMaxOrder];
  std::int8_t* status;
  std::int64_t* frozen_at;
  T* loss_out;
  // the compacted observed entries: obs_stride slots per problem, count[b] used
  std::uint64_t* digits;
  T* obs_target;
  int* count;
  std::int64_t obs_stride;
};

template <class T>
CpArgs<T> make_args(const T* const* factors, const CpShape& shape, const char* fn) {
  if (shape.order < 1 || shape.order > kMaxOrder)
    throw std::invalid_argument(std::string(fn) + ": order must be 1.." +
                                std::to_string(kMaxOrder) + ", got " + std::to_string(shape.order));
  CpArgs<T> a{};
  a.order = shape.order;
  a.rank = shape.rank;
  a.batch = shape.batch;
  a.numel = 1;
  for (int n = 0; n < shape.order; ++n) {
    if (shape.dims[n] < 1 || shape.dims[n] > (1 << kDigitBits))
      throw std::invalid_argument(std::string(fn) + ": mode sizes must be 1.." +
                                  std::to_string(1 << kDigitBits) + ", got " +
                                  std::to_string(shape.dims[n]));
    a.U[n] = const_cast<T*>(factors[n]);
    a.dims[n] = shape.dims[n];
    a.numel *= shape.dims[n];
    a.size += std::int64_t(shape.dims[n]) * shape.rank;
  }
  return a;
}

__device__ __forceinline__ int digit(std::uint64_t packed, int n) {
  return int((packed >> (kDigitBits * n)) & ((1u << kDigitBits) - 1));
}

// The call's copy of the observed entries: each problem's list up to its first slot outside
// [0, numel) (count[b] entries), multi-indices packed into digits and targets gathered, when
// `digits` is set; else the counts alone (the dense path). A block per problem, grid-stride.
template <class T>
__global__ void __launch_bounds__(kScanThreads) pack_kernel(const CpArgs<T> a) {
  __shared__ std::int64_t red[32];
  const std::int64_t slots = a.pb.observed_slots;
  for (std::int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {
    const std::int64_t* obs = a.pb.observed + b * a.pb.observed_stride;
    std::int64_t end = slots;  // the first slot outside the tensor, of this thread's slots
    for (std::int64_t k = threadIdx.x; k < slots; k += blockDim.x)
      if (obs[k] < 0 || obs[k] >= a.numel) {
        end = k;
        break;
      }
    end =
        block_reduce(end, red, slots, [](std::int64_t x, std::int64_t y) { return x < y ? x : y; });
    if (threadIdx.x == 0) a.count[b] = int(end);
    if (a.digits == nullptr) continue;
    const T* target = a.pb.target + b * a.pb.target_stride;
    for (std::int64_t k = threadIdx.x; k < end; k += blockDim.x) {
      std::uint64_t packed = 0;
      std::int64_t rest = obs[k];
      for (int n = a.order - 1; n >= 0; --n) {
        packed |= std::uint64_t(rest % a.dims[n]) << (kDigitBits * n);
        rest /= a.dims[n];
      }
      a.digits[b * a.obs_stride + k] = packed;
      a.obs_target[b * a.obs_stride + k] = target[obs[k]];
    }
  }
}

// Component r of an entry whose factor rows are u[0..order-1], the one product that both the
// step and cp_tensor form, so that a tensor's entry is the value the step trains.
template <class T>
__device__ __forceinline__ T component(const T* const* u, int order, int r) {
  return kernels::row_product<T>(order, [&](int n) { return u[n][r]; });
}

// Value of observed entry e summed over components r = lane, lane + 32, ..., then over the
// warp.
template <class T, int N>
__device__ __forceinline__ T entry_value(const CpArgs<T>& a, std::int64_t b, std::uint64_t packed,
                                         int lane) {
  const T* u[N];
#pragma unroll
  for (int n = 0; n < N; ++n)
    u[n] = a.U[n] + (b * a.dims[n] + digit(packed, n)) * std::int64_t(a.rank);
  T value = 0;
  for (int r = lane; r < a.rank; r += 32) value += component(u, N, r);
  for (int off = 16; off > 0; off >>= 1) value += __shfl_xor_sync(0xffffffffu, value, off);
  return value;
}

// Mean squared residual of problem b's current iterate; res[e] = value - target per entry.
template <class T, int N>
__device__ T residuals(const CpArgs<T>& a, std::int64_t b, int n_obs, T* res, double* red) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const std::uint64_t* dg = a.digits + b * a.obs_stride;
  const T* tg = a.obs_target + b * a.obs_stride;
  double sq = 0;
  // every warp runs the same number of rounds: the shuffles need the whole warp
  for (int base = 0; base < n_obs; base += warps) {
    const int e = base + warp;
    const T value = entry_value<T, N>(a, b, dg[e < n_obs ? e : 0], lane);
    if (e < n_obs && lane == 0) {
      const T r = value - tg[e];
      res[e] = r;
      sq += double(r) * double(r);
    }
  }
  const double total = block_sum(sq, red);  // also orders res before the gradient reads it
  return kernels::cp_mean_loss<T>(total, n_obs);
}

// The gradient into G (the factors' layout, `size` entries): group g of the block's `groups`
// adds the entries g, g + groups, ... into its copy G + g * size, each thread its own
// components; then the copies are summed into G in group order.
template <class T, int N>
__device__ void gradient(const CpArgs<T>& a, std::int64_t b, int n_obs, const T* res, T* G,
                         int groups) {
  const int R = a.rank, per_group = blockDim.x / groups;
  const int group = threadIdx.x / per_group, first = threadIdx.x % per_group;
  const std::uint64_t* dg = a.digits + b * a.obs_stride;
  const T scale = kernels::cp_residual_scale<T>(n_obs);
  const T* row0[N];
  std::int64_t grow0[N], off = 0;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    row0[n] = a.U[n] + b * a.dims[n] * std::int64_t(R);
    grow0[n] = off;
    off += std::int64_t(a.dims[n]) * R;
  }
  T* Gg = G + group * a.size;
  for (int r = first; r < R; r += per_group) {
    for (std::int64_t i = r; i < a.size; i += R) Gg[i] = T(0);
    for (int e = group; e < n_obs; e += groups) {
      const std::uint64_t packed = dg[e];
      const T g = scale * res[e];
      T u[N];
      int d[N];
#pragma unroll
      for (int n = 0; n < N; ++n) {
        d[n] = digit(packed, n);
        u[n] = row0[n][std::int64_t(d[n]) * R + r];
      }
      kernels::leave_one_out(
          u, N, T(1), [&](int n, T x) { Gg[grow0[n] + std::int64_t(d[n]) * R + r] += g * x; });
    }
  }
  if (groups == 1) return;  // each thread reads back only its own columns
  __syncthreads();
  for (std::int64_t i = threadIdx.x; i < a.size; i += blockDim.x) {
    T sum = G[i];
    for (int k = 1; k < groups; ++k) sum += G[k * a.size + i];
    G[i] = sum;
  }
  __syncthreads();
}

// Whether problem b stops at update `it` of the call, with the loss of its current iterate:
// a loss below tol freezes it as converged, a non-finite one as diverged, and the call's last
// update stops it running. Every thread saw the same loss: the answer is uniform over the
// block.
template <class T>
__device__ __forceinline__ bool stops(const CpArgs<T>& a, std::int64_t b, std::int64_t it, T loss) {
  if (threadIdx.x == 0) a.loss_out[b] = loss;
  const std::int8_t st = kernels::status_at(loss, a.tol);
  if (st != kRunning) {
    if (threadIdx.x == 0) {
      a.status[b] = st;
      a.frozen_at[b] = a.step0 + it;
    }
    return true;
  }
  return it == a.steps;
}

// One update of problem b from its gradient G (the factors' layout, `size` entries), with the
// optimizer: committed only if every entry of the next iterate, and the optimizer state, is
// finite; else the problem freezes as diverged at its last finite iterate (returns false).
// Every thread of the block calls it; it ends with the factors written.
template <class T>
__device__ __forceinline__ bool update(const CpArgs<T>& a, std::int64_t b, std::int64_t it, T rate,
                                       const T* G, double* red) {
  const OptimizerState<T>& o = a.opt;
  T step = rate, v_new = 0, probes = 0;
  kernels::AdamRate<T> adam{};
  if (o.kind == kGroupRmsprop) {
    double sq = 0;
    for (int r = threadIdx.x; r < a.rank; r += blockDim.x)
      for (std::int64_t i = r; i < a.size; i += a.rank) sq += double(G[i]) * double(G[i]);
    sq = block_sum(sq, red);
    step = kernels::rmsprop_rate(rate, o.beta, o.eps, o.v[b], o.t[b], sq, v_new);
    probes = kernels::probe(step) + kernels::probe(v_new);
  } else if (o.kind == kAdam) {
    adam = kernels::adam_rate(rate, o.beta1, o.beta2, o.t[b]);
  }
  // The next iterate, committed only if every entry (and the optimizer state) is finite: each
  // thread checks its own columns of every factor, then (when all are) writes them.
  auto each = [&](auto f) {
    std::int64_t goff = 0;
    for (int n = 0; n < a.order; ++n) {
      const std::int64_t rows = std::int64_t(a.dims[n]) * a.rank;
      for (int r = threadIdx.x; r < a.rank; r += blockDim.x)
        for (std::int64_t i = r; i < rows; i += a.rank) f(n, b * rows + i, G[goff + i]);
      goff += rows;
    }
  };
  double bad = 0;
  each([&](int n, std::int64_t i, T g) {
    const T u = a.U[n][i];
    if (o.kind == kAdam) {
      T m = a.M[n][i], s = a.S[n][i];
      const T nx = kernels::adam_update(u, g, m, s, o.beta1, o.beta2, o.eps, adam);
      bad += double(kernels::probe(nx) + kernels::probe(m) + kernels::probe(s));
    } else {
      bad += double(kernels::probe(u - step * g));
    }
  });
  const double bad_sum = block_sum(bad, red);  // every thread calls it
  if (!kernels::commits(T(bad_sum) + probes)) {
    if (threadIdx.x == 0) {
      a.status[b] = kDiverged;
      a.frozen_at[b] = a.step0 + it;
    }
    return false;
  }
  each([&](int n, std::int64_t i, T g) {
    T& u = a.U[n][i];
    if (o.kind == kAdam)  // recomputed: the same values the check saw
      u = kernels::adam_update(u, g, a.M[n][i], a.S[n][i], o.beta1, o.beta2, o.eps, adam);
    else
      u = u - step * g;
  });
  if (threadIdx.x == 0) {
    if (o.kind == kGroupRmsprop) o.v[b] = v_new;
    if (o.kind != kGd) o.t[b] += 1;
  }
  __syncthreads();  // the factors and state are written before the next residuals
  return true;
}

// Every step of the call for the problems of this block (grid-stride). G holds `groups`
// copies of a problem's gradient (size entries each) and res its residuals (obs_stride
// entries): in shared memory when ws is null, else in this block's slice of ws. No
// __launch_bounds__: with it ptxas caps the kernel at 64 registers and spills (44/80 B at
// order 2, float64); without, it takes 56-96 and spills nothing, which 256 threads afford.
template <class T, int N>
__global__ void cp_step_kernel(const CpArgs<T> a, int groups, T* ws) {
  __shared__ double red[32];
  const std::int64_t per_block = groups * a.size + a.obs_stride;
  T* G = ws != nullptr ? ws + blockIdx.x * per_block : reinterpret_cast<T*>(dynamic_smem());
  T* res = G + groups * a.size;
  for (std::int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {
    if (a.status[b] != kRunning) continue;  // frozen: nothing to do, loss_out left as it is
    const int n_obs = a.count[b];
    const T rate = a.lr[b * a.lr_stride];
    for (std::int64_t it = 0;; ++it) {
      const T loss = residuals<T, N>(a, b, n_obs, res, red);
      if (stops(a, b, it, loss)) break;
      gradient<T, N>(a, b, n_obs, res, G, groups);
      if (!update(a, b, it, rate, G, red)) break;
    }
    __syncthreads();  // G and res are reused by the block's next problem
  }
}

// Launches the per-entry kernel compiled for order N (N from 2 up): threads a warp per 32
// components (at most kMaxThreads), then as many groups as fill kMaxThreads threads with
// their gradient copies in at most a quarter of a multiprocessor's shared memory (so that
// several blocks stay resident); one group in global scratch when even one does not fit.
template <class T, int N = 2>
void launch_entries(const CpArgs<T>& a, const DeviceLimits& limits, cudaStream_t stream) {
  if constexpr (N < kMaxOrder) {
    if (a.order != N) return launch_entries<T, N + 1>(a, limits, stream);
  }
  const int per_group = int(std::min<std::int64_t>(kMaxThreads, (a.rank + 31) / 32 * 32));
  auto bytes = [&](int groups) {
    return (groups * a.size + a.obs_stride) * std::int64_t(sizeof(T));
  };
  int groups = kMaxThreads / per_group;
  while (groups > 1 && bytes(groups) > limits.smem_per_sm / 4) --groups;
  if (reserve_shared(cp_step_kernel<T, N>, bytes(groups), limits)) {
    const unsigned grid = unsigned(std::min<std::int64_t>(a.batch, 1 << 30));
    launch(cp_step_kernel<T, N>, grid, unsigned(groups * per_group), std::size_t(bytes(groups)),
           stream, a, groups, static_cast<T*>(nullptr));
    IR_CUDA_LAUNCHED("cp_step (shared memory)");
  } else {
    const std::int64_t grid = std::min<std::int64_t>(a.batch, std::int64_t(4) * limits.sms);
    Scratch<T> ws(grid * (bytes(1) / std::int64_t(sizeof(T))), stream);
    launch(cp_step_kernel<T, N>, unsigned(grid), unsigned(per_group), 0, stream, a, 1, ws.get());
    IR_CUDA_LAUNCHED("cp_step (global memory)");
  }
}

// ---- the dense path: small tensors as products of two unfoldings --------------------------
//
// When a problem's whole tensor fits a block, a step is three small matrix products instead of
// a walk over the observed entries. The modes split into those that index rows, [0, split),
// and those that index columns, so that the tensor is W = Pl Pr^T, with Pl (rows x R) the
// Khatri-Rao product of the row modes' factors and Pr (cols x R) that of the column modes'.
// Per step, over chunks of kChunk components:
//   1. W += Pl_c Pr_c^T, each thread one 4x4 tile of W in registers; then the masked residual
//      E = mask * (W - target) in shared memory and the loss;
//   2. GL = E Pr_c and GR = E^T Pl_c (4x4 tiles again), from which each factor's gradient
//      is summed over the rows (or columns) that share its index.
// The update is the sparse path's. Every operand lives in shared memory; the gradient (the
// factors' layout) in this block's slice of global scratch.
constexpr int kDenseThreads = 256;  // at most one 4x4 tile of W per thread
constexpr int kChunk = 32;          // components per chunk
constexpr int kLd = kChunk + 1;     // row stride of the chunk buffers: no bank conflicts

struct DenseLayout {
  int split = 0, rows = 0, cols = 0, rows_p = 0, cols_p = 0, ld_e = 0;
  int threads = 0;  // one per tile of W, at least two warps
  // offsets (in elements) of Pl, Pr, E, GL and GR in dynamic shared memory; total 0: no dense
  // path for this shape
  std::int64_t pl = 0, pr = 0, e = 0, gl = 0, gr = 0, total = 0;
};

inline DenseLayout dense_layout(int order, const int* dims) {
  DenseLayout best;
  for (int split = 1; split < order; ++split) {
    DenseLayout l;
    l.split = split;
    l.rows = l.cols = 1;
    for (int n = 0; n < order; ++n) (n < split ? l.rows : l.cols) *= dims[n];
    l.rows_p = (l.rows + 3) / 4 * 4;
    l.cols_p = (l.cols + 3) / 4 * 4;
    const int tiles = (l.rows_p / 4) * (l.cols_p / 4);
    if (tiles > kDenseThreads) continue;
    l.threads = std::max(64, (tiles + 31) / 32 * 32);
    l.ld_e = l.cols_p + 1;
    l.pl = 0;
    l.pr = l.pl + std::int64_t(l.rows_p) * kLd;
    l.e = l.pr + std::int64_t(l.cols_p) * kLd;
    l.gl = l.e + std::int64_t(l.rows_p) * l.ld_e;
    l.gr = l.gl + std::int64_t(l.rows_p) * kLd;
    l.total = l.gr + std::int64_t(l.cols_p) * kLd;
    if (best.total == 0 || l.total < best.total) best = l;
  }
  return best;
}

// Components in the chunk that starts at c0.
__device__ __forceinline__ int chunk_size(int R, int c0) {
  return R - c0 < kChunk ? R - c0 : kChunk;
}

// acc(p, q) += sum over k < K of A(i0 + p, k) B(k, j0 + q), p, q < 4, with A(i, k) at
// A[i * sai + k * sak] and B(k, j) at B[k * sbk + j * sbj].
template <class T>
__device__ __forceinline__ void tile_product(T (&acc)[4][4], const T* A, int sai, int sak,
                                             const T* B, int sbk, int sbj, int i0, int j0, int K) {
  for (int k = 0; k < K; ++k) {
    T x[4], y[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) x[p] = A[(i0 + p) * sai + k * sak];
#pragma unroll
    for (int q = 0; q < 4; ++q) y[q] = B[k * sbk + (j0 + q) * sbj];
#pragma unroll
    for (int p = 0; p < 4; ++p)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[p][q] += x[p] * y[q];
  }
}

// The chunk's Khatri-Rao rows: Pl[row][c] = prod over the row modes n of U_n[digit_n(row)]
// [c0 + c], Pr[col][c] likewise over the column modes; zero for c >= rc.
template <class T>
__device__ __forceinline__ void chunk_products(const CpArgs<T>& a, const DenseLayout& l,
                                               std::int64_t b, int c0, int rc, T* Pl, T* Pr) {
  const int total = (l.rows + l.cols) * kChunk;
  for (int k = threadIdx.x; k < total; k += blockDim.x) {
    const int c = k % kChunk;
    int idx = k / kChunk;
    const bool left = idx < l.rows;
    T* out = left ? Pl + idx * kLd : Pr + (idx - l.rows) * kLd;
    if (!left) idx -= l.rows;
    T p = T(0);
    if (c < rc) {
      p = T(1);
      for (int n = left ? l.split - 1 : a.order - 1; n >= (left ? 0 : l.split); --n) {
        const int d = idx % a.dims[n];
        idx /= a.dims[n];
        p *= a.U[n][(b * a.dims[n] + d) * std::int64_t(a.rank) + c0 + c];
      }
    }
    out[c] = p;
  }
}

template <class T>
__global__ void cp_dense_kernel(const CpArgs<T> a, const DenseLayout l, T* ws) {
  __shared__ double red[32];
  T* sm = reinterpret_cast<T*>(dynamic_smem());
  T *Pl = sm + l.pl, *Pr = sm + l.pr, *E = sm + l.e, *GL = sm + l.gl, *GR = sm + l.gr;
  T* G = ws + blockIdx.x * a.size;
  const int R = a.rank, tiles_c = l.cols_p / 4;
  const bool owner = int(threadIdx.x) < (l.rows_p / 4) * tiles_c;  // owns a tile of W
  const int i0 = owner ? int(threadIdx.x) / tiles_c * 4 : 0;
  const int j0 = owner ? int(threadIdx.x) % tiles_c * 4 : 0;
  const int gl_tiles = (l.rows_p / 4) * (kChunk / 4), gr_tiles = (l.cols_p / 4) * (kChunk / 4);
  for (std::int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {
    if (a.status[b] != kRunning) continue;  // frozen: nothing to do, loss_out left as it is
    const int n_obs = a.count[b];
    const T rate = a.lr[b * a.lr_stride];
    const T scale = kernels::cp_residual_scale<T>(n_obs);
    const std::uint8_t* mask = a.pb.mask + b * a.pb.mask_stride;
    const T* target = a.pb.target + b * a.pb.target_stride;
    for (std::int64_t it = 0;; ++it) {
      // 1. W = Pl Pr^T, then E and the loss
      T acc[4][4] = {};
      for (int c0 = 0; c0 < R; c0 += kChunk) {
        chunk_products(a, l, b, c0, chunk_size(R, c0), Pl, Pr);
        __syncthreads();
        if (owner) tile_product(acc, Pl, kLd, 1, Pr, 1, kLd, i0, j0, chunk_size(R, c0));
        __syncthreads();  // Pl and Pr are rewritten by the next chunk
      }
      double sq = 0;
      if (owner)
#pragma unroll
        for (int p = 0; p < 4; ++p)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const int row = i0 + p, col = j0 + q;
            if (row >= l.rows || col >= l.cols) continue;
            const std::int64_t e = std::int64_t(row) * l.cols + col;
            const T r = mask[e] != 0 ? acc[p][q] - target[e] : T(0);
            E[row * l.ld_e + col] = r;
            sq += double(r) * double(r);
          }
      const double total = block_sum(sq, red);  // also orders E before the products read it
      const T loss = kernels::cp_mean_loss<T>(total, n_obs);
      if (stops(a, b, it, loss)) break;
      // 2. the gradient, a chunk of components at a time
      for (int c0 = 0; c0 < R; c0 += kChunk) {
        const int rc = chunk_size(R, c0);
        chunk_products(a, l, b, c0, rc, Pl, Pr);
        __syncthreads();
        for (int t = threadIdx.x; t < gl_tiles + gr_tiles; t += blockDim.x) {
          T g[4][4] = {};
          const bool gl = t < gl_tiles;
          const int tt = gl ? t : t - gl_tiles;
          const int gi = tt / (kChunk / 4) * 4, gj = tt % (kChunk / 4) * 4;
          if (gl)  // GL(row, c) = sum over col of E(row, col) Pr(col, c)
            tile_product(g, E, l.ld_e, 1, Pr, kLd, 1, gi, gj, l.cols);
          else  // GR(col, c) = sum over row of E(row, col) Pl(row, c)
            tile_product(g, E, 1, l.ld_e, Pl, kLd, 1, gi, gj, l.rows);
          T* out = gl ? GL : GR;
#pragma unroll
          for (int p = 0; p < 4; ++p)
#pragma unroll
            for (int q = 0; q < 4; ++q) out[(gi + p) * kLd + gj + q] = g[p][q];
        }
        __syncthreads();
        // dL/dU_n[d][c0 + c] = scale * sum over the rows (columns) whose digit n is d of
        // GL (GR) times the product of the other row (column) modes' factors
        std::int64_t goff = 0;
        int first = 0;  // the (n, d, c) of this thread: k over n, then d, then c
        for (int n = 0; n < a.order; ++n) {
          const bool left = n < l.split;
          const int lo = left ? 0 : l.split, hi = left ? l.split : a.order;
          int inner = 1;  // stride of digit n in its unfolding index
          for (int m = n + 1; m < hi; ++m) inner *= a.dims[m];
          const int outer = (left ? l.rows : l.cols) / (inner * a.dims[n]);
          const T* src = left ? GL : GR;
          for (int k = threadIdx.x - first; k < a.dims[n] * kChunk; k += blockDim.x) {
            if (k < 0) continue;
            const int d = k / kChunk, c = k % kChunk;
            if (c >= rc) continue;
            T sum = T(0);
            for (int o = 0; o < outer; ++o)
              for (int in = 0; in < inner; ++in) {
                const int idx = (o * a.dims[n] + d) * inner + in;
                T w = src[idx * kLd + c];
                int rest = idx;
                for (int m = hi - 1; m >= lo; --m) {
                  const int dm = rest % a.dims[m];
                  rest /= a.dims[m];
                  if (m != n) w *= a.U[m][(b * a.dims[m] + dm) * std::int64_t(R) + c0 + c];
                }
                sum += w;
              }
            G[goff + std::int64_t(d) * R + c0 + c] = scale * sum;
          }
          first += a.dims[n] * kChunk;
          goff += std::int64_t(a.dims[n]) * R;
        }
        __syncthreads();  // the chunk's buffers are rewritten next; G is complete at the end
      }
      if (!update(a, b, it, rate, G, red)) break;
    }
  }
}

template <class T>
__global__ void cp_tensor_kernel(const CpArgs<T> a, T* out) {
  const std::int64_t total = a.batch * a.numel;
  for (std::int64_t k = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; k < total;
       k += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t b = k / a.numel;
    std::int64_t rest = k - b * a.numel;
    const T* u[kMaxOrder];
    for (int n = a.order - 1; n >= 0; --n) {
      u[n] = a.U[n] + (b * a.dims[n] + rest % a.dims[n]) * std::int64_t(a.rank);
      rest /= a.dims[n];
    }
    T value = 0;
    for (int r = 0; r < a.rank; ++r) value += component(u, a.order, r);
    out[k] = value;
  }
}

}  // namespace

template <class T>
void cp_step(T* const* factors, const CpShape& shape, const CpProblem<T>& problem, const T* lr,
             std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
             const OptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
             T* loss_out, void* stream_handle) {
  if (shape.batch == 0) return;
  const cudaStream_t stream = as_stream(stream_handle);
  CpArgs<T> a = make_args(factors, shape, "cuda cp_step");
  a.pb = problem;
  a.lr = lr;
  a.lr_stride = lr_stride;
  a.steps = steps;
  a.tol = tol;
  a.step0 = step0;
  a.opt = opt;
  for (int n = 0; n < shape.order && opt.kind == kAdam; ++n) {
    a.M[n] = opt.m[n];
    a.S[n] = opt.s[n];
  }
  a.status = status;
  a.frozen_at = frozen_at;
  a.loss_out = loss_out;
  const DeviceLimits limits = device_limits();

  // Each problem's count (and, for the per-entry path, its entries): no host sync.
  Scratch<int> count(a.batch, stream);
  a.count = count.get();
  const unsigned pack_grid =
      unsigned(std::min<std::int64_t>(a.batch, std::int64_t(32) * limits.sms));

  // A tensor that fits a block: the dense path.
  const DenseLayout l = dense_layout(a.order, a.dims);
  if (l.total > 0 &&
      reserve_shared(cp_dense_kernel<T>, l.total * std::int64_t(sizeof(T)), limits)) {
    const std::int64_t bytes = l.total * std::int64_t(sizeof(T));
    const std::int64_t grid = std::min<std::int64_t>(
        a.batch, resident_blocks(limits, bytes, l.threads) * std::int64_t(limits.sms));
    Scratch<T> ws(grid * a.size, stream);
    launch(pack_kernel<T>, pack_grid, kScanThreads, 0, stream, a);
    IR_CUDA_LAUNCHED("cp_step (count)");
    launch(cp_dense_kernel<T>, unsigned(grid), unsigned(l.threads), std::size_t(bytes), stream, a,
           l, ws.get());
    IR_CUDA_LAUNCHED("cp_step (dense)");
    return;
  }

  // Else the observed entries, one slot per slot of the problem's list.
  a.obs_stride = problem.observed_slots;
  Scratch<std::uint64_t> digits(a.batch * a.obs_stride, stream);
  Scratch<T> obs_target(a.batch * a.obs_stride, stream);
  a.digits = digits.get();
  a.obs_target = obs_target.get();
  launch(pack_kernel<T>, pack_grid, kScanThreads, 0, stream, a);
  IR_CUDA_LAUNCHED("cp_step (pack)");
  launch_entries(a, limits, stream);
}

template <class T>
void cp_tensor(const T* const* factors, const CpShape& shape, T* out, void* stream_handle) {
  if (shape.batch == 0) return;
  CpArgs<T> a = make_args(factors, shape, "cuda cp_tensor");
  constexpr int kBlock = 256;
  const std::int64_t blocks = std::min<std::int64_t>(grid_for(a.batch * a.numel, kBlock),
                                                     std::int64_t(64) * device_limits().sms);
  launch(cp_tensor_kernel<T>, unsigned(std::max<std::int64_t>(blocks, 1)), kBlock, 0,
         as_stream(stream_handle), a, out);
  IR_CUDA_LAUNCHED("cp_tensor");
}

template void cp_step<float>(float* const*, const CpShape&, const CpProblem<float>&, const float*,
                             std::int64_t, std::int64_t, float, std::int64_t,
                             const OptimizerState<float>&, std::int8_t*, std::int64_t*, float*,
                             void*);
template void cp_step<double>(double* const*, const CpShape&, const CpProblem<double>&,
                              const double*, std::int64_t, std::int64_t, double, std::int64_t,
                              const OptimizerState<double>&, std::int8_t*, std::int64_t*, double*,
                              void*);
template void cp_tensor<float>(const float* const*, const CpShape&, float*, void*);
template void cp_tensor<double>(const double* const*, const CpShape&, double*, void*);

}  // namespace cuda
}  // namespace implicitreg
