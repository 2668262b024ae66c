// _cuda: the CUDA kernels on device arrays (CuPy, or anything with __cuda_array_interface__),
// with the same functions and arguments as _core so that ops.py routes by array kind alone.
// Every call runs on CuPy's current stream and returns without waiting. The module imports on
// machines without a GPU or driver and then reports "no device".
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "implicitreg/cuda_info.h"
#include "implicitreg/dmf_step.h"
#include "implicitreg/metrics.h"

namespace py = pybind11;
namespace ir = implicitreg;

namespace {

void require(bool ok, const std::string& fn, const std::string& msg) {
  if (!ok) throw std::invalid_argument(fn + ": " + msg);
}

template <class T>
const char* typestr();
template <>
const char* typestr<float>() {
  return "<f4";
}
template <>
const char* typestr<double>() {
  return "<f8";
}
template <>
const char* typestr<std::int8_t>() {
  return "|i1";
}
template <>
const char* typestr<std::int32_t>() {
  return "<i4";
}
template <>
const char* typestr<std::int64_t>() {
  return "<i8";
}
template <>
const char* typestr<bool>() {
  return "|b1";
}

// A device array read through __cuda_array_interface__ (C-contiguous only).
struct Dev {
  std::uintptr_t ptr = 0;
  std::vector<std::int64_t> shape;
  std::string typestr;
  bool readonly = false;
  int ndim() const { return int(shape.size()); }
};

Dev dev(const std::string& fn, const char* name, const py::handle& a) {
  if (!py::hasattr(a, "__cuda_array_interface__"))
    throw py::type_error(fn + ": " + name + " must be a device array (CuPy), got " +
                         std::string(py::str(py::type::of(a).attr("__name__"))));
  py::dict cai = a.attr("__cuda_array_interface__");
  Dev d;
  for (auto s : cai["shape"].cast<py::tuple>()) d.shape.push_back(s.cast<std::int64_t>());
  d.typestr = cai["typestr"].cast<std::string>();
  py::tuple data = cai["data"].cast<py::tuple>();
  d.ptr = data[0].cast<std::uintptr_t>();
  d.readonly = data[1].cast<bool>();
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const std::int64_t item = std::stoll(d.typestr.substr(2));
    std::int64_t expect = item;
    py::tuple strides = cai["strides"].cast<py::tuple>();
    for (int i = d.ndim() - 1; i >= 0; --i) {
      require(d.shape[i] <= 1 || strides[i].cast<std::int64_t>() == expect, fn,
              std::string(name) + " must be C-contiguous");
      expect *= d.shape[i];
    }
  }
  return d;
}

template <class T>
Dev dev_of(const std::string& fn, const char* name, const py::handle& a, bool writable) {
  Dev d = dev(fn, name, a);
  require(d.typestr == typestr<T>(), fn,
          std::string(name) + " must have typestr " + typestr<T>() + ", got " + d.typestr);
  require(!writable || !d.readonly, fn, std::string(name) + " must be writable");
  return d;
}

template <class T>
T* ptr(const Dev& d) {
  return reinterpret_cast<T*>(d.ptr);
}

void* current_stream() {
#ifdef IR_CUDA_EMULATION
  return nullptr;  // the emulated device has one implicit stream
#else
  return reinterpret_cast<void*>(py::module_::import("cupy.cuda")
                                     .attr("get_current_stream")()
                                     .attr("ptr")
                                     .cast<std::uintptr_t>());
#endif
}

template <class T>
struct Batch {
  std::vector<T*> factors;
  std::vector<int> dims;
  ir::DmfShape shape{};
  ir::DmfProblem<T> problem{};
};

template <class T>
Batch<T> make_factors(const std::string& fn, const py::list& factors, bool writable) {
  Batch<T> b;
  const int depth = int(factors.size());
  require(depth >= 1 && depth <= ir::cuda::kMaxDepth, fn,
          "need 1.." + std::to_string(ir::cuda::kMaxDepth) + " factors");
  std::int64_t batch = -1;
  for (int j = 0; j < depth; ++j) {
    Dev W = dev_of<T>(fn, "factors", factors[j], writable);
    require(W.ndim() == 3, fn, "factor " + std::to_string(j) + " must be 3-d (B, d_j, d_j-1)");
    if (j == 0) {
      batch = W.shape[0];
      b.dims.push_back(int(W.shape[2]));
    }
    require(W.shape[0] == batch && W.shape[2] == b.dims.back(), fn,
            "factor " + std::to_string(j) + " does not chain with the previous one");
    b.dims.push_back(int(W.shape[1]));
    b.factors.push_back(ptr<T>(W));
  }
  b.shape = {batch, depth, nullptr};
  return b;
}

