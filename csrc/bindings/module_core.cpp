// _core: the CPU kernels on NumPy arrays. Python (ops.py) validates and allocates; this layer
// only re-checks what would make C++ misread memory (dtype, contiguity, writability, sizes),
// dispatches on dtype and releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "implicitreg/cp_step.h"
#include "implicitreg/dmf_step.h"
#include "implicitreg/metrics.h"

namespace py = pybind11;
namespace ir = implicitreg;

namespace {

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

void require(bool ok, const std::string& fn, const std::string& msg) {
  if (!ok) throw std::invalid_argument(fn + ": " + msg);
}

template <class T>
void require_array(const std::string& fn, const char* name, const py::array& a, bool writable) {
  if (!py::isinstance<py::array_t<T>>(a))
    throw py::type_error(fn + ": " + name + " must have dtype " + dtype_name(py::array_t<T>()) +
                         ", got " + dtype_name(a));
  require(a.flags() & py::array::c_style, fn, std::string(name) + " must be C-contiguous");
  require(!writable || a.writeable(), fn, std::string(name) + " must be writable");
}

// Factors, dims and problem description shared by dmf_step and dmf_loss.
template <class T>
struct Batch {
  std::vector<T*> factors;
  std::vector<int> dims;
  ir::DmfShape shape{};
  ir::DmfProblem<T> problem{};
};

// The factors of a batch, checked to chain: W_j of shape (B, d_j, d_{j-1}).
template <class T>
Batch<T> make_factors(const std::string& fn, const py::list& factors, bool writable) {
  Batch<T> b;
  const int depth = int(factors.size());
  require(depth >= 1, fn, "need at least one factor");
  std::int64_t batch = -1;
  for (int j = 0; j < depth; ++j) {
    py::array W = factors[j].cast<py::array>();
    require_array<T>(fn, "factors", W, writable);
    require(W.ndim() == 3, fn, "factor " + std::to_string(j) + " must be 3-d (B, d_j, d_j-1)");
    if (j == 0) {
      batch = W.shape(0);
      b.dims.push_back(int(W.shape(2)));
    }
    require(W.shape(0) == batch && W.shape(2) == b.dims.back(), fn,
            "factor " + std::to_string(j) + " does not chain with the previous one");
    b.dims.push_back(int(W.shape(1)));
    b.factors.push_back(static_cast<T*>(W.mutable_data()));
  }
  b.shape = {batch, depth, nullptr};
  return b;
}

template <class T>
Batch<T> make_batch(const std::string& fn, const py::list& factors, const py::object& target,
                    const py::object& mask, const py::object& A, const py::object& y,
                    bool writable) {
  Batch<T> b = make_factors<T>(fn, factors, writable);
  const std::int64_t batch = b.shape.batch;
  const std::int64_t m = b.dims.back(), n = b.dims.front();
  auto stride = [&](const py::array& a, std::int64_t per) {
    require(a.shape(0) == batch || a.shape(0) == 1, fn, "problem batch must be 1 or B");
    return a.shape(0) == 1 ? std::int64_t(0) : per;
  };
  if (!target.is_none()) {
    py::array t = target.cast<py::array>(), mk = mask.cast<py::array>();
    require_array<T>(fn, "target", t, false);
    require(mk.dtype().kind() == 'b' && mk.itemsize() == 1 && (mk.flags() & py::array::c_style), fn,
            "mask must be a C-contiguous bool array, got " + dtype_name(mk));
    require(t.ndim() == 3 && t.shape(1) == m && t.shape(2) == n, fn, "target must be (B, m, n)");
    require(mk.ndim() == 3 && mk.shape(1) == m && mk.shape(2) == n, fn, "mask must be (B, m, n)");
    b.problem.target = static_cast<const T*>(t.data());
    b.problem.mask = static_cast<const std::uint8_t*>(mk.data());
    b.problem.target_stride = stride(t, m * n);
    b.problem.mask_stride = stride(mk, m * n);
  } else {
    py::array a = A.cast<py::array>(), yy = y.cast<py::array>();
    require_array<T>(fn, "A", a, false);
    require_array<T>(fn, "y", yy, false);
    require(a.ndim() == 4 && a.shape(2) == m && a.shape(3) == n, fn, "A must be (B, K, m, n)");
    require(yy.ndim() == 2 && yy.shape(1) == a.shape(1), fn, "y must be (B, K)");
    b.problem.sensing = true;
    b.problem.K = int(a.shape(1));
    b.problem.A = static_cast<const T*>(a.data());
    b.problem.y = static_cast<const T*>(yy.data());
    b.problem.A_stride = stride(a, a.shape(1) * m * n);
    b.problem.y_stride = stride(yy, a.shape(1));
  }
  return b;
}

template <class T>
void dmf_step_t(const py::list& factors, const py::object& target, const py::object& mask,
                const py::object& A, const py::object& y, const py::array& lr, std::int64_t steps,
                double tol, std::int64_t step0, py::array status, py::array frozen_at,
                const py::object& thresholds, const py::object& crossed_at,
                const py::object& snapshots) {
  const std::string fn = "dmf_step";
  Batch<T> b = make_batch<T>(fn, factors, target, mask, A, y, true);
  b.shape.dims = b.dims.data();
  require_array<T>(fn, "lr", lr, false);
  require_array<std::int8_t>(fn, "status", status, true);
  require_array<std::int64_t>(fn, "frozen_at", frozen_at, true);
  require(lr.ndim() == 1 && (lr.shape(0) == b.shape.batch || lr.shape(0) == 1), fn,
          "lr must be (B,) or (1,)");
  require(status.ndim() == 1 && status.shape(0) == b.shape.batch, fn, "status must be (B,)");
  require(frozen_at.ndim() == 1 && frozen_at.shape(0) == b.shape.batch, fn,
          "frozen_at must be (B,)");
  require(steps >= 0, fn, "steps must be >= 0");
  const T* lrp = static_cast<const T*>(lr.data());
  const std::int64_t lr_stride = lr.shape(0) == 1 ? 0 : 1;
  auto* st = static_cast<std::int8_t*>(status.mutable_data());
  auto* fz = static_cast<std::int64_t*>(frozen_at.mutable_data());
  ir::DmfCrossings<T> cr;
  std::vector<T*> snaps;
  if (!thresholds.is_none()) {
    py::array thr = thresholds.cast<py::array>(), at = crossed_at.cast<py::array>();
    require_array<T>(fn, "thresholds", thr, false);
    require_array<std::int64_t>(fn, "crossed_at", at, true);
    require(thr.ndim() == 1, fn, "thresholds must be 1-d");
    cr.count = int(thr.shape(0));
    require(at.ndim() == 2 && at.shape(0) == b.shape.batch && at.shape(1) == cr.count, fn,
            "crossed_at must be (B, len(thresholds))");
    cr.thresholds = static_cast<const T*>(thr.data());
    cr.step = static_cast<std::int64_t*>(at.mutable_data());
    if (!snapshots.is_none()) {
      py::list sl = snapshots.cast<py::list>();
      require(sl.size() == b.factors.size(), fn, "snapshots must hold one array per factor");
      for (std::size_t j = 0; j < sl.size(); ++j) {
        py::array a = sl[j].cast<py::array>();
        require_array<T>(fn, "snapshots", a, true);
        require(a.ndim() == 4 && a.shape(0) == b.shape.batch && a.shape(1) == cr.count &&
                    a.shape(2) == b.dims[j + 1] && a.shape(3) == b.dims[j],
                fn, "snapshot " + std::to_string(j) + " must be (B, len(thresholds), d_j, d_j-1)");
        snaps.push_back(static_cast<T*>(a.mutable_data()));
      }
      cr.snapshots = snaps.data();
    }
  }
  py::gil_scoped_release nogil;
  ir::cpu::dmf_step<T>(b.factors.data(), b.shape, b.problem, lrp, lr_stride, steps, T(tol), step0,
                       st, fz, cr);
}

template <class T>
void dmf_loss_t(const py::list& factors, const py::object& target, const py::object& mask,
                const py::object& A, const py::object& y, py::array loss, py::array product) {
  const std::string fn = "dmf_loss";
  Batch<T> b = make_batch<T>(fn, factors, target, mask, A, y, false);
  b.shape.dims = b.dims.data();
  require_array<T>(fn, "loss", loss, true);
  require_array<T>(fn, "product", product, true);
  require(loss.ndim() == 1 && loss.shape(0) == b.shape.batch, fn, "loss must be (B,)");
  require(product.ndim() == 3 && product.shape(0) == b.shape.batch &&
              product.shape(1) == b.dims.back() && product.shape(2) == b.dims.front(),
          fn, "product must be (B, m, n)");
  T* lp = static_cast<T*>(loss.mutable_data());
  T* pp = static_cast<T*>(product.mutable_data());
  std::vector<const T*> cf(b.factors.begin(), b.factors.end());
  py::gil_scoped_release nogil;
  ir::cpu::dmf_loss<T>(cf.data(), b.shape, b.problem, lp, pp);
}

bool is_f32(const py::list& factors, const std::string& fn) {
  if (factors.empty()) throw std::invalid_argument(fn + ": need at least one factor");
  py::array W = factors[0].cast<py::array>();
  if (py::isinstance<py::array_t<float>>(W)) return true;
  if (py::isinstance<py::array_t<double>>(W)) return false;
  throw py::type_error(fn + ": factors must be float32 or float64, got " + dtype_name(W));
}

// Metric specs from kinds (n,) int32 and params (n, 2) float64 [param, rtol].
std::vector<ir::MetricSpec> make_specs(const std::string& fn, const py::array& kinds,
                                       const py::array& params) {
  require_array<std::int32_t>(fn, "kinds", kinds, false);
  require_array<double>(fn, "params", params, false);
  const std::int64_t n = kinds.ndim() == 1 ? kinds.shape(0) : -1;
  require(n >= 0 && params.ndim() == 2 && params.shape(0) == n && params.shape(1) == 2, fn,
          "kinds must be (n,) and params (n, 2)");
  const auto* kp = static_cast<const std::int32_t*>(kinds.data());
  const auto* pp = static_cast<const double*>(params.data());
  std::vector<ir::MetricSpec> specs;
  for (std::int64_t i = 0; i < n; ++i) {
    require(kp[i] >= ir::kLoss && kp[i] <= ir::kReconError, fn, "unknown metric kind");
    specs.push_back({kp[i], pp[2 * i], pp[2 * i + 1]});
  }
  return specs;
}

template <class T>
void svdvals_t(const py::array& X, py::array s, py::array info, int max_sweeps) {
  const std::string fn = "svdvals";
  require_array<T>(fn, "X", X, false);
  require_array<T>(fn, "s", s, true);
  require_array<std::int8_t>(fn, "info", info, true);
  require(X.ndim() == 3, fn, "X must be (B, m, n)");
  const std::int64_t B = X.shape(0);
  const int m = int(X.shape(1)), n = int(X.shape(2));
  require(s.ndim() == 2 && s.shape(0) == B && s.shape(1) == std::min(m, n), fn,
          "s must be (B, min(m, n))");
  require(info.ndim() == 1 && info.shape(0) == B, fn, "info must be (B,)");
  require(max_sweeps >= 1, fn, "max_sweeps must be >= 1");
  const T* xp = static_cast<const T*>(X.data());
  T* sp = static_cast<T*>(s.mutable_data());
  auto* ip = static_cast<std::int8_t*>(info.mutable_data());
  py::gil_scoped_release nogil;
  ir::cpu::svdvals<T>(xp, B, m, n, sp, ip, max_sweeps);
}

template <class T>
void svals_metrics_t(const py::array& s, const py::array& kinds, const py::array& params,
                     py::array out) {
  const std::string fn = "svals_metrics";
  require_array<T>(fn, "s", s, false);
  require_array<double>(fn, "out", out, true);
  std::vector<ir::MetricSpec> specs = make_specs(fn, kinds, params);
  for (const auto& sp : specs)
    require(sp.kind >= ir::kFro && sp.kind <= ir::kDistRank, fn,
            "only singular-value metrics (fro ... dist_rank)");
  require(s.ndim() == 2, fn, "s must be (B, k)");
  const std::int64_t B = s.shape(0);
  require(out.ndim() == 2 && out.shape(0) == std::int64_t(specs.size()) && out.shape(1) == B, fn,
          "out must be (n, B)");
  const T* sp = static_cast<const T*>(s.data());
  double* op = static_cast<double*>(out.mutable_data());
  py::gil_scoped_release nogil;
  ir::cpu::svals_metrics<T>(sp, B, int(s.shape(1)), specs.data(), int(specs.size()), op);
}

template <class T>
void balancedness_t(const py::list& factors, py::array out) {
  const std::string fn = "balancedness";
  Batch<T> b = make_factors<T>(fn, factors, false);
  b.shape.dims = b.dims.data();
  require_array<double>(fn, "out", out, true);
  require(out.ndim() == 1 && out.shape(0) == b.shape.batch, fn, "out must be (B,)");
  double* op = static_cast<double*>(out.mutable_data());
  std::vector<const T*> cf(b.factors.begin(), b.factors.end());
  py::gil_scoped_release nogil;
  ir::cpu::balancedness<T>(cf.data(), b.shape, op);
}

template <class T>
void dmf_measure_t(const py::list& factors, const py::object& target, const py::object& mask,
                   const py::object& A, const py::object& y, const py::array& kinds,
                   const py::array& params, py::array out, const py::object& truth) {
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
    py::array t = truth.cast<py::array>();
    require_array<T>(fn, "truth", t, false);
    require(t.ndim() == 3 && (t.shape(0) == b.shape.batch || t.shape(0) == 1) && t.shape(1) == m &&
                t.shape(2) == n,
            fn, "truth must be (B, m, n) or (1, m, n)");
    tp = static_cast<const T*>(t.data());
    truth_stride = t.shape(0) == 1 ? 0 : std::int64_t(m) * n;
  }
  require_array<double>(fn, "out", out, true);
  require(out.ndim() == 2 && out.shape(0) == rows && out.shape(1) == b.shape.batch, fn,
          "out must be (rows, B)");
  double* op = static_cast<double*>(out.mutable_data());
  std::vector<const T*> cf(b.factors.begin(), b.factors.end());
  py::gil_scoped_release nogil;
  ir::cpu::dmf_measure<T>(cf.data(), b.shape, b.problem, specs.data(), int(specs.size()), op, tp,
                          truth_stride);
}

