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
#include <utility>
#include <vector>

#include "implicitreg/dmf_step.h"
#include "implicitreg/metrics.h"

namespace implicitreg {
namespace bindings {

namespace py = pybind11;

inline void require(bool ok, const std::string& fn, const std::string& msg) {
  if (!ok) throw std::invalid_argument(fn + ": " + msg);
}

inline std::string type_name(const py::handle& h) {
  return py::str(py::type::of(h).attr("__name__")).cast<std::string>();
}

// An array as the kernels see it: where it is, its shape, NumPy's name of its dtype.
struct View {
  void* ptr = nullptr;
  std::vector<std::int64_t> shape;
  std::string dtype;
  bool writable = false;
  int ndim() const { return int(shape.size()); }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

template <class T>
const char* dtype_name();
template <>
inline const char* dtype_name<float>() {
  return "float32";
}
template <>
inline const char* dtype_name<double>() {
  return "float64";
}
template <>
inline const char* dtype_name<std::int8_t>() {
  return "int8";
}
template <>
inline const char* dtype_name<std::int32_t>() {
  return "int32";
}
template <>
inline const char* dtype_name<std::int64_t>() {
  return "int64";
}
template <>
inline const char* dtype_name<bool>() {
  return "bool";
}

// A NumPy array, C-contiguous.
inline View host_view(const std::string& fn, const char* name, const py::handle& h) {
  if (!py::isinstance<py::array>(h))
    throw py::type_error(fn + ": " + name + " must be a NumPy array, got " + type_name(h));
  auto a = py::reinterpret_borrow<py::array>(h);
  require(a.flags() & py::array::c_style, fn, std::string(name) + " must be C-contiguous");
  View v;
  v.ptr = const_cast<void*>(a.data());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) v.shape.push_back(a.shape(i));
  v.dtype = py::str(a.dtype()).cast<std::string>();
  v.writable = a.writeable();
  return v;
}

// A device array (CuPy, or anything with __cuda_array_interface__), C-contiguous.
inline View device_view(const std::string& fn, const char* name, const py::handle& h) {
  if (!py::hasattr(h, "__cuda_array_interface__"))
    throw py::type_error(fn + ": " + name + " must be a device array (CuPy), got " + type_name(h));
  py::dict cai = h.attr("__cuda_array_interface__");
  View v;
  for (auto s : cai["shape"].cast<py::tuple>()) v.shape.push_back(s.cast<std::int64_t>());
  const std::string ts = cai["typestr"].cast<std::string>();
  static const std::pair<const char*, const char*> kNames[] = {
      {"<f4", "float32"}, {"<f8", "float64"}, {"|i1", "int8"},
      {"<i4", "int32"},   {"<i8", "int64"},   {"|b1", "bool"}};
  v.dtype = "typestr " + ts;
  for (const auto& [t, n] : kNames)
    if (ts == t) v.dtype = n;
  py::tuple data = cai["data"].cast<py::tuple>();
  v.ptr = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
  v.writable = !data[1].cast<bool>();
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    std::int64_t expect = std::stoll(ts.substr(2));  // the item size
    py::tuple strides = cai["strides"].cast<py::tuple>();
    for (int i = v.ndim() - 1; i >= 0; --i) {
      require(v.shape[i] <= 1 || strides[i].cast<std::int64_t>() == expect, fn,
              std::string(name) + " must be C-contiguous");
      expect *= v.shape[i];
    }
  }
  return v;
}

// The Backend's view of h, with dtype T (and writable when asked).
template <class Backend, class T>
View checked(const std::string& fn, const char* name, const py::handle& h, bool writable) {
  View v = Backend::view(fn, name, h);
  if (v.dtype != dtype_name<T>())
    throw py::type_error(fn + ": " + name + " must have dtype " + dtype_name<T>() + ", got " +
                         v.dtype);
  require(!writable || v.writable, fn, std::string(name) + " must be writable");
  return v;
}

// True for float32, false for float64; TypeError for anything else.
template <class Backend>
bool is_f32(const std::string& fn, const char* name, const py::handle& h) {
  const std::string dt = Backend::view(fn, name, h).dtype;
  if (dt == "float32") return true;
  if (dt == "float64") return false;
  throw py::type_error(fn + ": " + name + " must be float32 or float64, got " + dt);
}

template <class Backend>
bool factors_f32(const std::string& fn, const py::list& factors) {
  require(!factors.empty(), fn, "need at least one factor");
  return is_f32<Backend>(fn, "factors", factors[0]);
}

// Factors, dims and problem description shared by the DMF functions.
template <class T>
struct Batch {
  std::vector<T*> factors;
  std::vector<int> dims;
  DmfShape shape{};
  DmfProblem<T> problem{};
  std::vector<const T*> const_factors() const { return {factors.begin(), factors.end()}; }
};

// The factors of a batch, checked to chain: W_j of shape (B, d_j, d_{j-1}).
template <class Backend, class T>
Batch<T> make_factors(const std::string& fn, const py::list& factors, bool writable) {
  Batch<T> b;
  const int depth = int(factors.size());
  require(depth >= 1 && depth <= Backend::kMaxDepth, fn,
          "need 1.." + std::to_string(Backend::kMaxDepth) + " factors");
  std::int64_t batch = -1;
  for (int j = 0; j < depth; ++j) {
    View W = checked<Backend, T>(fn, "factors", factors[j], writable);
    require(W.ndim() == 3, fn, "factor " + std::to_string(j) + " must be 3-d (B, d_j, d_j-1)");
    if (j == 0) {
      batch = W.shape[0];
      b.dims.push_back(int(W.shape[2]));
    }
    require(W.shape[0] == batch && W.shape[2] == b.dims.back(), fn,
            "factor " + std::to_string(j) + " does not chain with the previous one");
    b.dims.push_back(int(W.shape[1]));
    b.factors.push_back(W.as<T>());
  }
  b.shape = {batch, depth, nullptr};
  return b;
}

// Factors and problem data: completion passes target/mask (A = y = None), sensing A/y.
// shape.dims points into the returned Batch: use it where it was returned.
template <class Backend, class T>
Batch<T> make_batch(const std::string& fn, const py::list& factors, const py::object& target,
                    const py::object& mask, const py::object& A, const py::object& y,
                    bool writable) {
  Batch<T> b = make_factors<Backend, T>(fn, factors, writable);
  const std::int64_t batch = b.shape.batch, m = b.dims.back(), n = b.dims.front();
  auto stride = [&](const View& a, std::int64_t per) {
    require(a.shape[0] == batch || a.shape[0] == 1, fn, "problem batch must be 1 or B");
    return a.shape[0] == 1 ? std::int64_t(0) : per;
  };
  if (!target.is_none()) {
    View t = checked<Backend, T>(fn, "target", target, false);
    View mk = checked<Backend, bool>(fn, "mask", mask, false);
    require(t.ndim() == 3 && t.shape[1] == m && t.shape[2] == n, fn, "target must be (B, m, n)");
    require(mk.ndim() == 3 && mk.shape[1] == m && mk.shape[2] == n, fn, "mask must be (B, m, n)");
    b.problem.target = t.as<const T>();
    b.problem.mask = mk.as<const std::uint8_t>();
    b.problem.target_stride = stride(t, m * n);
    b.problem.mask_stride = stride(mk, m * n);
  } else {
    View a = checked<Backend, T>(fn, "A", A, false), yy = checked<Backend, T>(fn, "y", y, false);
    require(a.ndim() == 4 && a.shape[2] == m && a.shape[3] == n, fn, "A must be (B, K, m, n)");
    require(yy.ndim() == 2 && yy.shape[1] == a.shape[1], fn, "y must be (B, K)");
    b.problem.sensing = true;
    b.problem.K = int(a.shape[1]);
    b.problem.A = a.as<const T>();
    b.problem.y = yy.as<const T>();
    b.problem.A_stride = stride(a, a.shape[1] * m * n);
    b.problem.y_stride = stride(yy, a.shape[1]);
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
  const std::int64_t n = k.ndim() == 1 ? k.shape[0] : -1;
  require(n >= 0 && p.ndim() == 2 && p.shape[0] == n && p.shape[1] == 2, fn,
          "kinds must be (n,) and params (n, 2)");
  const auto* kp = k.as<const std::int32_t>();
  const auto* pp = p.as<const double>();
  std::vector<MetricSpec> specs;
  for (std::int64_t i = 0; i < n; ++i) {
    require(kp[i] >= kLoss && kp[i] <= kReconError, fn, "unknown metric kind");
    specs.push_back({kp[i], pp[2 * i], pp[2 * i + 1]});
  }
  return specs;
}

template <class Backend, class T>
void dmf_step_t(const py::list& factors, const py::object& target, const py::object& mask,
                const py::object& A, const py::object& y, const py::object& lr, std::int64_t steps,
                double tol, std::int64_t step0, const py::object& status,
                const py::object& frozen_at, const py::object& thresholds,
                const py::object& crossed_at, const py::object& snapshots) {
  const std::string fn = "dmf_step";
  Batch<T> b = make_batch<Backend, T>(fn, factors, target, mask, A, y, true);
  b.shape.dims = b.dims.data();
  const std::int64_t B = b.shape.batch;
  View l = checked<Backend, T>(fn, "lr", lr, false);
  View st = checked<Backend, std::int8_t>(fn, "status", status, true);
  View fz = checked<Backend, std::int64_t>(fn, "frozen_at", frozen_at, true);
  require(l.ndim() == 1 && (l.shape[0] == B || l.shape[0] == 1), fn, "lr must be (B,) or (1,)");
  require(st.ndim() == 1 && st.shape[0] == B, fn, "status must be (B,)");
  require(fz.ndim() == 1 && fz.shape[0] == B, fn, "frozen_at must be (B,)");
  require(steps >= 0, fn, "steps must be >= 0");
  DmfCrossings<T> cr;
  std::vector<T*> snaps;
  if (!thresholds.is_none()) {
    View thr = checked<Backend, T>(fn, "thresholds", thresholds, false);
    View at = checked<Backend, std::int64_t>(fn, "crossed_at", crossed_at, true);
    require(thr.ndim() == 1, fn, "thresholds must be 1-d");
    cr.count = int(thr.shape[0]);
    require(at.ndim() == 2 && at.shape[0] == B && at.shape[1] == cr.count, fn,
            "crossed_at must be (B, len(thresholds))");
    cr.thresholds = thr.as<const T>();
    cr.step = at.as<std::int64_t>();
    if (!snapshots.is_none()) {
      py::list sl = snapshots.cast<py::list>();
      require(sl.size() == b.factors.size(), fn, "snapshots must hold one array per factor");
      for (std::size_t j = 0; j < sl.size(); ++j) {
        View s = checked<Backend, T>(fn, "snapshots", sl[j], true);
        require(s.ndim() == 4 && s.shape[0] == B && s.shape[1] == cr.count &&
                    s.shape[2] == b.dims[j + 1] && s.shape[3] == b.dims[j],
                fn, "snapshot " + std::to_string(j) + " must be (B, len(thresholds), d_j, d_j-1)");
        snaps.push_back(s.as<T>());
      }
      cr.snapshots = snaps.data();
    }
  }
  Backend::template dmf_step<T>(b.factors.data(), b.shape, b.problem, l.as<const T>(),
                                l.shape[0] == 1 ? 0 : 1, steps, T(tol), step0, st.as<std::int8_t>(),
                                fz.as<std::int64_t>(), cr);
}

template <class Backend, class T>
void dmf_loss_t(const py::list& factors, const py::object& target, const py::object& mask,
                const py::object& A, const py::object& y, const py::object& loss,
                const py::object& product) {
  const std::string fn = "dmf_loss";
  Batch<T> b = make_batch<Backend, T>(fn, factors, target, mask, A, y, false);
  b.shape.dims = b.dims.data();
  View lo = checked<Backend, T>(fn, "loss", loss, true);
  View pr = checked<Backend, T>(fn, "product", product, true);
  require(lo.ndim() == 1 && lo.shape[0] == b.shape.batch, fn, "loss must be (B,)");
  require(pr.ndim() == 3 && pr.shape[0] == b.shape.batch && pr.shape[1] == b.dims.back() &&
              pr.shape[2] == b.dims.front(),
          fn, "product must be (B, m, n)");
  Backend::template dmf_loss<T>(b.const_factors().data(), b.shape, b.problem, lo.as<T>(),
                                pr.as<T>());
}

template <class Backend, class T>
void svdvals_t(const py::object& X, const py::object& s, const py::object& info, int max_sweeps) {
  const std::string fn = "svdvals";
  View x = checked<Backend, T>(fn, "X", X, false), sv = checked<Backend, T>(fn, "s", s, true);
  View in = checked<Backend, std::int8_t>(fn, "info", info, true);
  require(x.ndim() == 3, fn, "X must be (B, m, n)");
  const std::int64_t B = x.shape[0];
  const int m = int(x.shape[1]), n = int(x.shape[2]);
  require(sv.ndim() == 2 && sv.shape[0] == B && sv.shape[1] == std::min(m, n), fn,
          "s must be (B, min(m, n))");
  require(in.ndim() == 1 && in.shape[0] == B, fn, "info must be (B,)");
  require(max_sweeps >= 1, fn, "max_sweeps must be >= 1");
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
            "only singular-value metrics (fro ... dist_rank)");
  require(sv.ndim() == 2, fn, "s must be (B, k)");
  const std::int64_t B = sv.shape[0];
  require(o.ndim() == 2 && o.shape[0] == std::int64_t(specs.size()) && o.shape[1] == B, fn,
          "out must be (n, B)");
  Backend::template svals_metrics<T>(sv.as<const T>(), B, int(sv.shape[1]), specs.data(),
                                     int(specs.size()), o.as<double>());
}

template <class Backend, class T>
void balancedness_t(const py::list& factors, const py::object& out) {
  const std::string fn = "balancedness";
  Batch<T> b = make_factors<Backend, T>(fn, factors, false);
  b.shape.dims = b.dims.data();
  View o = checked<Backend, double>(fn, "out", out, true);
  require(o.ndim() == 1 && o.shape[0] == b.shape.batch, fn, "out must be (B,)");
  Backend::template balancedness<T>(b.const_factors().data(), b.shape, o.as<double>());
}

template <class Backend, class T>
void dmf_measure_t(const py::list& factors, const py::object& target, const py::object& mask,
                   const py::object& A, const py::object& y, const py::object& kinds,
                   const py::object& params, const py::object& out, const py::object& truth) {
  const std::string fn = "dmf_measure";
  Batch<T> b = make_batch<Backend, T>(fn, factors, target, mask, A, y, false);
  b.shape.dims = b.dims.data();
  std::vector<MetricSpec> specs = make_specs(fn, kinds, params);
  const int m = b.dims.back(), n = b.dims.front();
  std::int64_t rows = 0;
  for (const auto& sp : specs) {
    rows += sp.kind == kSvals ? std::min(m, n) : 1;
    require(sp.kind != kEntry || (sp.param >= 0 && sp.param < double(m) * n), fn,
            "entry index out of range");
    require(sp.kind != kDet || m == n, fn, "det needs a square problem");
    require(sp.kind != kReconError || !truth.is_none(), fn, "recon_error needs truth");
  }
  const T* tp = nullptr;
  std::int64_t truth_stride = 0;
  if (!truth.is_none()) {
    View t = checked<Backend, T>(fn, "truth", truth, false);
    require(t.ndim() == 3 && (t.shape[0] == b.shape.batch || t.shape[0] == 1) && t.shape[1] == m &&
                t.shape[2] == n,
            fn, "truth must be (B, m, n) or (1, m, n)");
    tp = t.as<const T>();
    truth_stride = t.shape[0] == 1 ? 0 : std::int64_t(m) * n;
  }
  View o = checked<Backend, double>(fn, "out", out, true);
  require(o.ndim() == 2 && o.shape[0] == rows && o.shape[1] == b.shape.batch, fn,
          "out must be (rows, B)");
  Backend::template dmf_measure<T>(b.const_factors().data(), b.shape, b.problem, specs.data(),
                                   int(specs.size()), o.as<double>(), tp, truth_stride);
}

// Binds dmf_step, dmf_loss, svdvals, svals_metrics, balancedness and dmf_measure on Backend.
template <class Backend>
void define_dmf(py::module_& m) {
  using O = const py::object&;
  m.def(
      "dmf_step",
      [](const py::list& factors, O target, O mask, O A, O y, O lr, std::int64_t steps, double tol,
         std::int64_t step0, O status, O frozen_at, O thresholds, O crossed_at, O snapshots) {
        auto f = factors_f32<Backend>("dmf_step", factors) ? &dmf_step_t<Backend, float>
                                                           : &dmf_step_t<Backend, double>;
        f(factors, target, mask, A, y, lr, steps, tol, step0, status, frozen_at, thresholds,
          crossed_at, snapshots);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("lr"), py::arg("steps"), py::arg("tol"), py::arg("step0"), py::arg("status"),
      py::arg("frozen_at"), py::arg("thresholds") = py::none(), py::arg("crossed_at") = py::none(),
      py::arg("snapshots") = py::none(),
      R"doc(In place: `steps` fused gradient-descent updates of every running problem.
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