template <class T>
Batch<T> make_batch(const std::string& fn, const py::list& factors, const py::object& target,
                    const py::object& mask, const py::object& A, const py::object& y,
                    bool writable) {
  Batch<T> b = make_factors<T>(fn, factors, writable);
  const std::int64_t batch = b.shape.batch, m = b.dims.back(), n = b.dims.front();
  auto stride = [&](const Dev& a, std::int64_t per) {
    require(a.shape[0] == batch || a.shape[0] == 1, fn, "problem batch must be 1 or B");
    return a.shape[0] == 1 ? std::int64_t(0) : per;
  };
  if (!target.is_none()) {
    Dev t = dev_of<T>(fn, "target", target, false), mk = dev_of<bool>(fn, "mask", mask, false);
    require(t.ndim() == 3 && t.shape[1] == m && t.shape[2] == n, fn, "target must be (B, m, n)");
    require(mk.ndim() == 3 && mk.shape[1] == m && mk.shape[2] == n, fn, "mask must be (B, m, n)");
    b.problem.target = ptr<const T>(t);
    b.problem.mask = ptr<const std::uint8_t>(mk);
    b.problem.target_stride = stride(t, m * n);
    b.problem.mask_stride = stride(mk, m * n);
  } else {
    Dev a = dev_of<T>(fn, "A", A, false), yy = dev_of<T>(fn, "y", y, false);
    require(a.ndim() == 4 && a.shape[2] == m && a.shape[3] == n, fn, "A must be (B, K, m, n)");
    require(yy.ndim() == 2 && yy.shape[1] == a.shape[1], fn, "y must be (B, K)");
    b.problem.sensing = true;
    b.problem.K = int(a.shape[1]);
    b.problem.A = ptr<const T>(a);
    b.problem.y = ptr<const T>(yy);
    b.problem.A_stride = stride(a, a.shape[1] * m * n);
    b.problem.y_stride = stride(yy, a.shape[1]);
  }
  return b;
}

bool is_f32(const py::handle& a, const std::string& fn, const char* name) {
  const std::string t = dev(fn, name, a).typestr;
  if (t == "<f4") return true;
  if (t == "<f8") return false;
  throw py::type_error(fn + ": " + name + " must be float32 or float64, got typestr " + t);
}

bool factors_f32(const py::list& factors, const std::string& fn) {
  require(!factors.empty(), fn, "need at least one factor");
  return is_f32(factors[0], fn, "factors");
}

// Metric specs from host arrays kinds (n,) int32 and params (n, 2) float64 [param, rtol].
std::vector<ir::MetricSpec> make_specs(const std::string& fn,
                                       const py::array_t<std::int32_t>& kinds,
                                       const py::array_t<double>& params) {
  const std::int64_t n = kinds.ndim() == 1 ? kinds.shape(0) : -1;
  require(n >= 0 && params.ndim() == 2 && params.shape(0) == n && params.shape(1) == 2, fn,
          "kinds must be (n,) and params (n, 2)");
  std::vector<ir::MetricSpec> specs;
  for (std::int64_t i = 0; i < n; ++i) {
    require(kinds.at(i) >= ir::kLoss && kinds.at(i) <= ir::kReconError, fn, "unknown metric kind");
    specs.push_back({kinds.at(i), params.at(i, 0), params.at(i, 1)});
  }
  return specs;
}