bool is_f32_array(const py::array& a, const std::string& fn, const char* name) {
  if (py::isinstance<py::array_t<float>>(a)) return true;
  if (py::isinstance<py::array_t<double>>(a)) return false;
  throw py::type_error(fn + ": " + name + " must be float32 or float64, got " + dtype_name(a));
}

// CP factors: `order` arrays (B, d_n, R) of one dtype, C-contiguous.
template <class T>
struct CpBatch {
  std::vector<T*> factors;
  std::vector<int> dims;
  ir::CpShape shape{};
};

template <class T>
CpBatch<T> make_cp(const std::string& fn, const py::list& factors, bool writable) {
  CpBatch<T> c;
  const int order = int(factors.size());
  require(order >= 1, fn, "need at least one factor");
  std::int64_t batch = -1, rank = -1;
  for (int n = 0; n < order; ++n) {
    py::array U = factors[n].cast<py::array>();
    require_array<T>(fn, "factors", U, writable);
    require(U.ndim() == 3, fn, "factor " + std::to_string(n) + " must be 3-d (B, d_n, R)");
    if (n == 0) {
      batch = U.shape(0);
      rank = U.shape(2);
    }
    require(U.shape(0) == batch && U.shape(2) == rank, fn,
            "every factor must be (B, d_n, R) with the same B and R");
    c.dims.push_back(int(U.shape(1)));
    c.factors.push_back(static_cast<T*>(U.mutable_data()));
  }
  c.shape = {batch, order, c.dims.data(), int(rank)};
  return c;
}

