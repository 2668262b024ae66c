// CPU driver of the deep matrix factorization kernels: the batch is cut into packs of L
// problems (L = one 64-byte vector of T); each thread gathers a pack into a lane-innermost
// workspace, runs every step of the call on it in L1, and scatters it back. A short last pack
// is padded with copies of its first problem, marked so that they are never written back, so
// every problem runs the same instructions whatever the batch size.
#include "implicitreg/dmf_step.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/lanes.h"
#include "cpu/threads.h"
#include "kernels/dmf_step.h"

namespace implicitreg {
namespace {

using kernels::PackLayout;
using kernels::PackProblem;
using kernels::RuntimeDims;
using kernels::StaticDims;

constexpr std::int8_t kPadding = 3;  // lane status of a padding copy: computed, never stored

template <class T>
constexpr int lanes() {
  return 64 / int(sizeof(T));
}

// Workspace of one thread for one pack; sizes follow the layout (adam's moments and their
// next values, M to Sn, only for adam).
template <class T, int L, class Dims>
struct Workspace {
  std::vector<T> W, Wn, P, H, H2, G, target, mask, A, y, M, S, Mn, Sn;

  // Elements of each buffer above, in that order.
  static std::array<std::int64_t, 14> sizes(const PackLayout<T, L, Dims>& lay,
                                            const DmfProblem<T>& pb, bool adam) {
    const std::int64_t mn = std::int64_t(lay.d[lay.depth]) * lay.d[0];
    const std::int64_t h = std::int64_t(lay.max_rows()) * lay.d[0] * L;
    const std::int64_t obs = pb.sensing ? 0 : mn * L, meas = pb.sensing ? pb.K * mn * L : 0;
    return {lay.factors_size(),
            lay.factors_size(),
            std::max<std::int64_t>(lay.prefix_size(), 1),
            h,
            h,
            mn * L,
            obs,
            obs,
            meas,
            pb.sensing ? std::int64_t(pb.K) * L : 0,
            adam ? lay.factors_size() : 0,
            adam ? lay.factors_size() : 0,
            adam ? lay.factors_size() : 0,
            adam ? lay.factors_size() : 0};
  }
  static std::int64_t bytes(const PackLayout<T, L, Dims>& lay, const DmfProblem<T>& pb, bool adam) {
    std::int64_t n = 0;
    for (std::int64_t s : sizes(lay, pb, adam)) n += s;
    return n * std::int64_t(sizeof(T));
  }
  Workspace(const PackLayout<T, L, Dims>& lay, const DmfProblem<T>& pb, bool adam) {
    const auto s = sizes(lay, pb, adam);
    std::vector<T>* buffers[] = {&W,    &Wn, &P, &H, &H2, &G,  &target,
                                 &mask, &A,  &y, &M, &S,  &Mn, &Sn};
    for (int i = 0; i < 14; ++i) buffers[i]->resize(s[i]);
  }
  PackProblem<T> problem(const DmfProblem<T>& pb) const {
    return {pb.sensing, target.data(), mask.data(), A.data(), y.data(), pb.K};
  }
};

// Problem index of lane l of the pack starting at b0 (padding lanes repeat b0).
inline std::int64_t lane_problem(std::int64_t b0, int l, std::int64_t batch) {
  return b0 + l < batch ? b0 + l : b0;
}

template <class T, int L, class Dims>
void gather_factors(const PackLayout<T, L, Dims>& lay, const T* const* factors, std::int64_t b0,
                    std::int64_t batch, T* W) {
  for (int j = 1; j <= lay.depth; ++j) {
    const int size = lay.factor_size(j);
    T* dst = W + lay.factor_offset(j);
    for (int l = 0; l < L; ++l) {
      const T* src = factors[j - 1] + lane_problem(b0, l, batch) * size;
      for (int e = 0; e < size; ++e) dst[e * L + l] = src[e];
    }
  }
}

template <class T, int L, class Dims>
void scatter_factors(const PackLayout<T, L, Dims>& lay, const T* W, std::int64_t b0,
                     std::int64_t batch, T* const* factors) {
  for (int j = 1; j <= lay.depth; ++j) {
    const int size = lay.factor_size(j);
    const T* src = W + lay.factor_offset(j);
    for (int l = 0; l < L && b0 + l < batch; ++l) {
      T* dst = factors[j - 1] + (b0 + l) * size;
      for (int e = 0; e < size; ++e) dst[e] = src[e * L + l];
    }
  }
}

template <class T, int L>
void gather_problem(const DmfProblem<T>& pb, int mn, std::int64_t b0, std::int64_t batch, T* target,
                    T* mask, T* A, T* y) {
  for (int l = 0; l < L; ++l) {
    const std::int64_t b = lane_problem(b0, l, batch);
    if (!pb.sensing) {
      const T* t = pb.target + b * pb.target_stride;
      const std::uint8_t* mk = pb.mask + b * pb.mask_stride;
      for (int e = 0; e < mn; ++e) {
        target[e * L + l] = t[e];
        mask[e * L + l] = mk[e] ? T(1) : T(0);
      }
    } else {
      const T* a = pb.A + b * pb.A_stride;
      const T* yy = pb.y + b * pb.y_stride;
      for (int k = 0; k < pb.K; ++k) {
        y[k * L + l] = yy[k];
        for (int e = 0; e < mn; ++e)
          A[(std::int64_t(k) * mn + e) * L + l] = a[std::int64_t(k) * mn + e];
      }
    }
  }
}

// Flops of one step of one problem: the forward and backward products, the residual (for the
// thread count only, so roughly).
template <class T, int L, class Dims>
double step_flops(const PackLayout<T, L, Dims>& lay, const DmfProblem<T>& pb) {
  const double mn = double(lay.d[lay.depth]) * lay.d[0];
  double f = (pb.sensing ? 4.0 * pb.K : 4.0) * mn;
  for (int j = 1; j <= lay.depth; ++j) f += 6.0 * lay.d[j] * lay.d[j - 1] * lay.d[0];
  return f;
}

// Runs body(ws, problem, b0) for every pack of L problems starting at b0, each thread with
// its own workspace holding the pack's problem data; `steps` steps per problem size the team.
template <class T, int L, class Dims, class Body>
void for_each_pack(const PackLayout<T, L, Dims>& lay, std::int64_t batch, const DmfProblem<T>& pb,
                   bool adam, std::int64_t steps, Body&& body) {
  const std::int64_t npacks = (batch + L - 1) / L;
  const int mn = lay.d[lay.depth] * lay.d[0];
  const double pack_flops = L * double(steps + 1) * step_flops(lay, pb);
#pragma omp parallel num_threads(cpu::team(npacks, pack_flops))
  {
    Workspace<T, L, Dims> ws(lay, pb, adam);
    const PackProblem<T> ppb = ws.problem(pb);
    // dynamic: packs whose problems all froze early finish early
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t pack = 0; pack < npacks; ++pack) {
      const std::int64_t b0 = pack * L;
      gather_problem<T, L>(pb, mn, b0, batch, ws.target.data(), ws.mask.data(), ws.A.data(),
                           ws.y.data());
      body(ws, ppb, b0);
    }
  }
}

// Records, for lane l of a pack at b0 whose iterate W has loss `loss` at step `step`, every
// threshold it crosses for the first time; next[l] is the lane's first uncrossed threshold.
template <class T, int L, class Dims>
void record_crossings(const PackLayout<T, L, Dims>& lay, const DmfCrossings<T>& cr, const T* W,
                      std::int64_t b, int l, T loss, std::int64_t step, int& next) {
  while (next < cr.count && loss < cr.thresholds[next]) {
    cr.step[b * cr.count + next] = step;
    if (cr.snapshots != nullptr)
      for (int j = 1; j <= lay.depth; ++j) {
        const int size = lay.factor_size(j);
        const T* src = W + lay.factor_offset(j);
        T* dst = cr.snapshots[j - 1] + (b * cr.count + next) * size;
        for (int e = 0; e < size; ++e) dst[e] = src[e * L + l];
      }
    ++next;
  }
}

// Packs of this width (every d_j), and depth up to 4, keep their iterate in vector registers
// (register_steps below), where a pack is one register (AVX-512): with two or four narrower
// registers per pack the iterate does not fit and spills, 1.8-3.4x slower than the L-lane loop
// at x86-64-v2 and v3. Not width 1: there the compiler fuses the product into the residual's
// subtraction (one rounding fewer) in one loop and not the other, so the two would differ;
// likewise under the address sanitizer, whose checks make GCC fuse multiply-adds differently
// in the two loops (tests compare their bits).
#if defined(__AVX512F__) && !defined(__SANITIZE_ADDRESS__)
constexpr int kRegisterWidth = 2;
#else
constexpr int kRegisterWidth = 0;  // none
#endif

// The step loop of kernels::pack_steps for gradient descent on a small completion pack, with
// the pack's iterate and products in vector registers (cpu/lanes.h), for as long as nothing
// but the update is due: it stops before the first step at which a running lane would cross a
// threshold, stop (kernels/freeze.h) or have its update refused, and leaves that step and the
// rest to pack_steps. Lanes frozen before the call (`frozen`) step along unseen and keep
// their iterate, as pack_steps keeps it. Same operations, so the same iterates, as
// pack_steps; at 2x2 depth 3 it takes a third of the time per step. Returns the steps taken;
// W (lanes innermost, as in the workspace) holds their result.
template <class T, int D, int Depth>
std::int64_t register_steps(T* W, const PackProblem<T>& pb, const T* lr, const T* next_thr, T tol,
                            cpu::LaneMask<T> frozen, std::int64_t steps) {
  using V = cpu::Lanes<T>;
  constexpr int L = V::kLanes, S = D * D, F = Depth * S;
  const PackLayout<V, 1, StaticDims<D>> lay{{}, Depth};
  V w[F], wn[F], P[Depth > 1 ? (Depth - 1) * S : 1], G[S], H[S], H2[S], target[S], mask[S];
  for (int e = 0; e < F; ++e) w[e] = V::load(W + e * L);
  for (int e = 0; e < S; ++e) {
    target[e] = V::load(pb.target + e * L);
    mask[e] = V::load(pb.mask + e * L);
  }
  const PackProblem<V> vpb{false, target, mask, nullptr, nullptr, 0};
  const V rate = V::load(lr), threshold = V::load(next_thr);
  std::int64_t it = 0;
  for (; it < steps; ++it) {
    const V* E = kernels::pack_forward<V, 1>(lay, w, P);
    V loss;
    kernels::pack_residual<V, 1>(vpb, E, G, &loss, S);
    V fin = T(0);
    kernels::pack_backward<true, V, 1>(lay, w, wn, P, G, H, H2, &rate, &fin);
    // one test per step: the update is computed whatever the loss, and dropped with it
    const auto go = kernels::keeps_running(loss, tol) & !(loss < threshold) & kernels::commits(fin);
    if (!(go | frozen).all()) break;
    for (int e = 0; e < F; ++e) w[e] = wn[e];
  }
  for (int e = 0; e < F; ++e) select(frozen, V::load(W + e * L), w[e]).store(W + e * L);
  return it;
}

// register_steps for this pack when it applies (its sizes, gradient descent, completion), else
// 0 steps.
template <class T, int L, class Dims>
std::int64_t steps_in_registers(const PackLayout<T, L, Dims>& lay, T* W, const PackProblem<T>& pb,
                                const kernels::PackState<T, L>& s, int optimizer, const T* lr,
                                T tol, std::int64_t steps) {
  if constexpr (Dims::kStatic && L == cpu::Lanes<T>::kLanes && Dims{}[0] == kRegisterWidth) {
    if (optimizer != kGd || pb.sensing) return 0;
    cpu::LaneMask<T> frozen;
    for (int l = 0; l < L; ++l) frozen.m[l] = s.st[l] != kRunning && s.st[l] != kPadding ? -1 : 0;
    constexpr int D = Dims{}[0];
    switch (lay.depth) {
      case 1:
        return register_steps<T, D, 1>(W, pb, lr, s.next_thr, tol, frozen, steps);
      case 2:
        return register_steps<T, D, 2>(W, pb, lr, s.next_thr, tol, frozen, steps);
      case 3:
        return register_steps<T, D, 3>(W, pb, lr, s.next_thr, tol, frozen, steps);
      case 4:
        return register_steps<T, D, 4>(W, pb, lr, s.next_thr, tol, frozen, steps);
      default:
        return 0;
    }
  }
  return 0;
}

template <class T, int L, class Dims>
void step_impl(Dims dims, T* const* factors, const DmfShape& shape, const DmfProblem<T>& pb,
               const T* lr, std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
               const OptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
               const DmfCrossings<T>& cr) {
  const PackLayout<T, L, Dims> lay{dims, shape.depth};
  const std::int64_t batch = shape.batch;
  auto run_pack = [&](Workspace<T, L, Dims>& ws, const PackProblem<T>& ppb, std::int64_t b0) {
    kernels::PackState<T, L> s;
    kernels::PackOptimizer<T, L> o;
    o.runtime_kind = opt.kind;
    o.beta = opt.beta;
    o.beta1 = opt.beta1;
    o.beta2 = opt.beta2;
    o.eps = opt.eps;
    T lrp[L];
    int next[L];  // lane l's first uncrossed threshold
    bool any_running = false;
    auto next_threshold = [&](int k) {
      return k < cr.count ? cr.thresholds[k] : -std::numeric_limits<T>::infinity();
    };
    for (int l = 0; l < L; ++l) {
      const std::int64_t b = lane_problem(b0, l, batch);
      s.st[l] = b0 + l < batch ? status[b] : kPadding;
      s.fz[l] = b0 + l < batch ? frozen_at[b] : 0;
      lrp[l] = lr[b * lr_stride];
      o.v[l] = opt.kind == kGroupRmsprop ? opt.v[b] : T(0);
      o.t[l] = opt.kind != kGd ? opt.t[b] : 0;
      any_running |= s.st[l] == kRunning;
      next[l] = 0;
      while (next[l] < cr.count && cr.step[b * cr.count + next[l]] >= 0) ++next[l];
      s.next_thr[l] = next_threshold(next[l]);
    }
    if (!any_running) return;
    gather_factors<T, L>(lay, factors, b0, batch, ws.W.data());
    if (opt.kind == kAdam) {
      gather_factors<T, L>(lay, opt.m, b0, batch, ws.M.data());
      gather_factors<T, L>(lay, opt.s, b0, batch, ws.S.data());
      o.M = ws.M.data();
      o.S = ws.S.data();
      o.Mn = ws.Mn.data();
      o.Sn = ws.Sn.data();
    }
    auto on_cross = [&](int l, T loss, std::int64_t step, const T* W) {
      record_crossings(lay, cr, W, b0 + l, l, loss, step, next[l]);
      s.next_thr[l] = next_threshold(next[l]);
    };
    const std::int64_t done =
        steps_in_registers(lay, ws.W.data(), ppb, s, opt.kind, lrp, tol, steps);
    auto run = [&](auto& optimizer) {
      return kernels::pack_steps<true>(lay, ppb, ws.W.data(), ws.Wn.data(), ws.P.data(),
                                       ws.G.data(), ws.H.data(), ws.H2.data(), lrp, steps - done,
                                       tol, step0 + done, s, optimizer, on_cross);
    };
    // Gradient descent, the common case, gets a loop of its own: with the other optimizers'
    // code compiled in beside it, the 2x2 loop ran at half the steps per second.
    kernels::PackOptimizer<T, L, kGd> gd;
    const T* W = opt.kind == kGd ? run(gd) : run(o);
    scatter_factors<T, L>(lay, W, b0, batch, factors);
    if (opt.kind == kAdam) {
      scatter_factors<T, L>(lay, o.M, b0, batch, opt.m);
      scatter_factors<T, L>(lay, o.S, b0, batch, opt.s);
    }
    for (int l = 0; l < L && b0 + l < batch; ++l) {
      status[b0 + l] = s.st[l];
      frozen_at[b0 + l] = s.fz[l];
      if (opt.kind == kGroupRmsprop) opt.v[b0 + l] = o.v[l];
      if (opt.kind != kGd) opt.t[b0 + l] = o.t[l];
    }
  };
  for_each_pack(lay, batch, pb, opt.kind == kAdam, steps, run_pack);
}

template <class T, int L, class Dims>
void loss_impl(Dims dims, const T* const* factors, const DmfShape& shape, const DmfProblem<T>& pb,
               T* loss_out, T* product) {
  const PackLayout<T, L, Dims> lay{dims, shape.depth};
  const std::int64_t batch = shape.batch;
  const int mn = lay.d[lay.depth] * lay.d[0];
  auto measure_pack = [&](Workspace<T, L, Dims>& ws, const PackProblem<T>& ppb, std::int64_t b0) {
    gather_factors<T, L>(lay, factors, b0, batch, ws.W.data());
    const T* E = kernels::pack_forward<T, L>(lay, ws.W.data(), ws.P.data());
    T loss[L];
    kernels::pack_residual<T, L>(ppb, E, ws.G.data(), loss, mn);
    for (int l = 0; l < L && b0 + l < batch; ++l) {
      loss_out[b0 + l] = loss[l];
      T* dst = product + (b0 + l) * mn;
      for (int e = 0; e < mn; ++e) dst[e] = E[e * L + l];
    }
  };
  for_each_pack(lay, batch, pb, false, 0, measure_pack);
}

// Packs of L problems while one pack's workspace stays small enough for L2; larger problems
// run one per "pack" (L = 1), so that a batch of a few big matrices does not cost L copies.
constexpr std::int64_t kPackBytes = std::int64_t(1) << 21;
// From this width on (every d_j), one problem's products are big enough for the packed,
// register-tiled product (kernels/gemm.h), which then beats lanes over problems: float64
// depth 3 on AMD Zen 4, 1.25x at 24x24, 1.45x at 32x32, 1.7x at 48x48 (0.9x at 20x20).
constexpr int kPackedFromWidth = 24;

// Calls f(dims, lanes): square problems with every width equal and small (up to 8, and 16)
// run on compile-time sizes, all others on the runtime-size instance of the same code; lanes
// is std::integral_constant<int, L>. At 16 the compile-time products keep their partial sums
// in registers where the runtime-size ones go through memory: 1.3x the steps per second.
template <class T, class F>
void dispatch(const DmfShape& shape, const DmfProblem<T>& pb, bool adam, F&& f) {
  int min_width = shape.dims[0];
  for (int j = 1; j <= shape.depth; ++j) min_width = std::min(min_width, shape.dims[j]);
  auto with_lanes = [&](auto dims) {
    const PackLayout<T, 1, decltype(dims)> one{dims, shape.depth};
    const bool packed = !decltype(dims)::kStatic && min_width >= kPackedFromWidth;
    if (!packed && Workspace<T, 1, decltype(dims)>::bytes(one, pb, adam) * lanes<T>() <= kPackBytes)
      return f(dims, std::integral_constant<int, lanes<T>()>{});
    return f(dims, std::integral_constant<int, 1>{});
  };
  bool square = true;
  for (int j = 1; j <= shape.depth; ++j) square &= shape.dims[j] == shape.dims[0];
  if (square) {
    switch (shape.dims[0]) {  // clang-format off
      case 1: return with_lanes(StaticDims<1>{});
      case 2: return with_lanes(StaticDims<2>{});
      case 3: return with_lanes(StaticDims<3>{});
      case 4: return with_lanes(StaticDims<4>{});
      case 5: return with_lanes(StaticDims<5>{});
      case 6: return with_lanes(StaticDims<6>{});
      case 7: return with_lanes(StaticDims<7>{});
      case 8: return with_lanes(StaticDims<8>{});
      case 16: return with_lanes(StaticDims<16>{});
      default: break;
    }  // clang-format on
  }
  return with_lanes(RuntimeDims{shape.dims});
}

}  // namespace