template <class T>
void dmf_step_t(const py::list& factors, const py::object& target, const py::object& mask,
                const py::object& A, const py::object& y, const py::object& lr, std::int64_t steps,
                double tol, std::int64_t step0, const py::object& status,
                const py::object& frozen_at, const py::object& thresholds,
                const py::object& crossed_at, const py::object& snapshots) {
  const std::string fn = "dmf_step";
  Batch<T> b = make_batch<T>(fn, factors, target, mask, A, y, true);
  b.shape.dims = b.dims.data();
  const std::int64_t B = b.shape.batch;
  Dev l = dev_of<T>(fn, "lr", lr, false);
  Dev st = dev_of<std::int8_t>(fn, "status", status, true);
  Dev fz = dev_of<std::int64_t>(fn, "frozen_at", frozen_at, true);
  require(l.ndim() == 1 && (l.shape[0] == B || l.shape[0] == 1), fn, "lr must be (B,) or (1,)");
  require(st.ndim() == 1 && st.shape[0] == B, fn, "status must be (B,)");
  require(fz.ndim() == 1 && fz.shape[0] == B, fn, "frozen_at must be (B,)");
  require(steps >= 0, fn, "steps must be >= 0");
  ir::DmfCrossings<T> cr;
  std::vector<T*> snaps;
  if (!thresholds.is_none()) {
    Dev thr = dev_of<T>(fn, "thresholds", thresholds, false);
    Dev at = dev_of<std::int64_t>(fn, "crossed_at", crossed_at, true);
    require(thr.ndim() == 1, fn, "thresholds must be 1-d");
    cr.count = int(thr.shape[0]);
    require(at.ndim() == 2 && at.shape[0] == B && at.shape[1] == cr.count, fn,
            "crossed_at must be (B, len(thresholds))");
    cr.thresholds = ptr<const T>(thr);
    cr.step = ptr<std::int64_t>(at);
    if (!snapshots.is_none()) {
      py::list sl = snapshots.cast<py::list>();
      require(sl.size() == b.factors.size(), fn, "snapshots must hold one array per factor");
      for (std::size_t j = 0; j < sl.size(); ++j) {
        Dev s = dev_of<T>(fn, "snapshots", sl[j], true);
        require(s.ndim() == 4 && s.shape[0] == B && s.shape[1] == cr.count &&
                    s.shape[2] == b.dims[j + 1] && s.shape[3] == b.dims[j],
                fn, "snapshot " + std::to_string(j) + " must be (B, len(thresholds), d_j, d_j-1)");
        snaps.push_back(ptr<T>(s));
      }
      cr.snapshots = snaps.data();
    }
  }
  ir::cuda::dmf_step<T>(b.factors.data(), b.shape, b.problem, ptr<const T>(l),
                        l.shape[0] == 1 ? 0 : 1, steps, T(tol), step0, ptr<std::int8_t>(st),
                        ptr<std::int64_t>(fz), cr, current_stream());
}

template <class T>
void dmf_loss_t(const py::list& factors, const py::object& target, const py::object& mask,
                const py::object& A, const py::object& y, const py::object& loss,
                const py::object& product) {
  const std::string fn = "dmf_loss";
  Batch<T> b = make_batch<T>(fn, factors, target, mask, A, y, false);
  b.shape.dims = b.dims.data();
  Dev lo = dev_of<T>(fn, "loss", loss, true), pr = dev_of<T>(fn, "product", product, true);
  require(lo.ndim() == 1 && lo.shape[0] == b.shape.batch, fn, "loss must be (B,)");
  require(pr.ndim() == 3 && pr.shape[0] == b.shape.batch && pr.shape[1] == b.dims.back() &&
              pr.shape[2] == b.dims.front(),
          fn, "product must be (B, m, n)");
  std::vector<const T*> cf(b.factors.begin(), b.factors.end());
  ir::cuda::dmf_loss<T>(cf.data(), b.shape, b.problem, ptr<T>(lo), ptr<T>(pr), current_stream());
}

template <class T>
void svdvals_t(const py::object& X, const py::object& s, const py::object& info, int max_sweeps) {
  const std::string fn = "svdvals";
  Dev x = dev_of<T>(fn, "X", X, false), sv = dev_of<T>(fn, "s", s, true);
  Dev in = dev_of<std::int8_t>(fn, "info", info, true);
  require(x.ndim() == 3, fn, "X must be (B, m, n)");
  const std::int64_t B = x.shape[0];
  const int m = int(x.shape[1]), n = int(x.shape[2]);
  require(sv.ndim() == 2 && sv.shape[0] == B && sv.shape[1] == std::min(m, n), fn,
          "s must be (B, min(m, n))");
  require(in.ndim() == 1 && in.shape[0] == B, fn, "info must be (B,)");
  require(max_sweeps >= 1, fn, "max_sweeps must be >= 1");
  ir::cuda::svdvals<T>(ptr<const T>(x), B, m, n, ptr<T>(sv), ptr<std::int8_t>(in), max_sweeps,
                       current_stream());
}

