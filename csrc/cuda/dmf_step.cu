// CUDA driver of the deep matrix factorization kernels.
//
// Square problems of size <= 4 and depth <= 4 run one per thread: factors, prefix products and
// problem data stay in registers for the whole call, and the step loop is the CPU's
// (kernels/dmf_step.h, one lane). Every other shape runs one problem per block: each phase of a
// step (one product, the residual, one layer's update) spreads its outputs over the block's
// threads, with the problem's matrices in shared memory when they fit and in a per-block slice
// of global scratch otherwise. Both follow cpu::dmf_step's semantics exactly (freezing,
// divergence at the last finite iterate, crossings checked before the tolerance); only the
// order of a few sums differs.
#include <algorithm>
#include <limits>

#include "cuda/common.cuh"
#include "implicitreg/dmf_step.h"
#include "kernels/dmf_step.h"
#include "kernels/freeze.h"
#include "kernels/optimizer.h"

namespace implicitreg {
namespace cuda {
namespace {

template <class T>
struct StepArgs {
  T* factors[kMaxCudaDepth];
  T* snapshots[kMaxCudaDepth];  // null: crossing steps only
  int dims[kMaxCudaDepth + 1];
  int depth;
  std::int64_t batch;
  DmfProblem<T> pb;
  const T* lr;
  std::int64_t lr_stride;
  std::int64_t steps;
  T tol;
  std::int64_t step0;
  OptimizerState<T> opt;  // opt.m and opt.s point to host arrays: the kernels read M and S
  T* M[kMaxCudaDepth];    // adam's moments, one array per factor
  T* S[kMaxCudaDepth];
  std::int8_t* status;
  std::int64_t* frozen_at;
  int count;  // crossing thresholds
  const T* thresholds;
  std::int64_t* crossed;
  T* loss;  // dmf_loss only
  T* product;
};

template <class T>
StepArgs<T> make_args(const T* const* factors, const DmfShape& shape, const DmfProblem<T>& pb) {
  if (shape.depth < 1 || shape.depth > kMaxCudaDepth)
    throw std::invalid_argument("cuda dmf_step: depth must be 1.." + std::to_string(kMaxCudaDepth) +
                                ", got " + std::to_string(shape.depth));
  StepArgs<T> a{};
  for (int j = 0; j < shape.depth; ++j) a.factors[j] = const_cast<T*>(factors[j]);
  for (int j = 0; j <= shape.depth; ++j) a.dims[j] = shape.dims[j];
  a.depth = shape.depth;
  a.batch = shape.batch;
  a.pb = pb;
  return a;
}

template <class T>
__device__ __forceinline__ T threshold_at(const StepArgs<T>& a, int k) {
  return k < a.count ? a.thresholds[k] : -std::numeric_limits<T>::infinity();
}

template <class T>
__device__ __forceinline__ int first_uncrossed(const StepArgs<T>& a, std::int64_t b) {
  int k = 0;
  while (k < a.count && a.crossed[b * a.count + k] >= 0) ++k;
  return k;
}

// ---- one problem per thread -------------------------------------------------------------------

constexpr int kThreadBlock = 128;

// Kind: the optimizer (kOptimizerCount: read at run time), so that gradient descent keeps no
// optimizer state in registers.
template <class T, int D, int Depth, int Kind>
__global__ void __launch_bounds__(kThreadBlock) dmf_step_thread(const StepArgs<T> a) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= a.batch || a.status[b] != kRunning) return;
  constexpr int S = D * D, F = Depth * S, NP = Depth > 1 ? (Depth - 1) * S : 1;
  using Dims = kernels::StaticDims<D>;
  const kernels::PackLayout<T, 1, Dims> lay{Dims{}, Depth};
  T W[F], Wn[F], P[NP], G[S], H[S], H2[S], tgt[S], msk[S];
#pragma unroll
  for (int j = 0; j < Depth; ++j)
#pragma unroll
    for (int e = 0; e < S; ++e) W[j * S + e] = a.factors[j][b * S + e];
  kernels::PackProblem<T> pp{a.pb.sensing, tgt, msk, nullptr, nullptr, a.pb.K};
  if (!a.pb.sensing) {
#pragma unroll
    for (int e = 0; e < S; ++e) {
      tgt[e] = a.pb.target[b * a.pb.target_stride + e];
      msk[e] = a.pb.mask[b * a.pb.mask_stride + e] ? T(1) : T(0);
    }
  } else {
    pp.A = a.pb.A + b * a.pb.A_stride;  // (K, m, n) of this problem: lane stride 1
    pp.y = a.pb.y + b * a.pb.y_stride;
  }
  kernels::PackState<T, 1> s;
  s.st[0] = kRunning;
  s.fz[0] = a.frozen_at[b];
  int next = first_uncrossed(a, b);
  s.next_thr[0] = threshold_at(a, next);
  const T lr = a.lr[b * a.lr_stride];
  kernels::PackOptimizer<T, 1, Kind> o;
  o.runtime_kind = a.opt.kind;
  o.beta = a.opt.beta;
  o.beta1 = a.opt.beta1;
  o.beta2 = a.opt.beta2;
  o.eps = a.opt.eps;
  constexpr int FM = Kind == kGd ? 1 : F;  // adam's moments and their next values
  T M[FM], Sm[FM], Mn[FM], Sn[FM];
  if (o.kind() != kGd) {
    o.v[0] = o.kind() == kGroupRmsprop ? a.opt.v[b] : T(0);
    o.t[0] = a.opt.t[b];
  }
  if (o.kind() == kAdam) {
#pragma unroll
    for (int j = 0; j < Depth; ++j)
#pragma unroll
      for (int e = 0; e < S; ++e) {
        M[j * S + e] = a.M[j][b * S + e];
        Sm[j * S + e] = a.S[j][b * S + e];
      }
    o.M = M;
    o.S = Sm;
    o.Mn = Mn;
    o.Sn = Sn;
  }
  auto on_cross = [&](int, T loss, std::int64_t step, const T* Wc) {
    for (; next < a.count && loss < a.thresholds[next]; ++next) {
      a.crossed[b * a.count + next] = step;
      if (a.snapshots[0] != nullptr)
        for (int j = 0; j < Depth; ++j)
          for (int e = 0; e < S; ++e) a.snapshots[j][(b * a.count + next) * S + e] = Wc[j * S + e];
    }
    s.next_thr[0] = threshold_at(a, next);
  };
  const T* Wf = kernels::pack_steps<false>(lay, pp, W, Wn, P, G, H, H2, &lr, a.steps, a.tol,
                                           a.step0, s, o, on_cross);
#pragma unroll
  for (int j = 0; j < Depth; ++j)
#pragma unroll
    for (int e = 0; e < S; ++e) a.factors[j][b * S + e] = Wf[j * S + e];
  if (o.kind() == kAdam)
#pragma unroll
    for (int j = 0; j < Depth; ++j)
#pragma unroll
      for (int e = 0; e < S; ++e) {
        a.M[j][b * S + e] = M[j * S + e];
        a.S[j][b * S + e] = Sm[j * S + e];
      }
  if (o.kind() == kGroupRmsprop) a.opt.v[b] = o.v[0];
  if (o.kind() != kGd) a.opt.t[b] = o.t[0];
  a.status[b] = s.st[0];
  a.frozen_at[b] = s.fz[0];
}

template <class T, int D, int Depth>
void launch_thread(const StepArgs<T>& a, cudaStream_t stream) {
  if (a.opt.kind == kGd)
    launch(dmf_step_thread<T, D, Depth, kGd>, grid_for(a.batch, kThreadBlock), kThreadBlock, 0,
           stream, a);
  else
    launch(dmf_step_thread<T, D, Depth, kOptimizerCount>, grid_for(a.batch, kThreadBlock),
           kThreadBlock, 0, stream, a);
  IR_CUDA_LAUNCHED("dmf_step_thread");
}

// True when the shape has a one-problem-per-thread kernel, which then has been launched.
template <class T>
bool try_thread(const StepArgs<T>& a, cudaStream_t stream) {
  for (int j = 1; j <= a.depth; ++j)
    if (a.dims[j] != a.dims[0]) return false;
  // Sizes 1 and 2 keep every matrix of a step in registers up to depth 6 (2x2 depth 6 in
  // float64: 168 registers, no spill), sizes 3 and 4 up to depth 4.
  if (a.dims[0] > 4 || a.depth > (a.dims[0] <= 2 ? 6 : 4)) return false;
  auto with_depth = [&](auto d) {
    constexpr int D = decltype(d)::value;
    switch (a.depth) {
      case 1:
        return launch_thread<T, D, 1>(a, stream);
      case 2:
        return launch_thread<T, D, 2>(a, stream);
      case 3:
        return launch_thread<T, D, 3>(a, stream);
      case 4:
        return launch_thread<T, D, 4>(a, stream);
      default:
        if constexpr (D <= 2) {
          if (a.depth == 5) return launch_thread<T, D, 5>(a, stream);
          return launch_thread<T, D, 6>(a, stream);
        }
    }
  };
  switch (a.dims[0]) {
    case 1:
      with_depth(std::integral_constant<int, 1>{});
      break;
    case 2:
      with_depth(std::integral_constant<int, 2>{});
      break;
    case 3:
      with_depth(std::integral_constant<int, 3>{});
      break;
    default:
      with_depth(std::integral_constant<int, 4>{});
      break;
  }
  return true;
}

// ---- one problem per block --------------------------------------------------------------------

// Element offsets of one problem's buffers in its workspace (shared or global).
struct BlockLayout {
  std::int64_t factor[kMaxCudaDepth + 1];  // factor[j - 1]: W_j; factor[depth]: total
  std::int64_t prefix[kMaxCudaDepth + 2];  // prefix[j]: P_j (j >= 2)
  std::int64_t Wn, G, H, H2, tgt, msk, R, size;
  // Row stride of the n-column work matrices (P_j, G, H, H2): n, made odd, so that a warp
  // reading one column of them (P_{j-1}^T, H^T in the weight gradients) hits 32 banks, not 2
  int ld;
  int threads;
};

BlockLayout block_layout(const int* d, int depth, int K) {
  BlockLayout l{};
  const std::int64_t n = d[0], mn = std::int64_t(d[depth]) * n;
  std::int64_t at = 0, rows = d[1], outputs = mn;
  for (int j = 1; j <= depth; ++j) {
    l.factor[j - 1] = at;
    at += std::int64_t(d[j]) * d[j - 1];
    rows = std::max<std::int64_t>(rows, d[j]);
    outputs = std::max<std::int64_t>(outputs, std::int64_t(d[j]) * std::max(d[j - 1], d[0]));
  }
  l.factor[depth] = at;
  const std::int64_t F = at;
  l.Wn = at;
  at += F;
  l.ld = int(n | 1);
  for (int j = 2; j <= depth; ++j) {
    l.prefix[j] = at;
    at += std::int64_t(d[j]) * l.ld;
  }
  l.G = at;
  l.H = l.G + std::int64_t(d[depth]) * l.ld;
  l.H2 = l.H + rows * l.ld;
  l.tgt = l.H2 + rows * l.ld;
  l.msk = l.tgt + mn;
  l.R = l.msk + mn;
  l.size = l.R + K;
  outputs = std::max<std::int64_t>(outputs, K);
  l.threads = int(std::min<std::int64_t>(256, (outputs + 31) / 32 * 32));
  return l;
}

// store(i, j, sum_k a(i, k) b(k, j)) for every output of an M x N product, k ascending, the
// outputs spread over the block. Untiled, each thread reads its operands where they are (the
// workspace in shared memory). Tiled (the workspace in global memory), the block stages
// kTile x kTile tiles of both operands in shared memory and each thread (blockDim = kTile^2)
// accumulates one output of the current tile; out-of-range entries are staged as zeros, whose
// products 0 * 0 leave every sum exactly as the untiled order gives it.
constexpr int kTile = 16;

template <class T, bool Tiled, class FA, class FB, class Store>
__device__ void block_product(int M, int K, int N, FA a, FB b, Store store,
                              bool rows_fastest = false) {
  if constexpr (!Tiled) {  // no static tiles in this kernel: its blocks keep the shared memory
    for (int o = threadIdx.x; o < M * N; o += blockDim.x) {
      // consecutive threads take consecutive columns j, or rows i when rows_fastest: the
      // operand read along the other index is then the same word for them (a broadcast)
      const int i = rows_fastest ? o % M : o / N, j = rows_fastest ? o / M : o % N;
      T acc = T(0);
      for (int k = 0; k < K; ++k) acc += a(i, k) * b(k, j);
      store(i, j, acc);
    }
    return;
  }
  __shared__ T ta[kTile][kTile + 1], tb[kTile][kTile + 1];  // +1: no bank conflicts
  const int ti = threadIdx.x / kTile, tj = threadIdx.x % kTile;
  for (int i0 = 0; i0 < M; i0 += kTile)
    for (int j0 = 0; j0 < N; j0 += kTile) {
      T acc = T(0);
      for (int k0 = 0; k0 < K; k0 += kTile) {
        ta[ti][tj] = i0 + ti < M && k0 + tj < K ? a(i0 + ti, k0 + tj) : T(0);
        tb[ti][tj] = k0 + ti < K && j0 + tj < N ? b(k0 + ti, j0 + tj) : T(0);
        __syncthreads();
        for (int kk = 0; kk < kTile; ++kk) acc += ta[ti][kk] * tb[kk][tj];
        __syncthreads();
      }
      if (i0 + ti < M && j0 + tj < N) store(i0 + ti, j0 + tj, acc);
    }
}

// Forward pass of problem b into the prefix buffers; returns E. Ends synchronized.
template <bool Tiled, class T>
__device__ const T* block_forward(const StepArgs<T>& a, const BlockLayout& l, const T* W, T* ws) {
  const T* prev = W;  // W_1, row stride n; then P_j, row stride l.ld
  for (int j = 2; j <= a.depth; ++j) {
    T* cur = ws + l.prefix[j];
    const T* Wj = W + l.factor[j - 1];
    const int K = a.dims[j - 1], ldp = j == 2 ? a.dims[0] : l.ld, ld = l.ld;
    block_product<T, Tiled>(
        a.dims[j], K, a.dims[0], [&](int i, int k) { return Wj[i * K + k]; },
        [&](int k, int c) { return prev[k * ldp + c]; },
        [&](int i, int c, T acc) { cur[i * ld + c] = acc; });
    __syncthreads();
    prev = cur;
  }
  return prev;
}

// Row stride of E, the forward pass's end-to-end matrix: W_1's (n) at depth 1, else P_N's.
template <class T>
__device__ __forceinline__ int e_stride(const StepArgs<T>& a, const BlockLayout& l) {
  return a.depth == 1 ? a.dims[0] : l.ld;
}

// Residual G and loss of E for problem b (tgt/msk already in the workspace for completion).
// Every thread gets the loss; ends synchronized.
template <class T>
__device__ T block_residual(const StepArgs<T>& a, const BlockLayout& l, std::int64_t b, const T* E,
                            T* ws, T* red) {
  const int n = a.dims[0], mn = a.dims[a.depth] * n, ldE = e_stride(a, l);
  T* G = ws + l.G;  // row stride l.ld
  T part = T(0);
  if (!a.pb.sensing) {
    const T* tgt = ws + l.tgt;
    const T* msk = ws + l.msk;
    for (int o = threadIdx.x; o < mn; o += blockDim.x) {
      const int i = o / n, c = o - i * n;
      const T r = msk[o] != T(0) ? E[i * ldE + c] - tgt[o] : T(0);
      G[i * l.ld + c] = r;
      part += r * r;
    }
  } else {
    const T* A = a.pb.A + b * a.pb.A_stride;
    const T* y = a.pb.y + b * a.pb.y_stride;
    T* R = ws + l.R;
    // a warp per measurement k, its lanes over the entries: A's rows are read coalesced (a
    // thread per k would read them mn apart); every warp runs the same rounds (the shuffles)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int base = 0; base < a.pb.K; base += warps) {
      const int k = base + warp;
      T r = T(0);
      if (k < a.pb.K)
        for (int e = lane; e < mn; e += 32)
          r += A[std::int64_t(k) * mn + e] * E[e / n * ldE + e % n];
      for (int off = 16; off > 0; off >>= 1) r += __shfl_xor_sync(0xffffffffu, r, off);
      if (k < a.pb.K && lane == 0) {
        r -= y[k];
        R[k] = r;
        part += r * r;
      }
    }
    __syncthreads();
    for (int o = threadIdx.x; o < mn; o += blockDim.x) {
      T g = T(0);
      for (int k = 0; k < a.pb.K; ++k) g += R[k] * A[std::int64_t(k) * mn + o];
      G[o / n * l.ld + o % n] = g;
    }
  }
  return T(0.5) * block_sum(part, red);
}