template <class T>
void cp_step_t(const py::list& factors, const py::array& target, const py::array& mask,
               const py::array& lr, std::int64_t steps, double tol, std::int64_t step0,
               int optimizer, double beta, double eps, const py::object& v, const py::object& t,
               py::array status, py::array frozen_at, py::array loss) {
  const std::string fn = "cp_step";
  CpBatch<T> c = make_cp<T>(fn, factors, true);
  require(c.shape.order >= 2 && c.shape.order <= 6, fn, "orders 2 to 6 only");
  const std::int64_t B = c.shape.batch;
  std::int64_t numel = 1;
  for (int d : c.dims) numel *= d;
  require_array<T>(fn, "target", target, false);
  require(mask.dtype().kind() == 'b' && mask.itemsize() == 1 && (mask.flags() & py::array::c_style),
          fn, "mask must be a C-contiguous bool array, got " + dtype_name(mask));
  require(target.ndim() == 2 && (target.shape(0) == B || target.shape(0) == 1) &&
              target.shape(1) == numel,
          fn, "target must be (B, numel) or (1, numel)");
  require(mask.ndim() == 2 && (mask.shape(0) == B || mask.shape(0) == 1) && mask.shape(1) == numel,
          fn, "mask must be (B, numel) or (1, numel)");
  require_array<T>(fn, "lr", lr, false);
  require(lr.ndim() == 1 && (lr.shape(0) == B || lr.shape(0) == 1), fn, "lr must be (B,) or (1,)");
  require_array<std::int8_t>(fn, "status", status, true);
  require_array<std::int64_t>(fn, "frozen_at", frozen_at, true);
  require_array<T>(fn, "loss", loss, true);
  require(status.ndim() == 1 && status.shape(0) == B && frozen_at.ndim() == 1 &&
              frozen_at.shape(0) == B && loss.ndim() == 1 && loss.shape(0) == B,
          fn, "status, frozen_at and loss must be (B,)");
  require(steps >= 0, fn, "steps must be >= 0");
  require(optimizer == ir::kGd || optimizer == ir::kGroupRmsprop, fn, "unknown optimizer");
  ir::CpOptimizerState<T> opt;
  opt.kind = optimizer;
  opt.beta = T(beta);
  opt.eps = T(eps);
  if (optimizer == ir::kGroupRmsprop) {
    py::array va = v.cast<py::array>(), ta = t.cast<py::array>();
    require_array<T>(fn, "v", va, true);
    require_array<std::int64_t>(fn, "t", ta, true);
    require(va.ndim() == 1 && va.shape(0) == B && ta.ndim() == 1 && ta.shape(0) == B, fn,
            "v and t must be (B,)");
    opt.v = static_cast<T*>(va.mutable_data());
    opt.t = static_cast<std::int64_t*>(ta.mutable_data());
  }
  ir::CpProblem<T> pb;
  pb.target = static_cast<const T*>(target.data());
  pb.mask = static_cast<const std::uint8_t*>(mask.data());
  pb.target_stride = target.shape(0) == 1 ? 0 : numel;
  pb.mask_stride = mask.shape(0) == 1 ? 0 : numel;
  const T* lrp = static_cast<const T*>(lr.data());
  const std::int64_t lr_stride = lr.shape(0) == 1 ? 0 : 1;
  auto* st = static_cast<std::int8_t*>(status.mutable_data());
  auto* fz = static_cast<std::int64_t*>(frozen_at.mutable_data());
  T* lo = static_cast<T*>(loss.mutable_data());
  py::gil_scoped_release nogil;
  ir::cpu::cp_step<T>(c.factors.data(), c.shape, pb, lrp, lr_stride, steps, T(tol), step0, opt, st,
                      fz, lo);
}