template <class T>
void svals_metrics_t(const py::object& s, const py::array_t<std::int32_t>& kinds,
                     const py::array_t<double>& params, const py::object& out) {
  const std::string fn = "svals_metrics";
  Dev sv = dev_of<T>(fn, "s", s, false), o = dev_of<double>(fn, "out", out, true);
  std::vector<ir::MetricSpec> specs = make_specs(fn, kinds, params);
  for (const auto& sp : specs)
    require(sp.kind >= ir::kFro && sp.kind <= ir::kDistRank, fn,
            "only singular-value metrics (fro ... dist_rank)");
  require(sv.ndim() == 2, fn, "s must be (B, k)");
  const std::int64_t B = sv.shape[0];
  require(o.ndim() == 2 && o.shape[0] == std::int64_t(specs.size()) && o.shape[1] == B, fn,
          "out must be (n, B)");
  ir::cuda::svals_metrics<T>(ptr<const T>(sv), B, int(sv.shape[1]), specs.data(), int(specs.size()),
                             ptr<double>(o), current_stream());
}

template <class T>
void balancedness_t(const py::list& factors, const py::object& out) {
  const std::string fn = "balancedness";
  Batch<T> b = make_factors<T>(fn, factors, false);
  b.shape.dims = b.dims.data();
  Dev o = dev_of<double>(fn, "out", out, true);
  require(o.ndim() == 1 && o.shape[0] == b.shape.batch, fn, "out must be (B,)");
  std::vector<const T*> cf(b.factors.begin(), b.factors.end());
  ir::cuda::balancedness<T>(cf.data(), b.shape, ptr<double>(o), current_stream());
}

template <class T>
void dmf_measure_t(const py::list& factors, const py::object& target, const py::object& mask,
                   const py::object& A, const py::object& y, const py::array_t<std::int32_t>& kinds,
                   const py::array_t<double>& params, const py::object& out,
                   const py::object& truth) {
  const std::string fn = "dmf_measure";
  Batch<T> b = make_batch<T>(fn, factors, target, mask, A, y, false);
  b.shape.dims = b.dims.data();
  std::vector<ir::MetricSpec> specs = make_specs(fn, kinds, params);
  const int m = b.dims.back(), n = b.dims.front();
  std::int64_t rows = 0;
  for (const auto& sp : specs) {
    rows += sp.kind == ir::kSvals ? std::min(m, n) : 1;
    require(sp.kind != ir::kEntry || (sp.param >= 0 && sp.param < double(m) * n), fn,
            "entry index out of range");
    require(sp.kind != ir::kDet || m == n, fn, "det needs a square problem");
    require(sp.kind != ir::kReconError || !truth.is_none(), fn, "recon_error needs truth");
  }
  const T* tp = nullptr;
  std::int64_t truth_stride = 0;
  if (!truth.is_none()) {
    Dev t = dev_of<T>(fn, "truth", truth, false);
    require(t.ndim() == 3 && (t.shape[0] == b.shape.batch || t.shape[0] == 1) && t.shape[1] == m &&
                t.shape[2] == n,
            fn, "truth must be (B, m, n) or (1, m, n)");
    tp = ptr<const T>(t);
    truth_stride = t.shape[0] == 1 ? 0 : std::int64_t(m) * n;
  }
  Dev o = dev_of<double>(fn, "out", out, true);
  require(o.ndim() == 2 && o.shape[0] == rows && o.shape[1] == b.shape.batch, fn,
          "out must be (rows, B)");
  std::vector<const T*> cf(b.factors.begin(), b.factors.end());
  ir::cuda::dmf_measure<T>(cf.data(), b.shape, b.problem, specs.data(), int(specs.size()),
                           ptr<double>(o), tp, truth_stride, current_stream());
}

