// Every code and limit that crosses into Python, defined once: the per-problem status, the
// optimizers, the metric kinds, the svdvals outcome and the kernels' size limits. The compiled
// modules export them (bindings/codes.h) and the Python layer reads them from there, so a code
// inserted here renumbers nothing by hand. Each enum ends with its count, which bounds the
// bindings' range checks.
#pragma once
#include <cstdint>

namespace implicitreg {

// Per-problem state of a training run.
enum Status : std::int8_t { kRunning = 0, kConverged = 1, kDiverged = 2, kStatusCount };
inline constexpr const char* kStatusNames[] = {"running", "converged", "diverged"};

// Optimizers of both models (kernels/optimizer.h has the math).
enum Optimizer : std::int32_t { kGd = 0, kGroupRmsprop = 1, kAdam = 2, kOptimizerCount };
inline constexpr const char* kOptimizerNames[] = {"gd", "group_rmsprop", "adam"};

// The metrics, by the names Python gives them.
enum MetricKind : std::int32_t {
  kLoss = 0,
  kEntry,
  kDet,
  kSvals,
  kFro,
  kNuc,
  kSpectral,
  kSchatten,
  kErank,
  kRank,
  kDistRank,
  kBalancedness,
  kReconError,
  kMetricKindCount
};
inline constexpr const char* kMetricKindNames[] = {
    "loss",     "entry", "det",  "svals",     "fro",          "nuc",        "spectral",
    "schatten", "erank", "rank", "dist_rank", "balancedness", "recon_error"};

// Per-matrix outcome of svdvals.
enum SvdInfo : std::int8_t { kSvdOk = 0, kSvdNotConverged = 1, kSvdNonFinite = 2, kSvdInfoCount };
inline constexpr const char* kSvdInfoNames[] = {"ok", "not_converged", "non_finite"};

static_assert(sizeof(kStatusNames) / sizeof(*kStatusNames) == kStatusCount);
static_assert(sizeof(kOptimizerNames) / sizeof(*kOptimizerNames) == kOptimizerCount);
static_assert(sizeof(kMetricKindNames) / sizeof(*kMetricKindNames) == kMetricKindCount);
static_assert(sizeof(kSvdInfoNames) / sizeof(*kSvdInfoNames) == kSvdInfoCount);

// Limits of the kernels.
inline constexpr int kMaxSweeps = 40;     // Jacobi sweeps before kSvdNotConverged
inline constexpr int kMaxCudaDepth = 16;  // factors of a deep factorization on the GPU
inline constexpr int kMaxCpOrder = 6;     // modes of a CP factorization
inline constexpr int kMaxCpDim = 1024;    // mode size (the GPU packs an index in 10 bits)
inline constexpr int kMaxCpRank = 1024;   // CP components

}  // namespace implicitreg
