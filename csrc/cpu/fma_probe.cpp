// The machine's multiply-add throughput, measured: the reference of `% peak` in the bench.
// Each thread runs independent chains of fused multiply-adds on the vectors the kernels use
// (kernels/gemm.h), enough chains to cover the FMA latency of every pipe (4 cycles x 2 pipes
// on the cores we know, 3 x 2 more on AVX-512), so that throughput, not latency, bounds it.
// A formula (cores x lanes x pipes x clock) gets Zen 4's half-rate 512-bit FMAs and turbo
// clocks wrong; a measurement does not.
#include <chrono>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "implicitreg/dmf_step.h"
#include "kernels/gemm.h"

namespace implicitreg {
namespace cpu {
namespace {

#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int kChains = 24;  // 32 vector registers
#else
constexpr int kChains = 12;  // 16 vector registers
#endif

volatile double g_sink;

// Runs `rounds` rounds of kChains independent FMAs; returns a value that depends on all of
// them, so that none can be dropped.
template <class T>
T chains(std::int64_t rounds) {
  using Vec = typename kernels::gemm::Tile<T>::Vec;
  Vec acc[kChains];
  const Vec mul = Vec{} + T(0.999999), add = Vec{} + T(1e-6);
  for (int c = 0; c < kChains; ++c) acc[c] = Vec{} + T(c);
  for (std::int64_t r = 0; r < rounds; ++r) {
#pragma GCC unroll 32  // every chain in a register of its own
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * mul + add;
  }
  Vec sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum += acc[c];
  return sum[0];
}

}  // namespace

template <class T>
double fma_probe(int threads, std::int64_t rounds) {
  using Clock = std::chrono::steady_clock;
  constexpr int lanes = kernels::gemm::Tile<T>::kLanes;
  T total = T(0);
  int team = 1;
  const auto t0 = Clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
#ifdef _OPENMP
#pragma omp master
    team = omp_get_num_threads();
#endif
    total += chains<T>(rounds);
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  g_sink = double(total);  // the chains' result is used, so no FMA can be left out
  return 2.0 * lanes * kChains * double(rounds) * team / s;
}

template double fma_probe<float>(int, std::int64_t);
template double fma_probe<double>(int, std::int64_t);

}  // namespace cpu
}  // namespace implicitreg
