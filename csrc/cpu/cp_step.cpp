// CPU driver of the CP tensor factorization step: one problem per OpenMP iteration, the inner
// loops run over the R components (contiguous in every factor row) so they vectorize.
//
// Only observed entries enter the loss and the gradient. They are walked in C order, in runs
// of entries that share every index but the last (i_1..i_{N-1}); per run, with the prefix
// product P = U_1[i_1] * ... * U_{N-1}[i_{N-1}] (elementwise over r; N - 2 products per
// component, kept in registers):
//   value of entry k of the run    = sum_r P[r] U_N[k, r],  g_k = 2 (value_k - target_k) / n,
//   U_N's gradient row k           += g_k P,
//   U_n's gradient row i_n (n < N) += (sum_k g_k U_N[k]) * prod_{m < N, m != n} U_m[i_m].
// That is about three multiply-adds per entry and component where the entry-by-entry form
// (every factor's row from prefix and suffix products) takes eight, and the rows of the first
// N - 1 factors are written once per run instead of once per entry.
#include "implicitreg/cp_step.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "cpu/threads.h"
#include "kernels/cp_step.h"
#include "kernels/freeze.h"
#include "kernels/hd.h"
#include "kernels/optimizer.h"

namespace implicitreg {
namespace {

template <class T>
struct Workspace {
  std::vector<std::int64_t> rows;  // observed entries' factor row offsets i_n * R, N per entry
  std::vector<int> runs;           // first entry of each run, then the number of entries
  std::vector<T> target;           // their targets
  std::vector<T> gres;             // their residuals times 2 / n, this step's
  std::vector<T> grad, next;       // all factors' gradient / next iterate, factor after factor
  std::vector<T> m_next, s_next;   // adam: the next moments, likewise
};

// Observed entries of problem b in C order: factor row offsets, targets and runs.
template <class T>
void gather_observed(const CpShape& shape, const CpProblem<T>& pb, std::int64_t numel,
                     std::int64_t b, Workspace<T>& ws) {
  const int N = shape.order;
  const std::int64_t* observed = pb.observed + b * pb.observed_stride;
  const T* target = pb.target + b * pb.target_stride;
  ws.rows.clear();
  ws.runs.clear();
  ws.target.clear();
  for (std::int64_t k = 0; k < pb.observed_slots && observed[k] >= 0 && observed[k] < numel; ++k) {
    const std::int64_t e = observed[k];
    const std::size_t at = ws.rows.size();
    ws.rows.resize(at + N);
    std::int64_t rest = e;
    for (int n = N - 1; n >= 0; --n) {
      ws.rows[at + n] = (rest % shape.dims[n]) * shape.rank;
      rest /= shape.dims[n];
    }
    // a new run when the flat index without its last digit changes
    if (at == 0 || !std::equal(&ws.rows[at], &ws.rows[at + N - 1], &ws.rows[at - N])) {
      ws.runs.push_back(int(ws.target.size()));
    }
    ws.target.push_back(target[e]);
  }
  ws.runs.push_back(int(ws.target.size()));
  ws.gres.resize(ws.target.size());
}

// W components of one SIMD register as one value, so that running sums stay in registers.
template <class T>
constexpr int kLanes = 64 / int(sizeof(T));
template <class T, int W>
using Vec = kernels::SimdVec<T, W>;
template <class T, int W>
IR_INLINE Vec<T, W> load(const T* p) {
  return kernels::simd_load<Vec<T, W>>(p);
}

// Sum of the lanes, halving the vector each time (shuffles: a store of the whole vector
// reloaded lane by lane, which a reduction loop compiles to, stalls store forwarding).
template <int From, class T, int W, std::size_t... I>
IR_INLINE Vec<T, W / 2> lanes(Vec<T, W> v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, (From + int(I))...);
}
template <class T, int W>
IR_INLINE T lane_sum(Vec<T, W> v) {
  if constexpr (W == 1) {
    return v[0];
  } else if constexpr (W == 2) {
    return v[0] + v[1];
  } else {
    constexpr auto half = std::make_index_sequence<W / 2>{};
    return lane_sum<T, W / 2>(lanes<0, T, W>(v, half) + lanes<W / 2, T, W>(v, half));
  }
}

// Components [r, r + W) of the prefix product u_0 u_1 ... u_{N-2} (in that order).
template <int N, int W, class T>
IR_INLINE Vec<T, W> prefix(const T* const* u, int r) {
  return kernels::row_product<Vec<T, W>>(N - 1, [&](int n) { return load<T, W>(u[n] + r); });
}

// Value of the entry whose factor rows are u: sum_r prefix[r] u_{N-1}[r], in four independent
// sums of W lanes (one would chain every multiply-add of the entry on the last), then across
// them (entry_sums, with the components past the last whole vector in tail) and their lanes
// (lane_sum). The prefix is recomputed rather than read from a buffer the run wrote just
// before (a store-to-load wait at every run's start).
template <int N, class T>
IR_INLINE Vec<T, kLanes<T>> entry_sums(const T* const* u, int R, T& tail) {
  constexpr int W = kLanes<T>;
  using V = Vec<T, W>;
  V part[4] = {};
  int r = 0;
  for (; r + 4 * W <= R; r += 4 * W) {
    for (int c = 0; c < 4; ++c) {
      part[c] += prefix<N, W>(u, r + c * W) * load<T, W>(u[N - 1] + r + c * W);
    }
  }
  for (; r + W <= R; r += W) part[0] += prefix<N, W>(u, r) * load<T, W>(u[N - 1] + r);
  tail = 0;
  for (; r < R; ++r) tail += prefix<N, 1>(u, r)[0] * u[N - 1][r];
  return (part[0] + part[1]) + (part[2] + part[3]);
}
template <int N, class T>
IR_INLINE T entry_value(const T* const* u, int R) {
  T tail;
  const auto sums = entry_sums<N>(u, R, tail);
  return lane_sum<T, kLanes<T>>(sums) + tail;
}

// lane_sum of W vectors at once, v[e] to lane e of the result: each level adds the two halves
// of every vector's blocks, two vectors into one, so that the W sums take W - 1 vector
// additions (each of two shuffles) where one by one they take W log2(W), and every sum is
// lane_sum's, bit for bit (float64 order 3 R = 64: 1.05x the steps per second).
// pick: lane o of the block pairs of a and b (blocks of w lanes, W / w per vector) is the
// first (or, Hi, the second) half of block o / (w / 2).
template <int W, int w, bool Hi>
constexpr int pick_lane(int o) {
  const int h = w / 2, j = o / h, g = W / w;
  return (j < g ? 0 : W) + (j % g) * w + o % h + (Hi ? h : 0);
}
template <int w, bool Hi, class T, int W, std::size_t... O>
IR_INLINE Vec<T, W> pick(Vec<T, W> a, Vec<T, W> b, std::index_sequence<O...>) {
  return __builtin_shufflevector(a, b, pick_lane<W, w, Hi>(int(O))...);
}
template <class T, int W, int w = W>
IR_INLINE Vec<T, W> lane_sums(Vec<T, W>* v) {
  if constexpr (w == 1) {
    return v[0];
  } else {
    constexpr auto all = std::make_index_sequence<W>{};
    for (int j = 0; j < w / 2; ++j)
      v[j] = pick<w, false, T, W>(v[2 * j], v[2 * j + 1], all) +
             pick<w, true, T, W>(v[2 * j], v[2 * j + 1], all);
    return lane_sums<T, W, w / 2>(v);
  }
}

// Gradient of one run (entries [e0, e1)) at components [r0, r0 + NV W): NV
// registers of W lanes, unrolled, so that the run's sums stay in registers while the loop
// over the run's few entries runs once per block (once per register, its exit branch would
// mispredict about once per register).
template <int N, int NV, int W, class T>
IR_INLINE void run_gradient(const T* const* U, T* const* G, const Workspace<T>& ws, int e0, int e1,
                            int r0) {
  using V = Vec<T, W>;
  const std::int64_t* d = ws.rows.data() + std::int64_t(e0) * N;
  const T* u[N];
  for (int n = 0; n < N; ++n) u[n] = U[n] + d[n];
  V p[NV], s[NV] = {};  // the run's prefix product; sum_k g_k U_N[k]
  for (int c = 0; c < NV; ++c) p[c] = prefix<N, W>(u, r0 + c * W);
  for (int e = e0; e < e1; ++e) {
    const T g = ws.gres[e];
    const std::int64_t k = ws.rows[std::int64_t(e) * N + N - 1] + r0;
    const T* uk = U[N - 1] + k;
    T* gk = G[N - 1] + k;
#pragma GCC unroll 8
    for (int c = 0; c < NV; ++c) {
      s[c] += g * load<T, W>(uk + c * W);
      kernels::simd_store(gk + c * W, load<T, W>(gk + c * W) + g * p[c]);
    }
  }
  // mode n < N - 1 gains s * prod_{m < N - 1, m != n} u_m
#pragma GCC unroll 8
  for (int c = 0; c < NV; ++c) {
    const int rc = r0 + c * W;
    V u[N];
    for (int n = 0; n < N - 1; ++n) u[n] = load<T, W>(U[n] + d[n] + rc);
    kernels::leave_one_out(u, N - 1, s[c], [&](int n, V x) {
      T* gn = G[n] + d[n] + rc;
      kernels::simd_store(gn, load<T, W>(gn) + x);
    });
  }
}

// All R components in blocks of 8, then 4, 2, 1 registers, then one component at a time.
template <int N, class T, int NV = 8>
IR_INLINE void run_gradient(const T* const* U, T* const* G, const Workspace<T>& ws, int e0, int e1,
                            int R, int r0) {
  constexpr int W = kLanes<T>;
  for (; r0 + NV * W <= R; r0 += NV * W) run_gradient<N, NV, W>(U, G, ws, e0, e1, r0);
  if constexpr (NV > 1) {
    run_gradient<N, T, NV / 2>(U, G, ws, e0, e1, R, r0);
  } else {
    for (; r0 < R; ++r0) run_gradient<N, 1, 1>(U, G, ws, e0, e1, r0);
  }
}

// Sum over the observed entries of the squared residual and, when G is not null, the
// gradient (G zeroed by the caller); the order N is known at compile time, so that the
// products stay in registers. The values come first, W entries at a time (their sums across
// lanes at once), then the gradient run by run.
template <int N, class T>
double entries(const T* const* U, T* const* G, Workspace<T>& ws, int R, T scale) {
  constexpr int W = kLanes<T>;
  using V = Vec<T, W>;
  double loss = 0;
  const int n_entries = int(ws.target.size());
  for (int e0 = 0; e0 < n_entries; e0 += W) {
    const int count = std::min(W, n_entries - e0);
    V sums[W];
    T tails[W];
    for (int i = 0; i < W; ++i) {
      if (i < count) {
        const std::int64_t* d = ws.rows.data() + std::int64_t(e0 + i) * N;
        const T* u[N];
        for (int n = 0; n < N; ++n) u[n] = U[n] + d[n];
        sums[i] = entry_sums<N>(u, R, tails[i]);
      } else {
        sums[i] = V{};
        tails[i] = 0;
      }
    }
    const V values = lane_sums<T, W>(sums);
    for (int i = 0; i < count; ++i) {
      const T res = (values[i] + tails[i]) - ws.target[e0 + i];
      loss += double(res) * double(res);
      ws.gres[e0 + i] = scale * res;
    }
  }
  if (G != nullptr) {
    const std::size_t n_runs = ws.runs.size() - 1;
    for (std::size_t run = 0; run < n_runs; ++run)
      run_gradient<N>(U, G, ws, ws.runs[run], ws.runs[run + 1], R, 0);
  }
  return loss;
}

// Loss of the current iterate of problem b, and (when grad is not null) its gradient.
template <class T>
T loss_and_gradient(T* const* factors, const CpShape& shape, std::int64_t b, Workspace<T>& ws,
                    T* grad) {
  const int N = shape.order, R = shape.rank;
  const T* U[6];
  T* G[6];
  std::int64_t off = 0;
  for (int n = 0; n < N; ++n) {
    U[n] = factors[n] + b * std::int64_t(shape.dims[n]) * R;
    G[n] = grad + off;
    off += std::int64_t(shape.dims[n]) * R;
  }
  if (grad != nullptr) std::fill(grad, grad + off, T(0));
  T* const* Gp = grad != nullptr ? G : nullptr;
  const std::int64_t n_obs = std::int64_t(ws.target.size());
  const T scale = kernels::cp_residual_scale<T>(n_obs);
  double loss = 0;
  switch (N) {  // orders 2..6 (checked by the callers)
    case 2:
      loss = entries<2>(U, Gp, ws, R, scale);
      break;
    case 3:
      loss = entries<3>(U, Gp, ws, R, scale);
      break;
    case 4:
      loss = entries<4>(U, Gp, ws, R, scale);
      break;
    case 5:
      loss = entries<5>(U, Gp, ws, R, scale);
      break;
    default:
      loss = entries<6>(U, Gp, ws, R, scale);
      break;
  }
  return kernels::cp_mean_loss<T>(loss, n_obs);
}

// The optimizer's update of problem b from the gradient in ws.grad: the next iterate (and
// optimizer state) is committed only if every entry of it is finite (returns false when not).
template <class T>
bool update(const OptimizerState<T>& opt, std::int64_t b, T rate, T* const* factors,
            const CpShape& shape, Workspace<T>& ws) {
  const int N = shape.order, R = shape.rank;
  T step = rate, v_new = 0, probes = 0;
  kernels::AdamRate<T> adam{};
  if (opt.kind == kGroupRmsprop) {
    double sq = 0;
    const T* g = ws.grad.data();
    IR_SIMD_SUM(sq)
    for (std::int64_t i = 0; i < std::int64_t(ws.grad.size()); ++i) sq += double(g[i]) * g[i];
    step = kernels::rmsprop_rate(rate, opt.beta, opt.eps, opt.v[b], opt.t[b], sq, v_new);
    // an overflowing running mean of ||g||^2 would make the step 0 and stall the problem
    probes = kernels::probe(step) + kernels::probe(v_new);
  } else if (opt.kind == kAdam) {
    adam = kernels::adam_rate(rate, opt.beta1, opt.beta2, opt.t[b]);
  }
  std::int64_t off = 0;
  for (int n = 0; n < N; ++n) {
    const std::int64_t sz = std::int64_t(shape.dims[n]) * R;
    const T* u = factors[n] + b * sz;
    const T* g = ws.grad.data() + off;
    T* nx = ws.next.data() + off;
    T bad = 0;
    if (opt.kind == kAdam) {
      const T* m = opt.m[n] + b * sz;
      const T* s = opt.s[n] + b * sz;
      T* mn = ws.m_next.data() + off;
      T* sn = ws.s_next.data() + off;
      IR_SIMD_SUM(bad)
      for (std::int64_t i = 0; i < sz; ++i) {
        T mi = m[i], si = s[i];
        nx[i] = kernels::adam_update(u[i], g[i], mi, si, opt.beta1, opt.beta2, opt.eps, adam);
        mn[i] = mi;
        sn[i] = si;
        bad += kernels::probe(nx[i]) + kernels::probe(mi) + kernels::probe(si);
      }
    } else {
      IR_SIMD_SUM(bad)
      for (std::int64_t i = 0; i < sz; ++i) {
        nx[i] = u[i] - step * g[i];
        bad += kernels::probe(nx[i]);
      }
    }
    probes += bad;
    off += sz;
  }
  if (!kernels::commits(probes)) return false;
  off = 0;
  for (int n = 0; n < N; ++n) {
    const std::int64_t sz = std::int64_t(shape.dims[n]) * R;
    std::copy(ws.next.data() + off, ws.next.data() + off + sz, factors[n] + b * sz);
    if (opt.kind == kAdam) {
      std::copy(ws.m_next.data() + off, ws.m_next.data() + off + sz, opt.m[n] + b * sz);
      std::copy(ws.s_next.data() + off, ws.s_next.data() + off + sz, opt.s[n] + b * sz);
    }
    off += sz;
  }
  if (opt.kind == kGroupRmsprop) opt.v[b] = v_new;
  if (opt.kind != kGd) opt.t[b] += 1;
  return true;
}

}  // namespace

