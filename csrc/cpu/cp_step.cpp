// CPU driver of the CP tensor factorization step: one problem per OpenMP iteration, the inner
// loops run over the R components (contiguous in every factor row) so they vectorize.
//
// Only observed entries enter the loss and the gradient, so each step walks the observed
// entries of a problem once: for entry (i_1..i_N) with suffix products S_n = U_n[i_n] * ... *
// U_N[i_N] (elementwise over r), the value is sum_r S_1[r]; with g = 2 (value - target) / n
// and prefix products P_n = U_1[i_1] * ... * U_{n-1}[i_{n-1}], factor n's gradient row i_n
// gains g * P_n * S_{n+1}. Per entry that is two passes over r with the order N known at
// compile time, so every product stays in registers. The loops over r are marked simd (the
// value a reduction, summed in vector lanes), since without -ffast-math the compiler keeps a
// float sum in order, one dependent add at a time.
#include "implicitreg/cp_step.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/hd.h"

namespace implicitreg {
namespace {

template <class T>
struct Workspace {
  std::vector<int> obs;       // observed flat indices
  std::vector<int> digits;    // their multi-indices, order per entry
  std::vector<T> target;      // their targets
  std::vector<T> grad, next;  // all factors' gradient / next iterate, factor after factor
};

// Observed entries of problem b: flat index, multi-index and target.
template <class T>
void gather_observed(const CpShape& shape, const CpProblem<T>& pb, std::int64_t numel,
                     std::int64_t b, Workspace<T>& ws) {
  const std::uint8_t* mask = pb.mask + b * pb.mask_stride;
  const T* target = pb.target + b * pb.target_stride;
  ws.obs.clear();
  ws.digits.clear();
  ws.target.clear();
  for (std::int64_t e = 0; e < numel; ++e) {
    if (!mask[e]) continue;
    ws.obs.push_back(int(e));
    ws.target.push_back(target[e]);
    const std::size_t at = ws.digits.size();
    ws.digits.resize(at + shape.order);
    std::int64_t rest = e;
    for (int n = shape.order - 1; n >= 0; --n) {
      ws.digits[at + n] = int(rest % shape.dims[n]);
      rest /= shape.dims[n];
    }
  }
}

// Sum over the observed entries of the squared residual and, when G is not null, the
// gradient rows: compile-time order N, so that per component r the products stay in registers
// and the loops over r vectorize. Two passes over r per entry: the value, then every factor's
// gradient row from prefix and suffix products.
template <int N, class T>
double entries(const T* const* U, T* const* G, const Workspace<T>& ws, int R, T scale) {
  double loss = 0;
  const std::int64_t n_obs = std::int64_t(ws.obs.size());
  for (std::int64_t e = 0; e < n_obs; ++e) {
    const int* d = ws.digits.data() + e * N;
    const T* u[N];
    for (int n = 0; n < N; ++n) u[n] = U[n] + std::int64_t(d[n]) * R;
    T value = 0;
    IR_SIMD_SUM(value)
    for (int r = 0; r < R; ++r) {
      T p = u[N - 1][r];  // u_0 (u_1 (... u_{N-1})), the order of cp_tensor and the oracle
      for (int n = N - 2; n >= 0; --n) p = u[n][r] * p;
      value += p;
    }
    const T res = value - ws.target[e];
    loss += double(res) * double(res);
    if (G == nullptr) continue;
    const T g = scale * res;
    T* gr[N];
    for (int n = 0; n < N; ++n) gr[n] = G[n] + std::int64_t(d[n]) * R;
#pragma omp simd
    for (int r = 0; r < R; ++r) {
      T suf[N + 1];  // suf[n] = u_n (u_{n+1} (... u_{N-1}))
      suf[N] = T(1);
      suf[N - 1] = u[N - 1][r];
      for (int n = N - 2; n >= 1; --n) suf[n] = u[n][r] * suf[n + 1];
      gr[0][r] += g * suf[1];
      T pre = u[0][r];  // u_0 ... u_{n-1}
      for (int n = 1; n < N - 1; ++n) {
        gr[n][r] += g * (pre * suf[n + 1]);
        pre *= u[n][r];
      }
      gr[N - 1][r] += g * pre;
    }
  }
  return loss;
}

// Loss of the current iterate of problem b, and (when grad is not null) its gradient.
template <class T>
T loss_and_gradient(T* const* factors, const CpShape& shape, std::int64_t b, const Workspace<T>& ws,
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
  const std::int64_t n_obs = std::int64_t(ws.obs.size());
  const T scale = n_obs > 0 ? T(2) / T(n_obs) : T(0);
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
  return n_obs > 0 ? T(loss / double(n_obs)) : T(0);
}

}  // namespace

namespace cpu {

template <class T>
void cp_step(T* const* factors, const CpShape& shape, const CpProblem<T>& problem, const T* lr,
             std::int64_t lr_stride, std::int64_t steps, T tol, std::int64_t step0,
             const CpOptimizerState<T>& opt, std::int8_t* status, std::int64_t* frozen_at,
             T* loss_out) {
  const int N = shape.order, R = shape.rank;
  std::int64_t numel = 1, size = 0;
  for (int n = 0; n < N; ++n) {
    numel *= shape.dims[n];
    size += std::int64_t(shape.dims[n]) * R;
  }
#pragma omp parallel
  {
    Workspace<T> ws;
    ws.grad.resize(size);
    ws.next.resize(size);
    // dynamic: problems that freeze early finish early
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < shape.batch; ++b) {
      if (status[b] != kRunning) continue;  // frozen: nothing to do, loss_out left as it is
      gather_observed(shape, problem, numel, b, ws);
      const T rate = lr[b * lr_stride];
      for (std::int64_t it = 0;; ++it) {
        const bool last = it == steps || status[b] != kRunning;
        const T loss = loss_and_gradient(factors, shape, b, ws, last ? nullptr : ws.grad.data());
        loss_out[b] = loss;
        if (status[b] != kRunning) break;
        if (!std::isfinite(loss)) {
          status[b] = kDiverged;
          frozen_at[b] = step0 + it;
          break;
        }
        if (loss < tol) {
          status[b] = kConverged;
          frozen_at[b] = step0 + it;
          break;
        }
        if (last) break;
        T step = rate;
        T v_new = 0;
        if (opt.kind == kGroupRmsprop) {
          double sq = 0;
          for (std::int64_t i = 0; i < size; ++i) sq += double(ws.grad[i]) * ws.grad[i];
          v_new = opt.beta * opt.v[b] + (T(1) - opt.beta) * T(sq);
          const double bias = 1.0 - std::pow(double(opt.beta), double(opt.t[b] + 1));
          step = rate / (T(std::sqrt(double(v_new) / bias)) + opt.eps);
        }
        // The next iterate, committed only if every entry (and the optimizer state) is finite:
        // an overflowing running mean of ||g||^2 would make the step 0 and stall the problem.
        bool finite = std::isfinite(step) && std::isfinite(v_new);
        std::int64_t off = 0;
        for (int n = 0; n < N && finite; ++n) {
          const std::int64_t sz = std::int64_t(shape.dims[n]) * R;
          const T* u = factors[n] + b * sz;
          T* nx = ws.next.data() + off;
          const T* g = ws.grad.data() + off;
          T bad = 0;
          for (std::int64_t i = 0; i < sz; ++i) {
            nx[i] = u[i] - step * g[i];
            bad += nx[i] - nx[i];  // NaN when any entry is inf or NaN
          }
          finite = bad == T(0);
          off += sz;
        }
        if (!finite) {
          status[b] = kDiverged;
          frozen_at[b] = step0 + it;
          break;
        }
        off = 0;
        for (int n = 0; n < N; ++n) {
          const std::int64_t sz = std::int64_t(shape.dims[n]) * R;
          std::copy(ws.next.data() + off, ws.next.data() + off + sz, factors[n] + b * sz);
          off += sz;
        }
        if (opt.kind == kGroupRmsprop) {
          opt.v[b] = v_new;
          opt.t[b] += 1;
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
#pragma omp parallel
  {
    std::vector<T> P(std::size_t(N) * R);
    std::vector<int> d(N);
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < shape.batch; ++b) {
      T* o = out + b * numel;
      for (std::int64_t e = 0; e < numel; ++e) {
        std::int64_t rest = e;
        for (int n = N - 1; n >= 0; --n) {
          d[n] = int(rest % shape.dims[n]);
          rest /= shape.dims[n];
        }
        // product over modes, accumulated in the first mode's order so that the value
        // equals the one the step computes for an observed entry
        const T* ulast = factors[N - 1] + (b * shape.dims[N - 1] + d[N - 1]) * std::int64_t(R);
        T* s = P.data();
        std::copy(ulast, ulast + R, s);
        for (int n = N - 2; n >= 1; --n) {
          const T* u = factors[n] + (b * shape.dims[n] + d[n]) * std::int64_t(R);
#pragma omp simd
          for (int r = 0; r < R; ++r) s[r] = u[r] * s[r];
        }
        T value = 0;
        if (N == 1) {
          IR_SIMD_SUM(value)
          for (int r = 0; r < R; ++r) value += s[r];
        } else {
          const T* u0 = factors[0] + (b * shape.dims[0] + d[0]) * std::int64_t(R);
          IR_SIMD_SUM(value)
          for (int r = 0; r < R; ++r) value += u0[r] * s[r];
        }
        o[e] = value;
      }
    }
  }
}

template void cp_step<float>(float* const*, const CpShape&, const CpProblem<float>&, const float*,
                             std::int64_t, std::int64_t, float, std::int64_t,
                             const CpOptimizerState<float>&, std::int8_t*, std::int64_t*, float*);
template void cp_step<double>(double* const*, const CpShape&, const CpProblem<double>&,
                              const double*, std::int64_t, std::int64_t, double, std::int64_t,
                              const CpOptimizerState<double>&, std::int8_t*, std::int64_t*,
                              double*);
template void cp_tensor<float>(const float* const*, const CpShape&, float*);
template void cp_tensor<double>(const double* const*, const CpShape&, double*);

}  // namespace cpu
}  // namespace implicitreg