void define(py::module_& m) {
  m.def("device_count", []() { return implicitreg::cuda::device_info().device_count; });
  m.def("device_info", []() {
    const auto info = implicitreg::cuda::device_info();
    py::dict d;
    d["cuda_archs"] = info.archs;
    d["cuda_compiler"] = info.compiler_version;
    d["cuda_runtime_version"] = info.runtime_version;
    d["cuda_driver_version"] = info.driver_version;
    d["cuda_device_count"] = info.device_count;
    d["cuda_device_error"] = info.error;
    py::list devs;
    for (const auto& dev : info.devices) {
      py::dict x;
      x["name"] = dev.name;
      x["compute_capability"] = dev.compute_capability;
      x["total_memory"] = dev.total_memory;
      devs.append(x);
    }
    d["cuda_devices"] = devs;
    return d;
  });

  m.def(
      "dmf_step",
      [](const py::list& factors, const py::object& target, const py::object& mask,
         const py::object& A, const py::object& y, const py::object& lr, std::int64_t steps,
         double tol, std::int64_t step0, const py::object& status, const py::object& frozen_at,
         const py::object& thresholds, const py::object& crossed_at, const py::object& snapshots) {
        if (factors_f32(factors, "dmf_step"))
          return dmf_step_t<float>(factors, target, mask, A, y, lr, steps, tol, step0, status,
                                   frozen_at, thresholds, crossed_at, snapshots);
        return dmf_step_t<double>(factors, target, mask, A, y, lr, steps, tol, step0, status,
                                  frozen_at, thresholds, crossed_at, snapshots);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("lr"), py::arg("steps"), py::arg("tol"), py::arg("step0"), py::arg("status"),
      py::arg("frozen_at"), py::arg("thresholds") = py::none(), py::arg("crossed_at") = py::none(),
      py::arg("snapshots") = py::none(),
      "_core.dmf_step on device arrays, on CuPy's current stream.");
  m.def(
      "dmf_loss",
      [](const py::list& factors, const py::object& target, const py::object& mask,
         const py::object& A, const py::object& y, const py::object& loss,
         const py::object& product) {
        if (factors_f32(factors, "dmf_loss"))
          return dmf_loss_t<float>(factors, target, mask, A, y, loss, product);
        return dmf_loss_t<double>(factors, target, mask, A, y, loss, product);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("loss"), py::arg("product"), "_core.dmf_loss on device arrays.");
  m.def(
      "svdvals",
      [](const py::object& X, const py::object& s, const py::object& info, int max_sweeps) {
        if (is_f32(X, "svdvals", "X")) return svdvals_t<float>(X, s, info, max_sweeps);
        return svdvals_t<double>(X, s, info, max_sweeps);
      },
      py::arg("X"), py::arg("s"), py::arg("info"), py::arg("max_sweeps") = int(ir::kMaxSweeps),
      "_core.svdvals on device arrays.");
  m.def(
      "svals_metrics",
      [](const py::object& s, const py::array_t<std::int32_t>& kinds,
         const py::array_t<double>& params, const py::object& out) {
        if (is_f32(s, "svals_metrics", "s")) return svals_metrics_t<float>(s, kinds, params, out);
        return svals_metrics_t<double>(s, kinds, params, out);
      },
      py::arg("s"), py::arg("kinds"), py::arg("params"), py::arg("out"),
      "_core.svals_metrics on device arrays (kinds and params on the host).");
  m.def(
      "balancedness",
      [](const py::list& factors, const py::object& out) {
        if (factors_f32(factors, "balancedness")) return balancedness_t<float>(factors, out);
        return balancedness_t<double>(factors, out);
      },
      py::arg("factors"), py::arg("out"), "_core.balancedness on device arrays.");
  m.def(
      "dmf_measure",
      [](const py::list& factors, const py::object& target, const py::object& mask,
         const py::object& A, const py::object& y, const py::array_t<std::int32_t>& kinds,
         const py::array_t<double>& params, const py::object& out, const py::object& truth) {
        if (factors_f32(factors, "dmf_measure"))
          return dmf_measure_t<float>(factors, target, mask, A, y, kinds, params, out, truth);
        return dmf_measure_t<double>(factors, target, mask, A, y, kinds, params, out, truth);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("kinds"), py::arg("params"), py::arg("out"), py::arg("truth") = py::none(),
      "_core.dmf_measure on device arrays (kinds and params on the host).");
}

}  // namespace

// _cuda_emulated is this module with the kernels run on the CPU (cuda/emulation.h), for tests
// where there is no GPU.
#ifdef IR_CUDA_EMULATION
PYBIND11_MODULE(_cuda_emulated, m) {
  m.doc() = "implicitreg CUDA backend emulated on the CPU (for tests): _cuda's functions";
  define(m);
}
#else
PYBIND11_MODULE(_cuda, m) {
  m.doc() = "implicitreg CUDA backend: the kernels of _core on device (CuPy) arrays";
  define(m);
}
#endif