namespace cpu {

template <class T>
void cp_step(T* const* factors, const CpShape& shape, const CpProblem<T>& problem, const T* lr,
             std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
             const OptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
             T* loss_out) {
  const int N = shape.order, R = shape.rank;
  std::int64_t numel = 1, size = 0;
  for (int n = 0; n < N; ++n) {
    numel *= shape.dims[n];
    size += std::int64_t(shape.dims[n]) * R;
  }
  // per step, at most every entry observed: 6 (N - 1) R flops each
  const double problem_flops = double(steps + 1) * double(numel) * 6.0 * (N - 1) * R + size;
#pragma omp parallel num_threads(cpu::team(shape.batch, problem_flops))
  {
    Workspace<T> ws;
    ws.grad.resize(size);
    ws.next.resize(size);
    if (opt.kind == kAdam) {
      ws.m_next.resize(size);
      ws.s_next.resize(size);
    }
    // dynamic: problems that freeze early finish early
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < shape.batch; ++b) {
      if (status[b] != kRunning) continue;  // frozen: nothing to do, loss_out left as it is
      gather_observed(shape, problem, numel, b, ws);
      const T rate = lr[b * lr_stride];
      for (std::int64_t it = 0;; ++it) {
        const bool last = it == steps;
        const T loss = loss_and_gradient(factors, shape, b, ws, last ? nullptr : ws.grad.data());
        loss_out[b] = loss;
        const std::int8_t st = kernels::status_at(loss, tol);
        if (st == kRunning && last) break;
        if (st != kRunning || !update(opt, b, rate, factors, shape, ws)) {
          status[b] = st != kRunning ? st : kDiverged;
          frozen_at[b] = step0 + it;
          break;
        }
      }
    }
  }
}