namespace cpu {

template <class T>
void dmf_step(T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem, const T* lr,
              std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
              const OptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
              const DmfCrossings<T>& crossings) {
  if (shape.batch == 0) return;
  dispatch(shape, problem, opt.kind == kAdam, [&](auto dims, auto lanes) {
    step_impl<T, decltype(lanes)::value>(dims, factors, shape, problem, lr, lr_stride, steps, tol,
                                         step0, opt, status, frozen_at, crossings);
  });
}

template <class T>
void dmf_loss(const T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem, T* loss,
              T* product) {
  if (shape.batch == 0) return;
  dispatch(shape, problem, false, [&](auto dims, auto lanes) {
    loss_impl<T, decltype(lanes)::value>(dims, factors, shape, problem, loss, product);
  });
}

template void dmf_step<float>(float* const*, const DmfShape&, const DmfProblem<float>&,
                              const float*, std::int64_t, std::int64_t, float, std::int64_t,
                              const OptimizerState<float>&, std::int8_t*, std::int64_t*,
                              const DmfCrossings<float>&);
template void dmf_step<double>(double* const*, const DmfShape&, const DmfProblem<double>&,
                               const double*, std::int64_t, std::int64_t, double, std::int64_t,
                               const OptimizerState<double>&, std::int8_t*, std::int64_t*,
                               const DmfCrossings<double>&);
template void dmf_loss<float>(const float* const*, const DmfShape&, const DmfProblem<float>&,
                              float*, float*);
template void dmf_loss<double>(const double* const*, const DmfShape&, const DmfProblem<double>&,
                               double*, double*);

}  // namespace cpu

int simd_lanes_f64() {
#if defined(__AVX512F__)
  return 8;
#elif defined(__AVX__)
  return 4;
#elif defined(__SSE2__) || defined(__ARM_NEON)
  return 2;
#else
  return 1;
#endif
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace implicitreg
