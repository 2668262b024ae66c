// The optimizers' update rules (implicitreg/optimizer.h), one definition for both models, the
// CPU and the CUDA kernels.
#pragma once
#include <cmath>
#include <cstdint>

#include "implicitreg/optimizer.h"
#include "kernels/hd.h"

namespace implicitreg {
namespace kernels {

// group_rmsprop: the step size lr / (sqrt(v_new / (1 - beta^(t + 1))) + eps) for a problem
// whose gradient has squared norm sq (summed in double), and its next running mean v_new.
template <class T>
IR_HD IR_INLINE T rmsprop_rate(T lr, T beta, T eps, T v, std::int64_t t, double sq, T& v_new) {
  v_new = beta * v + (T(1) - beta) * T(sq);
  const double bias = 1.0 - std::pow(double(beta), double(t + 1));
  return lr / (T(std::sqrt(double(v_new) / bias)) + eps);
}

// adam: the per-problem factors of update t + 1, bias corrections in double as PyTorch takes
// them (Python floats).
template <class T>
struct AdamRate {
  T step;        // lr / (1 - beta1^(t + 1))
  T bias2_sqrt;  // sqrt(1 - beta2^(t + 1))
};

template <class T>
IR_HD IR_INLINE AdamRate<T> adam_rate(T lr, T beta1, T beta2, std::int64_t t) {
  const double n = double(t + 1);
  return {T(double(lr) / (1.0 - std::pow(double(beta1), n))),
          T(std::sqrt(1.0 - std::pow(double(beta2), n)))};
}

// adam: the next value of one entry w with gradient g, and its next moments (m, s updated in
// place), in torch.optim.Adam's order of operations (lerp, then mul and addcmul, then
// addcdiv).
template <class T>
IR_HD IR_INLINE T adam_update(T w, T g, T& m, T& s, T beta1, T beta2, T eps, AdamRate<T> r) {
  m = m + (T(1) - beta1) * (g - m);
  s = s * beta2 + (T(1) - beta2) * g * g;
  return w - r.step * (m / (std::sqrt(s) / r.bias2_sqrt + eps));
}

}  // namespace kernels
}  // namespace implicitreg