template <class T>
void cp_tensor(const T* const* factors, const CpShape& shape, T* out) {
  const int N = shape.order, R = shape.rank;
  std::int64_t numel = 1;
  for (int n = 0; n < N; ++n) numel *= shape.dims[n];
  const int threads = cpu::team(shape.batch, double(numel) * N * R);
#pragma omp parallel num_threads(threads)
  {
    std::vector<int> d(N);
    std::vector<const T*> u(N);
#pragma omp for schedule(dynamic, cpu::chunk(shape.batch, threads))
    for (std::int64_t b = 0; b < shape.batch; ++b) {
      T* o = out + b * numel;
      for (std::int64_t e = 0; e < numel; ++e) {
        std::int64_t rest = e;
        for (int n = N - 1; n >= 0; --n) {
          d[n] = int(rest % shape.dims[n]);
          rest /= shape.dims[n];
          u[n] = factors[n] + (b * shape.dims[n] + d[n]) * std::int64_t(R);
        }
        // the step's arithmetic, so that the value equals the one the step computes for an
        // observed entry
        T value = 0;
        switch (N) {
          case 1:
            IR_SIMD_SUM(value)
            for (int r = 0; r < R; ++r) value += u[0][r];
            break;
          case 2:
            value = entry_value<2>(u.data(), R);
            break;
          case 3:
            value = entry_value<3>(u.data(), R);
            break;
          case 4:
            value = entry_value<4>(u.data(), R);
            break;
          case 5:
            value = entry_value<5>(u.data(), R);
            break;
          default:  // orders up to 6 (checked by the callers)
            value = entry_value<6>(u.data(), R);
            break;
        }
        o[e] = value;
      }
    }
  }
}

template void cp_step<float>(float* const*, const CpShape&, const CpProblem<float>&, const float*,
                             std::int64_t, std::int64_t, float, std::int64_t,
                             const OptimizerState<float>&, std::int8_t*, std::int64_t*, float*);
template void cp_step<double>(double* const*, const CpShape&, const CpProblem<double>&,
                              const double*, std::int64_t, std::int64_t, double, std::int64_t,
                              const OptimizerState<double>&, std::int8_t*, std::int64_t*, double*);
template void cp_tensor<float>(const float* const*, const CpShape&, float*);
template void cp_tensor<double>(const double* const*, const CpShape&, double*);

}  // namespace cpu
}  // namespace implicitreg