// Copies problem b's factors (and completion data) into the workspace. Ends synchronized.
template <class T>
__device__ void block_load(const StepArgs<T>& a, const BlockLayout& l, std::int64_t b, T* ws) {
  for (int j = 1; j <= a.depth; ++j) {
    const std::int64_t size = l.factor[j] - l.factor[j - 1];
    for (std::int64_t e = threadIdx.x; e < size; e += blockDim.x)
      ws[l.factor[j - 1] + e] = a.factors[j - 1][b * size + e];
  }
  if (!a.pb.sensing) {
    const int mn = a.dims[a.depth] * a.dims[0];
    for (int e = threadIdx.x; e < mn; e += blockDim.x) {
      ws[l.tgt + e] = a.pb.target[b * a.pb.target_stride + e];
      ws[l.msk + e] = a.pb.mask[b * a.pb.mask_stride + e] ? T(1) : T(0);
    }
  }
  __syncthreads();
}

template <class T>
__device__ T* block_workspace(const BlockLayout& l, T* global_ws) {
  return global_ws != nullptr ? global_ws + blockIdx.x * l.size
                              : reinterpret_cast<T*>(dynamic_smem());
}

// Calls f(j, e, i) for every entry of problem b's factors this thread owns: factor j (0-based),
// index e in the workspace, index i in the factor's global array.
template <class T, class F>
__device__ __forceinline__ void block_entries(const StepArgs<T>& a, const BlockLayout& l,
                                              std::int64_t b, F f) {
  for (int j = 0; j < a.depth; ++j) {
    const std::int64_t size = l.factor[j + 1] - l.factor[j];
    for (std::int64_t e = threadIdx.x; e < size; e += blockDim.x)
      f(j, l.factor[j] + e, b * size + e);
  }
}

