// The optimizer of a training call, shared by both models' kernels: its kind, its settings and
// where its per-problem state lives. The update rules are in kernels/optimizer.h.
#pragma once
#include <cstdint>

#include "implicitreg/codes.h"

namespace implicitreg {

// kGd:           W <- W - lr g.
// kGroupRmsprop: one running mean v of the squared norm of the whole gradient (all factors)
//                and one update count t per problem: v <- beta v + (1 - beta) ||g||^2,
//                t <- t + 1, W <- W - lr g / (sqrt(v / (1 - beta^t)) + eps) (eps outside
//                the square root).
// kAdam:         torch.optim.Adam: per entry, m <- m + (1 - beta1) (g - m),
//                s <- beta2 s + (1 - beta2) g^2, t <- t + 1,
//                W <- W - lr / (1 - beta1^t) * m / (sqrt(s) / sqrt(1 - beta2^t) + eps).
// State arrays are written only when the update is committed: a problem frozen as diverged
// keeps the state of its last finite iterate.
template <class T>
struct OptimizerState {
  int kind = kGd;
  T beta = T(0.99);                    // group_rmsprop
  T beta1 = T(0.9), beta2 = T(0.999);  // adam
  T eps = T(1e-6);                     // group_rmsprop and adam
  T* v = nullptr;                      // (batch,) group_rmsprop
  std::int64_t* t = nullptr;           // (batch,) group_rmsprop and adam
  T* const* m = nullptr;               // adam: one array per factor, of the factor's shape
  T* const* s = nullptr;               // adam: likewise
};

}  // namespace implicitreg
