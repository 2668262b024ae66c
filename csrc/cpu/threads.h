// The threads of a CPU kernel call, decided in one place (cpu/threads.cpp).
//
// How many: the process-wide count (set_num_threads; 0 = OpenMP's own: OMP_NUM_THREADS, a
// threadpoolctl limit, or the cores), the smaller of it and OpenMP's where both are set, and
// never more than the call can keep busy: a call with less than kMinFlopsPerThread of work
// per thread runs on fewer threads, down to one, where `num_threads(1)` wakes no other
// thread. A parallel region costs a wake-up of every thread and a barrier; on a machine
// shared with another process, a barrier waits for any thread that was descheduled, so a
// small call on two threads can take 10-50 times its one-thread time.
//
// How they share: dynamic scheduling in chunks (`chunk`), so that a descheduled thread holds
// up at most one chunk, never a static half of the batch. How they wait: passively (the
// package sets OMP_WAIT_POLICY=PASSIVE unless the user set it; python/implicitreg/_backend.py).
#pragma once
#include <cstdint>

namespace implicitreg {
namespace cpu {

// About 20-50 us of work on one core: below this per thread, waking another costs more than
// it saves.
constexpr double kMinFlopsPerThread = 1e6;

void set_num_threads(int n);  // 0: OpenMP's own count
int num_threads();            // the count a large call gets

// Threads for a call of `units` independent pieces of about `flops_per_unit` each.
int team(std::int64_t units, double flops_per_unit);

// Chunk of a dynamic schedule: about 8 chunks per thread, so that one slow (descheduled)
// thread holds up little, and at least one unit.
inline std::int64_t chunk(std::int64_t units, int threads) {
  const std::int64_t c = units / (8 * std::int64_t(threads));
  return c > 1 ? c : 1;
}

}  // namespace cpu
}  // namespace implicitreg
