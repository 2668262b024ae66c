// The math of the CP tensor factorization step, shared by the CPU driver (cpu/cp_step.cpp,
// where V is a SIMD vector of components) and the CUDA one (cuda/cp_step.cu, where V is one
// component per thread). The update itself is the optimizers' (kernels/optimizer.h) and the
// freeze rule is kernels/freeze.h.
//
// loss = (1 / n) sum over the n observed entries of (W - target)^2, so dL/dW at an observed
// entry is g = scale * (W - target) with scale = 2 / n, and for an entry whose factor rows
// are u_0 .. u_{N-1}:
//   value    W = sum_r u_0[r] u_1[r] ... u_{N-1}[r]   (products left to right),
//   gradient dL/du_n[r] += g * prod_{m != n} u_m[r]   (a suffix and a prefix product).
#pragma once
#include <cstdint>

#include "implicitreg/codes.h"
#include "kernels/hd.h"

namespace implicitreg {
namespace kernels {

// The mean squared residual from its sum over n_obs observed entries (0 when none).
template <class T>
IR_HD IR_INLINE T cp_mean_loss(double sum_sq, std::int64_t n_obs) {
  return n_obs > 0 ? T(sum_sq / double(n_obs)) : T(0);
}

// dL/dW per unit residual: 2 / n_obs (0 when nothing is observed).
template <class T>
IR_HD IR_INLINE T cp_residual_scale(std::int64_t n_obs) {
  return n_obs > 0 ? T(2) / T(n_obs) : T(0);
}

// u(0) u(1) ... u(count - 1), left to right: one component of an entry's value (count = N), or
// the prefix of the first count modes.
template <class V, class Row>
IR_HD IR_INLINE V row_product(int count, Row u) {
  V p = u(0);
  for (int n = 1; n < count; ++n) p *= u(n);
  return p;
}

// emit(n, prod_{m < count, m != n} u[m] * tail) for n = 0 .. count - 1: the factor of mode n's
// gradient, from suffix products (suf[n] = u[n] (u[n+1] (... tail))) and a running prefix.
template <class V, class Emit>
IR_HD IR_INLINE void leave_one_out(const V* u, int count, V tail, Emit emit) {
  V suf[kMaxCpOrder + 1];
  suf[count] = tail;
  for (int n = count - 1; n >= 1; --n) suf[n] = u[n] * suf[n + 1];
  emit(0, suf[1]);
  V pre = u[0];
  for (int n = 1; n < count; ++n) {
    emit(n, pre * suf[n + 1]);
    pre *= u[n];
  }
}

}  // namespace kernels
}  // namespace implicitreg
