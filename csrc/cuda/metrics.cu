// CUDA driver of the rank and norm metrics: one problem per thread, with the CPU's math
// (kernels/metrics.h). dmf_measure takes the product and loss from cuda::dmf_loss and the
// singular values from cuda::svdvals, then fills every requested row in one kernel.
#include <algorithm>
#include <limits>

#include "cuda/common.cuh"
#include "implicitreg/metrics.h"
#include "kernels/metrics.h"

namespace implicitreg {
namespace cuda {
namespace {

constexpr int kBlock = 128;
constexpr int kMaxSpecs = 64;

// The requested metrics, passed by value to the kernels.
struct Specs {
  MetricSpec spec[kMaxSpecs];
  int count;
};

Specs make_specs(const MetricSpec* specs, int n_specs) {
  if (n_specs > kMaxSpecs)
    throw std::invalid_argument("cuda metrics: at most " + std::to_string(kMaxSpecs) +
                                " metrics per call, got " + std::to_string(n_specs));
  Specs s{};
  for (int i = 0; i < n_specs; ++i) s.spec[i] = specs[i];
  s.count = n_specs;
  return s;
}

// Factor pointers and dims by value (DmfShape points into host memory).
template <class T>
struct Factors {
  const T* f[kMaxCudaDepth];
  int dims[kMaxCudaDepth + 1];
  int depth;
  std::int64_t batch;
  __device__ DmfShape shape() const { return {batch, depth, dims}; }
};

template <class T>
Factors<T> make_factors(const T* const* factors, const DmfShape& shape) {
  if (shape.depth < 1 || shape.depth > kMaxCudaDepth)
    throw std::invalid_argument("cuda metrics: depth must be 1.." + std::to_string(kMaxCudaDepth) +
                                ", got " + std::to_string(shape.depth));
  Factors<T> f{};
  for (int j = 0; j < shape.depth; ++j) f.f[j] = factors[j];
  for (int j = 0; j <= shape.depth; ++j) f.dims[j] = shape.dims[j];
  f.depth = shape.depth;
  f.batch = shape.batch;
  return f;
}

template <class T>
__global__ void svals_metrics_kernel(const T* s, std::int64_t batch, int k, const Specs specs,
                                     double* out) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const T* sb = s + b * k;
  const bool finite = kernels::all_finite(sb, k);
  for (int i = 0; i < specs.count; ++i)
    out[i * batch + b] = finite ? kernels::svals_metric(specs.spec[i], sb, k) : kernels::kNaN;
}

template <class T>
__global__ void balancedness_kernel(const Factors<T> f, double* out) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= f.batch) return;
  const DmfShape shape = f.shape();
  out[b] = kernels::balancedness_one(f.f, shape, b);
}

template <class T>
__global__ void measure_kernel(const Factors<T> f, const Specs specs, const T* loss,
                               const T* product, const T* s, const T* truth,
                               std::int64_t truth_stride, double* det_scratch,
                               std::int64_t det_size, double* out) {
  const std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (b >= f.batch) return;
  kernels::measure_rows(specs.spec, specs.count, f.f, f.shape(), b, loss, product, s,
                        truth != nullptr ? truth + b * truth_stride : nullptr,
                        det_scratch + b * det_size, out);
}

}  // namespace

template <class T>
void svals_metrics(const T* s, std::int64_t batch, int k, const MetricSpec* specs, int n_specs,
                   double* out, void* stream) {
  if (batch == 0) return;
  const Specs sp = make_specs(specs, n_specs);
  launch(svals_metrics_kernel<T>, grid_for(batch, kBlock), kBlock, 0, as_stream(stream), s, batch,
         k, sp, out);
  IR_CUDA_LAUNCHED("svals_metrics");
}

template <class T>
void balancedness(const T* const* factors, const DmfShape& shape, double* out, void* stream) {
  if (shape.batch == 0) return;
  launch(balancedness_kernel<T>, grid_for(shape.batch, kBlock), kBlock, 0, as_stream(stream),
         make_factors(factors, shape), out);
  IR_CUDA_LAUNCHED("balancedness");
}

template <class T>
void dmf_measure(const T* const* factors, const DmfShape& shape, const DmfProblem<T>& problem,
                 const MetricSpec* specs, int n_specs, double* out, const T* truth,
                 std::int64_t truth_stride, void* stream) {
  const std::int64_t batch = shape.batch;
  if (batch == 0) return;
  const cudaStream_t st = as_stream(stream);
  const Specs sp = make_specs(specs, n_specs);
  const Factors<T> f = make_factors(factors, shape);
  const int m = shape.dims[shape.depth], n = shape.dims[0], k = std::min(m, n);
  bool need_svals = false, need_det = false;
  for (int i = 0; i < n_specs; ++i) {
    need_svals |= kernels::is_svals_kind(specs[i].kind);
    need_det |= specs[i].kind == kDet;
  }
  Scratch<T> loss(batch, st), product(batch * m * n, st), s(need_svals ? batch * k : 0, st);
  Scratch<std::int8_t> info(need_svals ? batch : 0, st);
  const std::int64_t det_size = need_det ? kernels::det_scratch(shape) : 0;
  Scratch<double> det(batch * det_size, st);
  dmf_loss(factors, shape, problem, loss.get(), product.get(), stream);
  if (need_svals) svdvals(product.get(), batch, m, n, s.get(), info.get(), kMaxSweeps, stream);
  launch(measure_kernel<T>, grid_for(batch, kBlock), kBlock, 0, st, f, sp,
         static_cast<const T*>(loss.get()), static_cast<const T*>(product.get()),
         static_cast<const T*>(s.get()), truth, truth_stride, det.get(), det_size, out);
  IR_CUDA_LAUNCHED("dmf_measure");
}

#define IR_INSTANTIATE(T)                                                                      \
  template void svals_metrics<T>(const T*, std::int64_t, int, const MetricSpec*, int, double*, \
                                 void*);                                                       \
  template void balancedness<T>(const T* const*, const DmfShape&, double*, void*);             \
  template void dmf_measure<T>(const T* const*, const DmfShape&, const DmfProblem<T>&,         \
                               const MetricSpec*, int, double*, const T*, std::int64_t, void*);
IR_INSTANTIATE(float)
IR_INSTANTIATE(double)
#undef IR_INSTANTIATE

}  // namespace cuda
}  // namespace implicitreg
