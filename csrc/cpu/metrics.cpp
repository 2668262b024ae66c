// Rank and norm metrics (PAPER.md §5) on whole batches, and dmf_measure: everything fit()
// logs at one log point, from one product and one SVD per problem, in one call.
#include "implicitreg/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/threads.h"
#include "kernels/metrics.h"

namespace implicitreg {
namespace {

using kernels::all_finite;
using kernels::balancedness_one;
using kernels::is_svals_kind;
using kernels::kNaN;
using kernels::svals_metric;

}  // namespace

namespace cpu {

template <class T>
void svals_metrics(const T* s, std::int64_t batch, int k, const MetricSpec* specs, int n_specs,
                   double* out) {
  const int threads = cpu::team(batch, 10.0 * k * n_specs);
#pragma omp parallel for num_threads(threads) schedule(dynamic, cpu::chunk(batch, threads))
  for (std::int64_t b = 0; b < batch; ++b) {
    const T* sb = s + b * k;
    const bool finite = all_finite(sb, k);
    for (int i = 0; i < n_specs; ++i)
      out[i * batch + b] = finite ? svals_metric(specs[i], sb, k) : kNaN;
  }
}

template <class T>
void balancedness(const T* const* factors, const DmfShape& shape, double* out) {
  double flops = 0;  // W_{j+1}^T W_{j+1} and W_j W_j^T
  for (int j = 1; j < shape.depth; ++j)
    flops += 2.0 * shape.dims[j] * shape.dims[j] * (shape.dims[j - 1] + shape.dims[j + 1]);
  const int threads = cpu::team(shape.batch, flops);
#pragma omp parallel for num_threads(threads) schedule(dynamic, cpu::chunk(shape.batch, threads))
  for (std::int64_t b = 0; b < shape.batch; ++b) out[b] = balancedness_one(factors, shape, b);
}

template <class T>
void dmf_measure(const T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem,
                 const MetricSpec* specs, int n_specs, double* out, const T* truth,
                 std::int64_t truth_stride) {
  const std::int64_t batch = shape.batch;
  if (batch == 0) return;
  const int m = shape.dims[shape.depth], n = shape.dims[0], k = std::min(m, n);
  std::vector<T> loss(batch), product(batch * m * n), s;
  std::vector<std::int8_t> info;
  dmf_loss(factors, shape, problem, loss.data(), product.data());
  bool need_svals = false;
  for (int i = 0; i < n_specs; ++i) need_svals |= is_svals_kind(specs[i].kind);
  if (need_svals) {
    s.resize(batch * k);
    info.resize(batch);
    svdvals(product.data(), batch, m, n, s.data(), info.data());
  }
  // One pass over the problems computes every requested row.
  const int threads = cpu::team(batch, 20.0 * m * n * n_specs);
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> buf(kernels::det_scratch(shape));
#pragma omp for schedule(dynamic, cpu::chunk(batch, threads))
    for (std::int64_t b = 0; b < batch; ++b)
      kernels::measure_rows(specs, n_specs, factors, shape, b, loss.data(), product.data(),
                            need_svals ? s.data() : nullptr,
                            truth != nullptr ? truth + b * truth_stride : nullptr, buf.data(), out);
  }
}

template void svals_metrics<float>(const float*, std::int64_t, int, const MetricSpec*, int,
                                   double*);
template void svals_metrics<double>(const double*, std::int64_t, int, const MetricSpec*, int,
                                    double*);
template void balancedness<float>(const float* const*, const DmfShape&, double*);
template void balancedness<double>(const double* const*, const DmfShape&, double*);
template void dmf_measure<float>(const float* const*, const DmfShape&, const DmfProblem<float>&,
                                 const MetricSpec*, int, double*, const float*, std::int64_t);
template void dmf_measure<double>(const double* const*, const DmfShape&, const DmfProblem<double>&,
                                  const MetricSpec*, int, double*, const double*, std::int64_t);

}  // namespace cpu
}  // namespace implicitreg
