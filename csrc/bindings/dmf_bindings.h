// The deep matrix factorization and metric functions of both compiled modules, written once:
// _core binds them on NumPy arrays to the CPU kernels, _cuda (and _cuda_emulated) on device
// arrays to the CUDA kernels, each through a Backend (module_core.cpp, module_cuda.cpp) that
// says how to see an array and which kernel to call. Python (ops.py) validates and allocates;
// this layer re-checks only what would make C++ misread memory (dtype, contiguity,
// writability, sizes) and names the function and the argument when it refuses.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "bindings/optimizer.h"
#include "implicitreg/dmf_step.h"
#include "implicitreg/metrics.h"

namespace implicitreg {
namespace bindings {

// Factors, dims and problem description shared by the DMF functions. shape() points into this
// object: use it while the object lives.
template <class T>
struct Batch {
  std::int64_t batch = 0;
  std::vector<T*> factors;
  std::vector<int> dims;
  std::vector<std::vector<std::int64_t>> factor_shapes;
  DmfProblem<T> problem{};
  DmfShape shape() const { return {batch, int(factors.size()), dims.data()}; }
  std::vector<const T*> const_factors() const { return {factors.begin(), factors.end()}; }
};

// The factors of a batch, checked to chain: W_j of shape (B, d_j, d_{j-1}).
template <class Backend, class T>
Batch<T> make_factors(const std::string& fn, const py::list& factors, bool writable) {
  Batch<T> b;
  const int depth = int(factors.size());
  require(depth >= 1 && depth <= Backend::kMaxDepth, fn,
          "factors must hold 1.." + std::to_string(Backend::kMaxDepth) + " arrays, got " +
              std::to_string(depth));
  for (int j = 0; j < depth; ++j) {
    View W = checked<Backend, T>(fn, "factors", factors[j], writable);
    const std::string name = "factors[" + std::to_string(j) + "]";
    if (j == 0) {
      require_shape(W.ndim() == 3, fn, name.c_str(), W, "3-d (B, d_1, d_0)");
      b.batch = W.shape[0];
      b.dims.push_back(int(W.shape[2]));
    }
    require_shape(W.ndim() == 3 && W.shape[0] == b.batch && W.shape[2] == b.dims.back(), fn,
                  name.c_str(), W,
                  "(" + std::to_string(b.batch) + ", d, " + std::to_string(b.dims.back()) +
                      ") to chain with the previous factor");
    b.dims.push_back(int(W.shape[1]));
    b.factors.push_back(W.as<T>());
    b.factor_shapes.push_back(W.shape);
  }
  return b;
}

// Factors and problem data: completion passes target/mask (A = y = None), sensing A/y.
template <class Backend, class T>
Batch<T> make_batch(const std::string& fn, const py::list& factors, const py::object& target,
                    const py::object& mask, const py::object& A, const py::object& y,
                    bool writable) {
  Batch<T> b = make_factors<Backend, T>(fn, factors, writable);
  const std::int64_t B = b.batch, m = b.dims.back(), n = b.dims.front();
  if (!target.is_none()) {
    View t = checked<Backend, T>(fn, "target", target, false);
    View mk = checked<Backend, bool>(fn, "mask", mask, false);
    const std::string want = "(B or 1, m, n) = " + dims_str({B, m, n});
    require_shape(t.ndim() == 3 && t.shape[1] == m && t.shape[2] == n, fn, "target", t, want);
    require_shape(mk.ndim() == 3 && mk.shape[1] == m && mk.shape[2] == n, fn, "mask", mk, want);
    b.problem.target = t.as<const T>();
    b.problem.mask = mk.as<const std::uint8_t>();
    b.problem.target_stride = problem_stride(fn, "target", t, B, m * n, want);
    b.problem.mask_stride = problem_stride(fn, "mask", mk, B, m * n, want);
  } else {
    View a = checked<Backend, T>(fn, "A", A, false), yy = checked<Backend, T>(fn, "y", y, false);
    const std::string want_a = "(B or 1, K, m, n) with B = " + std::to_string(B) +
                               ", m = " + std::to_string(m) + ", n = " + std::to_string(n);
    require_shape(a.ndim() == 4 && a.shape[2] == m && a.shape[3] == n, fn, "A", a, want_a);
    const std::string want_y =
        "(B or 1, K) with B = " + std::to_string(B) + ", K = " + std::to_string(a.shape[1]);
    require_shape(yy.ndim() == 2 && yy.shape[1] == a.shape[1], fn, "y", yy, want_y);
    b.problem.sensing = true;
    b.problem.K = int(a.shape[1]);
    b.problem.A = a.as<const T>();
    b.problem.y = yy.as<const T>();
    b.problem.A_stride = problem_stride(fn, "A", a, B, a.shape[1] * m * n, want_a);
    b.problem.y_stride = problem_stride(fn, "y", yy, B, a.shape[1], want_y);
  }
  return b;
}

// Metric specs from host arrays kinds (n,) int32 and params (n, 2) float64 [param, rtol].
inline std::vector<MetricSpec> make_specs(const std::string& fn, const py::object& kinds,
                                          const py::object& params) {
  struct Host {
    static View view(const std::string& f, const char* name, const py::handle& h) {
      return host_view(f, name, h);
    }
  };
  View k = checked<Host, std::int32_t>(fn, "kinds", kinds, false);
  View p = checked<Host, double>(fn, "params", params, false);
  require_shape(k.ndim() == 1, fn, "kinds", k, "(n,)");
  const std::int64_t n = k.shape[0];
  require_shape(p.ndim() == 2 && p.shape[0] == n && p.shape[1] == 2, fn, "params", p,
                dims_str({n, 2}));
  const auto* kp = k.as<const std::int32_t>();
  const auto* pp = p.as<const double>();
  std::vector<MetricSpec> specs;
  for (std::int64_t i = 0; i < n; ++i) {
    require(kp[i] >= 0 && kp[i] < kMetricKindCount, fn,
            "kinds[" + std::to_string(i) + "] must be a metric kind 0.." +
                std::to_string(kMetricKindCount - 1) + ", got " + std::to_string(kp[i]));
    specs.push_back({kp[i], pp[2 * i], pp[2 * i + 1]});
  }
  return specs;
}

template <class Backend, class T>
void dmf_step_t(const py::list& factors, const py::object& target, const py::object& mask,
                const py::object& A, const py::object& y, const py::object& lr, std::int64_t steps,
                double tol, std::int64_t step0, const py::object& status,
                const py::object& frozen_at, const py::object& optimizer,
                const py::object& thresholds, const py::object& crossed_at,
                const py::object& snapshots) {
  const std::string fn = "dmf_step";
  const Batch<T> b = make_batch<Backend, T>(fn, factors, target, mask, A, y, true);
  const std::int64_t B = b.batch;
  const auto [lr_p, lr_stride] = make_lr<Backend, T>(fn, lr, B);
  auto* st = per_problem<Backend, std::int8_t>(fn, "status", status, B);
  auto* fz = per_problem<Backend, std::int64_t>(fn, "frozen_at", frozen_at, B);
  require_steps(fn, steps);
  const Optimizer<T> opt = make_optimizer<Backend, T>(fn, optimizer, B, b.factor_shapes);
  DmfCrossings<T> cr;
  std::vector<T*> snaps;
  if (!thresholds.is_none()) {
    View thr = checked<Backend, T>(fn, "thresholds", thresholds, false);
    View at = checked<Backend, std::int64_t>(fn, "crossed_at", crossed_at, true);
    require_shape(thr.ndim() == 1, fn, "thresholds", thr, "1-d");
    cr.count = int(thr.shape[0]);
    require_shape(at.ndim() == 2 && at.shape[0] == B && at.shape[1] == cr.count, fn, "crossed_at",
                  at, "(B, len(thresholds)) = " + dims_str({B, cr.count}));
    cr.thresholds = thr.as<const T>();
    cr.step = at.as<std::int64_t>();
    if (!snapshots.is_none()) {
      py::list sl = snapshots.cast<py::list>();
      require(sl.size() == b.factors.size(), fn,
              "snapshots must hold one array per factor (" + std::to_string(b.factors.size()) +
                  "), got " + std::to_string(sl.size()));
      for (std::size_t j = 0; j < sl.size(); ++j) {
        View s = checked<Backend, T>(fn, "snapshots", sl[j], true);
        require_shape(s.ndim() == 4 && s.shape[0] == B && s.shape[1] == cr.count &&
                          s.shape[2] == b.dims[j + 1] && s.shape[3] == b.dims[j],
                      fn, ("snapshots[" + std::to_string(j) + "]").c_str(), s,
                      dims_str({B, cr.count, b.dims[j + 1], b.dims[j]}));
        snaps.push_back(s.as<T>());
      }
      cr.snapshots = snaps.data();
    }
  }
  Backend::template dmf_step<T>(b.factors.data(), b.shape(), b.problem, lr_p, lr_stride, steps,
                                T(tol), step0, opt.state(), st, fz, cr);
}

template <class Backend, class T>
void dmf_loss_t(const py::list& factors, const py::object& target, const py::object& mask,
                const py::object& A, const py::object& y, const py::object& loss,
                const py::object& product) {
  const std::string fn = "dmf_loss";
  const Batch<T> b = make_batch<Backend, T>(fn, factors, target, mask, A, y, false);
  View pr = checked<Backend, T>(fn, "product", product, true);
  const std::int64_t B = b.batch, m = b.dims.back(), n = b.dims.front();
  T* lo = per_problem<Backend, T>(fn, "loss", loss, B);
  require_shape(pr.ndim() == 3 && pr.shape[0] == B && pr.shape[1] == m && pr.shape[2] == n, fn,
                "product", pr, dims_str({B, m, n}));
  Backend::template dmf_loss<T>(b.const_factors().data(), b.shape(), b.problem, lo, pr.as<T>());
}

template <class Backend, class T>
void svdvals_t(const py::object& X, const py::object& s, const py::object& info, int max_sweeps) {
  const std::string fn = "svdvals";
  View x = checked<Backend, T>(fn, "X", X, false), sv = checked<Backend, T>(fn, "s", s, true);
  View in = checked<Backend, std::int8_t>(fn, "info", info, true);
  require_shape(x.ndim() == 3, fn, "X", x, "(B, m, n)");
  const std::int64_t B = x.shape[0];
  const int m = int(x.shape[1]), n = int(x.shape[2]);
  require_shape(sv.ndim() == 2 && sv.shape[0] == B && sv.shape[1] == std::min(m, n), fn, "s", sv,
                "(B, min(m, n)) = " + dims_str({B, std::min(m, n)}));
  require_shape(in.ndim() == 1 && in.shape[0] == B, fn, "info", in, dims_str({B}));
  require(max_sweeps >= 1, fn, "max_sweeps must be >= 1, got " + std::to_string(max_sweeps));
  Backend::template svdvals<T>(x.as<const T>(), B, m, n, sv.as<T>(), in.as<std::int8_t>(),
                               max_sweeps);
}

template <class Backend, class T>
void svals_metrics_t(const py::object& s, const py::object& kinds, const py::object& params,
                     const py::object& out) {
  const std::string fn = "svals_metrics";
  View sv = checked<Backend, T>(fn, "s", s, false);
  View o = checked<Backend, double>(fn, "out", out, true);
  std::vector<MetricSpec> specs = make_specs(fn, kinds, params);
  for (const auto& sp : specs)
    require(sp.kind >= kFro && sp.kind <= kDistRank, fn,
            "kinds must be singular-value metrics (" + std::to_string(kFro) + ".." +
                std::to_string(kDistRank) + "), got " + std::to_string(sp.kind));
  require_shape(sv.ndim() == 2, fn, "s", sv, "(B, k)");
  const std::int64_t B = sv.shape[0];
  require_shape(o.ndim() == 2 && o.shape[0] == std::int64_t(specs.size()) && o.shape[1] == B, fn,
                "out", o, "(len(kinds), B) = " + dims_str({std::int64_t(specs.size()), B}));
  Backend::template svals_metrics<T>(sv.as<const T>(), B, int(sv.shape[1]), specs.data(),
                                     int(specs.size()), o.as<double>());
}

template <class Backend, class T>
void balancedness_t(const py::list& factors, const py::object& out) {
  const std::string fn = "balancedness";
  const Batch<T> b = make_factors<Backend, T>(fn, factors, false);
  double* o = per_problem<Backend, double>(fn, "out", out, b.batch);
  Backend::template balancedness<T>(b.const_factors().data(), b.shape(), o);
}

template <class Backend, class T>
void dmf_measure_t(const py::list& factors, const py::object& target, const py::object& mask,
                   const py::object& A, const py::object& y, const py::object& kinds,
                   const py::object& params, const py::object& out, const py::object& truth) {
  const std::string fn = "dmf_measure";
  const Batch<T> b = make_batch<Backend, T>(fn, factors, target, mask, A, y, false);
  std::vector<MetricSpec> specs = make_specs(fn, kinds, params);
  const int m = b.dims.back(), n = b.dims.front();
  const std::int64_t B = b.batch;
  std::int64_t rows = 0;
  for (const auto& sp : specs) {
    rows += sp.kind == kSvals ? std::min(m, n) : 1;
    require(sp.kind != kEntry || (sp.param >= 0 && sp.param < double(m) * n), fn,
            "entry index must be in [0, " + std::to_string(m * n) + "), got " +
                std::to_string(sp.param));
    require(sp.kind != kDet || m == n, fn,
            "det needs a square problem, got " + std::to_string(m) + " x " + std::to_string(n));
    require(sp.kind != kReconError || !truth.is_none(), fn, "recon_error needs truth, got None");
  }
  const T* tp = nullptr;
  std::int64_t truth_stride = 0;
  if (!truth.is_none()) {
    View t = checked<Backend, T>(fn, "truth", truth, false);
    require_shape(
        t.ndim() == 3 && (t.shape[0] == B || t.shape[0] == 1) && t.shape[1] == m && t.shape[2] == n,
        fn, "truth", t, "(B or 1, m, n) = " + dims_str({B, m, n}));
    tp = t.as<const T>();
    truth_stride = t.shape[0] == 1 ? 0 : std::int64_t(m) * n;
  }
  View o = checked<Backend, double>(fn, "out", out, true);
  require_shape(o.ndim() == 2 && o.shape[0] == rows && o.shape[1] == B, fn, "out", o,
                "(rows, B) = " + dims_str({rows, B}));
  Backend::template dmf_measure<T>(b.const_factors().data(), b.shape(), b.problem, specs.data(),
                                   int(specs.size()), o.as<double>(), tp, truth_stride);
}

template <class Backend, class T>
void svd_t(const py::object& X, const py::object& U, const py::object& s, const py::object& Vh,
           const py::object& info, int max_sweeps) {
  const std::string fn = "svd";
  View x = checked<Backend, T>(fn, "X", X, false);
  View u = checked<Backend, T>(fn, "U", U, true), sv = checked<Backend, T>(fn, "s", s, true);
  View vh = checked<Backend, T>(fn, "Vh", Vh, true);
  View in = checked<Backend, std::int8_t>(fn, "info", info, true);
  require_shape(x.ndim() == 3, fn, "X", x, "(B, m, n)");
  const std::int64_t B = x.shape[0];
  const int m = int(x.shape[1]), n = int(x.shape[2]), k = std::min(m, n);
  require_shape(u.ndim() == 3 && u.shape[0] == B && u.shape[1] == m && u.shape[2] == k, fn, "U", u,
                "(B, m, min(m, n)) = " + dims_str({B, m, k}));
  require_shape(sv.ndim() == 2 && sv.shape[0] == B && sv.shape[1] == k, fn, "s", sv,
                "(B, min(m, n)) = " + dims_str({B, k}));
  require_shape(vh.ndim() == 3 && vh.shape[0] == B && vh.shape[1] == k && vh.shape[2] == n, fn,
                "Vh", vh, "(B, min(m, n), n) = " + dims_str({B, k, n}));
  require_shape(in.ndim() == 1 && in.shape[0] == B, fn, "info", in, dims_str({B}));
  require(max_sweeps >= 1, fn, "max_sweeps must be >= 1, got " + std::to_string(max_sweeps));
  Backend::template svd<T>(x.as<const T>(), B, m, n, u.as<T>(), sv.as<T>(), vh.as<T>(),
                           in.as<std::int8_t>(), max_sweeps);
}

// Binds dmf_step, dmf_loss, svdvals, svd, svals_metrics, balancedness and dmf_measure on
// Backend.
template <class Backend>
void define_dmf(py::module_& m) {
  using O = const py::object&;
  m.def(
      "svd",
      [](O X, O U, O s, O Vh, O info, int max_sweeps) {
        auto f = is_f32<Backend>("svd", "X", X) ? &svd_t<Backend, float> : &svd_t<Backend, double>;
        f(X, U, s, Vh, info, max_sweeps);
      },
      py::arg("X"), py::arg("U"), py::arg("s"), py::arg("Vh"), py::arg("info"),
      py::arg("max_sweeps") = int(kMaxSweeps),
      "Writes the thin SVD X = U diag(s) Vh of X (B, m, n): U (B, m, k), s (B, k) descending, "
      "Vh (B, k, n), k = min(m, n), and a per-matrix info code as svdvals (NaN everywhere for "
      "a non-finite matrix).");
  m.def(
      "dmf_step",
      [](const py::list& factors, O target, O mask, O A, O y, O lr, std::int64_t steps, double tol,
         std::int64_t step0, O status, O frozen_at, O optimizer, O thresholds, O crossed_at,
         O snapshots) {
        auto f = factors_f32<Backend>("dmf_step", factors) ? &dmf_step_t<Backend, float>
                                                           : &dmf_step_t<Backend, double>;
        f(factors, target, mask, A, y, lr, steps, tol, step0, status, frozen_at, optimizer,
          thresholds, crossed_at, snapshots);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("lr"), py::arg("steps"), py::arg("tol"), py::arg("step0"), py::arg("status"),
      py::arg("frozen_at"), py::arg("optimizer") = py::none(), py::arg("thresholds") = py::none(),
      py::arg("crossed_at") = py::none(), py::arg("snapshots") = py::none(),
      R"doc(In place: `steps` updates of every running problem by the optimizer (None: gradient
descent, fused; else a dict of its kind, settings and state, updated in place).
Completion passes target/mask (A = y = None), sensing passes A/y (target = mask = None).
thresholds (k,) strictly decreasing, crossed_at (B, k) int64 and snapshots (one (B, k, d_j,
d_j-1) array per factor, or None) record each problem's first iterate below each threshold.)doc");
  m.def(
      "dmf_loss",
      [](const py::list& factors, O target, O mask, O A, O y, O loss, O product) {
        auto f = factors_f32<Backend>("dmf_loss", factors) ? &dmf_loss_t<Backend, float>
                                                           : &dmf_loss_t<Backend, double>;
        f(factors, target, mask, A, y, loss, product);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("loss"), py::arg("product"),
      "Writes the loss (B,) and the end-to-end product (B, m, n) of the factors.");
  m.def(
      "svdvals",
      [](O X, O s, O info, int max_sweeps) {
        auto f = is_f32<Backend>("svdvals", "X", X) ? &svdvals_t<Backend, float>
                                                    : &svdvals_t<Backend, double>;
        f(X, s, info, max_sweeps);
      },
      py::arg("X"), py::arg("s"), py::arg("info"), py::arg("max_sweeps") = int(kMaxSweeps),
      "Writes the singular values s (B, min(m, n)), descending, of X (B, m, n) and a per-matrix "
      "info code (0 ok, 1 Jacobi sweep cap reached, 2 non-finite input: NaN values).");
  m.def(
      "svals_metrics",
      [](O s, O kinds, O params, O out) {
        auto f = is_f32<Backend>("svals_metrics", "s", s) ? &svals_metrics_t<Backend, float>
                                                          : &svals_metrics_t<Backend, double>;
        f(s, kinds, params, out);
      },
      py::arg("s"), py::arg("kinds"), py::arg("params"), py::arg("out"),
      "Writes out (n, B): metric i of the singular values s (B, k) for each spec (kinds[i], "
      "params[i] = [param, rtol]; both NumPy arrays).");
  m.def(
      "balancedness",
      [](const py::list& factors, O out) {
        auto f = factors_f32<Backend>("balancedness", factors) ? &balancedness_t<Backend, float>
                                                               : &balancedness_t<Backend, double>;
        f(factors, out);
      },
      py::arg("factors"), py::arg("out"),
      "Writes out (B,): max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F.");
  m.def(
      "dmf_measure",
      [](const py::list& factors, O target, O mask, O A, O y, O kinds, O params, O out, O truth) {
        auto f = factors_f32<Backend>("dmf_measure", factors) ? &dmf_measure_t<Backend, float>
                                                              : &dmf_measure_t<Backend, double>;
        f(factors, target, mask, A, y, kinds, params, out, truth);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("kinds"), py::arg("params"), py::arg("out"), py::arg("truth") = py::none(),
      "Writes every requested metric of the factors into out (rows, B), one row per spec "
      "(min(m, n) rows for svals), from one product and one SVD per problem; truth (B|1, m, n) "
      "for recon_error; kinds and params are NumPy arrays.");
}

}  // namespace bindings
}  // namespace implicitreg