template <class T>
void cp_tensor_t(const py::list& factors, py::array out) {
  const std::string fn = "cp_tensor";
  CpBatch<T> c = make_cp<T>(fn, factors, false);
  std::int64_t numel = 1;
  for (int d : c.dims) numel *= d;
  require_array<T>(fn, "out", out, true);
  require(out.ndim() == 2 && out.shape(0) == c.shape.batch && out.shape(1) == numel, fn,
          "out must be (B, numel)");
  std::vector<const T*> cf(c.factors.begin(), c.factors.end());
  T* op = static_cast<T*>(out.mutable_data());
  py::gil_scoped_release nogil;
  ir::cpu::cp_tensor<T>(cf.data(), c.shape, op);
}

void tensor_rank_t(const py::array& tensors, const std::vector<int>& dims, double tol, int max_rank,
                   int max_iter, int restarts, std::uint64_t seed, py::array out) {
  const std::string fn = "tensor_rank";
  require_array<double>(fn, "tensors", tensors, false);
  require_array<std::int64_t>(fn, "out", out, true);
  require(!dims.empty(), fn, "dims must not be empty");
  std::int64_t numel = 1;
  for (int d : dims) {
    require(d >= 1, fn, "mode sizes must be >= 1");
    numel *= d;
  }
  require(tensors.ndim() == 2 && tensors.shape(1) == numel, fn, "tensors must be (B, numel)");
  require(out.ndim() == 1 && out.shape(0) == tensors.shape(0), fn, "out must be (B,)");
  require(max_rank >= 1 && max_iter >= 1 && restarts >= 1, fn,
          "max_rank, max_iter and restarts must be >= 1");
  const auto* X = static_cast<const double*>(tensors.data());
  auto* op = static_cast<std::int64_t*>(out.mutable_data());
  const std::int64_t B = tensors.shape(0);
  py::gil_scoped_release nogil;
  ir::cpu::tensor_rank(X, B, int(dims.size()), dims.data(), tol, max_rank, max_iter, restarts, seed,
                       op);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "implicitreg CPU kernels (batch-interleaved SIMD, OpenMP)";
  m.attr("__version__") = IMPLICITREG_VERSION;

  m.def(
      "dmf_step",
      [](const py::list& factors, const py::object& target, const py::object& mask,
         const py::object& A, const py::object& y, const py::array& lr, std::int64_t steps,
         double tol, std::int64_t step0, py::array status, py::array frozen_at,
         const py::object& thresholds, const py::object& crossed_at, const py::object& snapshots) {
        if (is_f32(factors, "dmf_step"))
          return dmf_step_t<float>(factors, target, mask, A, y, lr, steps, tol, step0, status,
                                   frozen_at, thresholds, crossed_at, snapshots);
        return dmf_step_t<double>(factors, target, mask, A, y, lr, steps, tol, step0, status,
                                  frozen_at, thresholds, crossed_at, snapshots);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("lr").noconvert(), py::arg("steps"), py::arg("tol"), py::arg("step0"),
      py::arg("status").noconvert(), py::arg("frozen_at").noconvert(),
      py::arg("thresholds") = py::none(), py::arg("crossed_at") = py::none(),
      py::arg("snapshots") = py::none(),
      R"doc(In place: `steps` fused gradient-descent updates of every running problem.
Completion passes target/mask (A = y = None), sensing passes A/y (target = mask = None).
thresholds (k,) strictly decreasing, crossed_at (B, k) int64 and snapshots (one (B, k, d_j,
d_j-1) array per factor, or None) record each problem's first iterate below each threshold.)doc");

  m.def(
      "dmf_loss",
      [](const py::list& factors, const py::object& target, const py::object& mask,
         const py::object& A, const py::object& y, py::array loss, py::array product) {
        if (is_f32(factors, "dmf_loss"))
          return dmf_loss_t<float>(factors, target, mask, A, y, loss, product);
        return dmf_loss_t<double>(factors, target, mask, A, y, loss, product);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("loss").noconvert(), py::arg("product").noconvert(),
      "Writes the loss (B,) and the end-to-end product (B, m, n) of the factors.");

  m.def(
      "svdvals",
      [](const py::array& X, py::array s, py::array info, int max_sweeps) {
        if (is_f32_array(X, "svdvals", "X")) return svdvals_t<float>(X, s, info, max_sweeps);
        return svdvals_t<double>(X, s, info, max_sweeps);
      },
      py::arg("X").noconvert(), py::arg("s").noconvert(), py::arg("info").noconvert(),
      py::arg("max_sweeps") = int(ir::kMaxSweeps),
      "Writes the singular values s (B, min(m, n)), descending, of X (B, m, n) and a per-matrix "
      "info code (0 ok, 1 Jacobi sweep cap reached, 2 non-finite input: NaN values).");

  m.def(
      "svals_metrics",
      [](const py::array& s, const py::array& kinds, const py::array& params, py::array out) {
        if (is_f32_array(s, "svals_metrics", "s"))
          return svals_metrics_t<float>(s, kinds, params, out);
        return svals_metrics_t<double>(s, kinds, params, out);
      },
      py::arg("s").noconvert(), py::arg("kinds").noconvert(), py::arg("params").noconvert(),
      py::arg("out").noconvert(),
      "Writes out (n, B): metric i of the singular values s (B, k) for each spec (kinds[i], "
      "params[i] = [param, rtol]).");

  m.def(
      "balancedness",
      [](const py::list& factors, py::array out) {
        if (is_f32(factors, "balancedness")) return balancedness_t<float>(factors, out);
        return balancedness_t<double>(factors, out);
      },
      py::arg("factors"), py::arg("out").noconvert(),
      "Writes out (B,): max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F.");

  m.def(
      "dmf_measure",
      [](const py::list& factors, const py::object& target, const py::object& mask,
         const py::object& A, const py::object& y, const py::array& kinds, const py::array& params,
         py::array out, const py::object& truth) {
        if (is_f32(factors, "dmf_measure"))
          return dmf_measure_t<float>(factors, target, mask, A, y, kinds, params, out, truth);
        return dmf_measure_t<double>(factors, target, mask, A, y, kinds, params, out, truth);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("kinds").noconvert(), py::arg("params").noconvert(), py::arg("out").noconvert(),
      py::arg("truth") = py::none(),
      "Writes every requested metric of the factors into out (rows, B), one row per spec "
      "(min(m, n) rows for svals), from one product and one SVD per problem; truth (B|1, m, n) "
      "for recon_error.");

  m.def(
      "cp_step",
      [](const py::list& factors, const py::array& target, const py::array& mask,
         const py::array& lr, std::int64_t steps, double tol, std::int64_t step0, int optimizer,
         double beta, double eps, const py::object& v, const py::object& t, py::array status,
         py::array frozen_at, py::array loss) {
        if (is_f32(factors, "cp_step"))
          return cp_step_t<float>(factors, target, mask, lr, steps, tol, step0, optimizer, beta,
                                  eps, v, t, status, frozen_at, loss);
        return cp_step_t<double>(factors, target, mask, lr, steps, tol, step0, optimizer, beta, eps,
                                 v, t, status, frozen_at, loss);
      },
      py::arg("factors"), py::arg("target").noconvert(), py::arg("mask").noconvert(),
      py::arg("lr").noconvert(), py::arg("steps"), py::arg("tol"), py::arg("step0"),
      py::arg("optimizer"), py::arg("beta"), py::arg("eps"), py::arg("v"), py::arg("t"),
      py::arg("status").noconvert(), py::arg("frozen_at").noconvert(), py::arg("loss").noconvert(),
      R"doc(In place: `steps` updates (optimizer 0 gd, 1 group_rmsprop with state v, t) of every
running CP factorization; loss (B,) receives the mean squared error over observed entries of
each problem's last iterate.)doc");

  m.def(
      "cp_tensor",
      [](const py::list& factors, py::array out) {
        if (is_f32(factors, "cp_tensor")) return cp_tensor_t<float>(factors, out);
        return cp_tensor_t<double>(factors, out);
      },
      py::arg("factors"), py::arg("out").noconvert(),
      "Writes the full tensors (B, numel) of the CP factors [(B, d_n, R)].");

  m.def("tensor_rank", &tensor_rank_t, py::arg("tensors").noconvert(), py::arg("dims"),
        py::arg("tol"), py::arg("max_rank"), py::arg("max_iter"), py::arg("restarts"),
        py::arg("seed"), py::arg("out").noconvert(),
        "Writes the estimated CP rank (CP-ALS bisection, PAPER.md §4.5) of each tensor (B, "
        "numel) float64 of mode sizes dims into out (B,) int64.");

  m.def(
      "cp_als_mse",
      [](const py::array& tensor, const std::vector<int>& dims, int r, double tol, int max_iter,
         std::uint64_t seed, std::int64_t index, int restart) {
        require_array<double>("cp_als_mse", "tensor", tensor, false);
        std::int64_t numel = 1;
        for (int d : dims) numel *= d;
        require(tensor.size() == numel, "cp_als_mse", "tensor must have prod(dims) entries");
        const auto* X = static_cast<const double*>(tensor.data());
        py::gil_scoped_release nogil;
        return ir::cpu::cp_als_mse(X, int(dims.size()), dims.data(), r, tol, max_iter, seed, index,
                                   restart);
      },
      py::arg("tensor").noconvert(), py::arg("dims"), py::arg("r"), py::arg("tol"),
      py::arg("max_iter"), py::arg("seed"), py::arg("index"), py::arg("restart"),
      "Mean squared error of the CP-ALS fit of rank r from the seeded start (index, restart).");

  m.def("build_info", []() {
    py::dict d;
    d["version"] = IMPLICITREG_VERSION;
    d["compiler"] = IMPLICITREG_COMPILER;
    d["cpu_flags"] = IMPLICITREG_CPU_FLAGS;
    d["simd_lanes_f64"] = ir::simd_lanes_f64();
    d["openmp"] = ir::openmp_enabled();
    d["threads"] = ir::max_threads();
    return d;
  });
}