// The unfused optimizers' check: Wn holds the gradient. group_rmsprop writes the next iterate
// into Wn now (each thread over its own entries); adam only probes it, its moments being
// written by block_commit once the whole update is known to be finite. Returns this
// thread's probes, and group_rmsprop's next running mean in v_new.
template <class T>
__device__ T block_optimize(const StepArgs<T>& a, const BlockLayout& l, std::int64_t b, T lr,
                            const T* W, T* Wn, double* red64, T& v_new) {
  const OptimizerState<T>& o = a.opt;
  T bad = T(0);
  __syncthreads();  // every gradient entry is written
  if (o.kind == kGroupRmsprop) {
    double sq = 0;
    block_entries(a, l, b,
                  [&](int, std::int64_t e, std::int64_t) { sq += double(Wn[e]) * double(Wn[e]); });
    const T step =
        kernels::rmsprop_rate(lr, o.beta, o.eps, o.v[b], o.t[b], block_sum(sq, red64), v_new);
    bad += kernels::probe(step) + kernels::probe(v_new);
    block_entries(a, l, b, [&](int, std::int64_t e, std::int64_t) {
      const T w = W[e] - step * Wn[e];
      Wn[e] = w;
      bad += kernels::probe(w);
    });
  } else {
    const kernels::AdamRate<T> r = kernels::adam_rate(lr, o.beta1, o.beta2, o.t[b]);
    block_entries(a, l, b, [&](int j, std::int64_t e, std::int64_t i) {
      T m = a.M[j][i], s = a.S[j][i];
      const T w = kernels::adam_update(W[e], Wn[e], m, s, o.beta1, o.beta2, o.eps, r);
      bad += kernels::probe(w) + kernels::probe(m) + kernels::probe(s);
    });
  }
  return bad;
}

