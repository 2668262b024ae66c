// The freeze rule of every training loop (both models, CPU and CUDA): a problem stops for
// good when its loss is below tol (converged) or not finite (diverged), and an update that
// would make any entry of its factors or optimizer state non-finite is refused, freezing the
// problem as diverged at its last finite iterate. Its neighbours in the batch never notice.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "implicitreg/codes.h"
#include "kernels/hd.h"

namespace implicitreg {
namespace kernels {

// Whether a running problem whose current iterate has this loss keeps running: its loss is
// finite and not below tol. Comparisons only (NaN compares false), so that it also applies
// lane by lane to a vector of losses L (cpu/lanes.h) of scalars T.
template <class L, class T>
IR_HD IR_INLINE auto keeps_running(L loss, T tol) {
  const T big = std::numeric_limits<T>::max();
  return (loss >= tol) & (loss <= big) & (loss >= -big);
}

// The status of a running problem whose current iterate has this loss.
template <class T>
IR_HD IR_INLINE std::int8_t status_at(T loss, T tol) {
  if (keeps_running(loss, tol)) return kRunning;
  return std::isfinite(loss) ? kConverged : kDiverged;
}

// Non-finite probes: add x * 0 of every new value into one sum per problem; the sum is 0
// exactly when every value was finite (NaN otherwise), so a whole update is checked with one
// vectorizable multiply-add per entry and one test.
template <class T>
IR_HD IR_INLINE T probe(T x) {
  return x * 0;  // 0 of x's type: a scalar, or every lane of a vector
}
template <class T>
IR_HD IR_INLINE auto commits(T probes) {
  return probes == T(0);
}

}  // namespace kernels
}  // namespace implicitreg
