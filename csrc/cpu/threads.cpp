// The process-wide thread count of the CPU kernels (cpu/threads.h).
#include "cpu/threads.h"

#include <algorithm>
#include <atomic>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace implicitreg {
namespace cpu {
namespace {
std::atomic<int> g_threads{0};
#ifdef _OPENMP
const int g_openmp_default = omp_get_max_threads();  // before anyone changed it
#endif
}  // namespace

void set_num_threads(int n) {
  g_threads.store(n > 0 ? n : 0);
#ifdef _OPENMP
  // Also OpenMP's count of the calling thread, which threadpoolctl reads and sets: the two
  // agree after either sets it.
  omp_set_num_threads(n > 0 ? n : g_openmp_default);
#endif
}

int num_threads() {
#ifdef _OPENMP
  const int omp = omp_get_max_threads(), own = g_threads.load();
  return own > 0 ? std::min(own, omp) : omp;
#else
  return 1;
#endif
}

int team(std::int64_t units, double flops_per_unit) {
  const double by_work = double(units) * flops_per_unit / kMinFlopsPerThread;
  const std::int64_t most = std::min<std::int64_t>(num_threads(), units);
  return int(std::max<std::int64_t>(1, std::min<std::int64_t>(most, std::int64_t(by_work))));
}

}  // namespace cpu
}  // namespace implicitreg