// Commits an unfused update that block_optimize found finite: adam's next iterate (the values
// the check saw, recomputed) and moments, and the per-problem state.
template <class T>
__device__ void block_commit(const StepArgs<T>& a, const BlockLayout& l, std::int64_t b, T lr,
                             const T* W, T* Wn, T v_new) {
  const OptimizerState<T>& o = a.opt;
  if (o.kind == kAdam) {
    const kernels::AdamRate<T> r = kernels::adam_rate(lr, o.beta1, o.beta2, o.t[b]);
    block_entries(a, l, b, [&](int j, std::int64_t e, std::int64_t i) {
      Wn[e] = kernels::adam_update(W[e], Wn[e], a.M[j][i], a.S[j][i], o.beta1, o.beta2, o.eps, r);
    });
  }
  __syncthreads();  // every thread has read v and t
  if (threadIdx.x == 0) {
    if (o.kind == kGroupRmsprop) o.v[b] = v_new;
    o.t[b] += 1;
  }
}

template <class T, bool Tiled>
__global__ void dmf_step_block(const StepArgs<T> a, const BlockLayout l, T* global_ws) {
  __shared__ T red[32];
  __shared__ double red64[32];
  const bool fused = a.opt.kind == kGd;  // else the backward pass leaves the gradient in Wn
  T* ws = block_workspace(l, global_ws);
  const int n = a.dims[0];
  for (std::int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {
    if (a.status[b] != kRunning) continue;  // the same in every thread of the block
    block_load(a, l, b, ws);
    T* W = ws;
    T* Wn = ws + l.Wn;
    std::int8_t st = kRunning;
    std::int64_t fz = a.frozen_at[b];
    int next = first_uncrossed(a, b);
    T next_thr = threshold_at(a, next);
    const T lr = a.lr[b * a.lr_stride];
    // Every thread holds the same loss, status and crossing state, so that every branch below
    // is taken by the whole block.
    for (std::int64_t it = 0; it <= a.steps; ++it) {
      const T* E = block_forward<Tiled>(a, l, W, ws);
      const T loss = block_residual(a, l, b, E, ws, red);
      if (loss < next_thr) {
        for (; next < a.count && loss < a.thresholds[next]; ++next) {
          if (threadIdx.x == 0) a.crossed[b * a.count + next] = a.step0 + it;
          if (a.snapshots[0] != nullptr)
            for (int j = 1; j <= a.depth; ++j) {
              const std::int64_t size = l.factor[j] - l.factor[j - 1];
              T* dst = a.snapshots[j - 1] + (b * a.count + next) * size;
              for (std::int64_t e = threadIdx.x; e < size; e += blockDim.x)
                dst[e] = W[l.factor[j - 1] + e];
            }
        }
        next_thr = threshold_at(a, next);
      }
      st = kernels::status_at(loss, a.tol);
      if (st != kRunning) fz = a.step0 + it;
      if (st != kRunning || it == a.steps) break;
      // Backward: dW_j = H_j P_{j-1}^T, H_{j-1} = W_j^T H_j, from H_N = G.
      T bad = T(0);            // NaN once a new entry is not finite
      const T* Hj = ws + l.G;  // G, H and H2 have row stride l.ld
      const int ld = l.ld;
      for (int j = a.depth; j >= 1; --j) {
        const int rows = a.dims[j], cols = a.dims[j - 1];
        const T* Wj = W + l.factor[j - 1];
        T* Wnj = Wn + l.factor[j - 1];
        if (j == 1) {  // H_1 is rows x n (cols == n), row stride l.ld
          for (int e = threadIdx.x; e < rows * cols; e += blockDim.x) {
            const T g = Hj[e / cols * ld + e % cols];
            if (!fused) {
              Wnj[e] = g;
              continue;
            }
            const T w = Wj[e] - lr * g;
            Wnj[e] = w;
            bad += kernels::probe(w);
          }
          break;
        }
        // dW_j reads P_{j-1} along its rows: P_j's odd stride keeps that conflict-free with
        // threads over its columns; W_1 (j == 2) has stride n, so threads go over H's rows
        const T* Pprev = j == 2 ? W : ws + l.prefix[j - 1];
        const int ldp = j == 2 ? n : ld;
        block_product<T, Tiled>(
            rows, n, cols, [&](int i, int k) { return Hj[i * ld + k]; },
            [&](int k, int c) { return Pprev[c * ldp + k]; },
            [&](int i, int c, T acc) {
              if (!fused) {
                Wnj[i * cols + c] = acc;
                return;
              }
              const T w = Wj[i * cols + c] - lr * acc;
              Wnj[i * cols + c] = w;
              bad += kernels::probe(w);
            },
            j == 2);
        T* Hn = Hj == ws + l.H ? ws + l.H2 : ws + l.H;
        block_product<T, Tiled>(
            cols, rows, n, [&](int i, int k) { return Wj[k * cols + i]; },
            [&](int k, int c) { return Hj[k * ld + c]; },
            [&](int i, int c, T acc) { Hn[i * ld + c] = acc; });
        __syncthreads();
        Hj = Hn;
      }
      T v_new = T(0);
      if (!fused) bad += block_optimize(a, l, b, lr, W, Wn, red64, v_new);
      if (!kernels::commits(block_sum(bad, red))) {  // keep the last finite iterate and state
        st = kDiverged;
        fz = a.step0 + it;
        break;
      }
      if (!fused) block_commit(a, l, b, lr, W, Wn, v_new);
      T* t = W;
      W = Wn;
      Wn = t;
    }
    for (int j = 1; j <= a.depth; ++j) {
      const std::int64_t size = l.factor[j] - l.factor[j - 1];
      for (std::int64_t e = threadIdx.x; e < size; e += blockDim.x)
        a.factors[j - 1][b * size + e] = W[l.factor[j - 1] + e];
    }
    if (threadIdx.x == 0) {
      a.status[b] = st;
      a.frozen_at[b] = fz;
    }
    __syncthreads();  // before the next problem reuses the workspace
  }
}

template <class T, bool Tiled>
__global__ void dmf_loss_block(const StepArgs<T> a, const BlockLayout l, T* global_ws) {
  __shared__ T red[32];
  T* ws = block_workspace(l, global_ws);
  const int mn = a.dims[a.depth] * a.dims[0];
  for (std::int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {
    block_load(a, l, b, ws);
    const T* E = block_forward<Tiled>(a, l, ws, ws);
    const T loss = block_residual(a, l, b, E, ws, red);
    const int n = a.dims[0], ldE = e_stride(a, l);
    for (int e = threadIdx.x; e < mn; e += blockDim.x)
      a.product[b * mn + e] = E[e / n * ldE + e % n];
    if (threadIdx.x == 0) a.loss[b] = loss;
    __syncthreads();
  }
}

// Launches a kernel(a, l, ws) with one problem per block: in_shared with the workspace in
// shared memory when the device allows that much per block, else tiled with the workspace in
// global scratch for a bounded grid.
template <class T, class Kernel>
void launch_block(Kernel in_shared, Kernel tiled, const StepArgs<T>& a, cudaStream_t stream) {
  BlockLayout l = block_layout(a.dims, a.depth, a.pb.sensing ? a.pb.K : 0);
  const DeviceLimits limits = device_limits();
  const std::int64_t bytes = l.size * std::int64_t(sizeof(T));
  if (reserve_shared(in_shared, bytes, limits)) {
    const unsigned grid = unsigned(std::min<std::int64_t>(a.batch, 1 << 30));
    launch(in_shared, grid, l.threads, std::size_t(bytes), stream, a, l, static_cast<T*>(nullptr));
    IR_CUDA_LAUNCHED("dmf_step (block, shared memory)");
    return;
  }
  const std::int64_t grid = std::min<std::int64_t>(a.batch, std::int64_t(4) * limits.sms);
  Scratch<T> ws(grid * l.size, stream);
  l.threads = kTile * kTile;
  launch(tiled, unsigned(grid), l.threads, 0, stream, a, l, ws.get());
  IR_CUDA_LAUNCHED("dmf_step (block, global memory)");
}

}  // namespace

template <class T>
void dmf_step(T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem, const T* lr,
              std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
              const OptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
              const DmfCrossings<T>& crossings, void* stream) {
  if (shape.batch == 0) return;
  StepArgs<T> a = make_args(factors, shape, problem);
  a.lr = lr;
  a.lr_stride = lr_stride;
  a.steps = steps;
  a.tol = tol;
  a.step0 = step0;
  a.opt = opt;
  for (int j = 0; j < shape.depth && opt.kind == kAdam; ++j) {
    a.M[j] = opt.m[j];
    a.S[j] = opt.s[j];
  }
  a.status = status;
  a.frozen_at = frozen_at;
  a.count = crossings.count;
  a.thresholds = crossings.thresholds;
  a.crossed = crossings.step;
  for (int j = 0; j < shape.depth && crossings.snapshots != nullptr; ++j)
    a.snapshots[j] = crossings.snapshots[j];
  const cudaStream_t st = as_stream(stream);
  if (!try_thread(a, st)) launch_block<T>(dmf_step_block<T, false>, dmf_step_block<T, true>, a, st);
}

template <class T>
void dmf_loss(const T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem, T* loss,
              T* product, void* stream) {
  if (shape.batch == 0) return;
  StepArgs<T> a = make_args(factors, shape, problem);
  a.loss = loss;
  a.product = product;
  launch_block<T>(dmf_loss_block<T, false>, dmf_loss_block<T, true>, a, as_stream(stream));
}

template void dmf_step<float>(float* const*, const DmfShape&, const DmfProblem<float>&,
                              const float*, std::int64_t, std::int64_t, float, std::int64_t,
                              const OptimizerState<float>&, std::int8_t*, std::int64_t*,
                              const DmfCrossings<float>&, void*);
template void dmf_step<double>(double* const*, const DmfShape&, const DmfProblem<double>&,
                               const double*, std::int64_t, std::int64_t, double, std::int64_t,
                               const OptimizerState<double>&, std::int8_t*, std::int64_t*,
                               const DmfCrossings<double>&, void*);
template void dmf_loss<float>(const float* const*, const DmfShape&, const DmfProblem<float>&,
                              float*, float*, void*);
template void dmf_loss<double>(const double* const*, const DmfShape&, const DmfProblem<double>&,
                               double*, double*, void*);

}  // namespace cuda
}  // namespace implicitreg
