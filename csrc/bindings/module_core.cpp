// _core: the CPU kernels on NumPy arrays. Python (ops.py) validates and allocates; this layer
// only re-checks what would make C++ misread memory (dtype, contiguity, writability, sizes),
// dispatches on dtype and releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/dmf_bindings.h"
#include "implicitreg/cp_step.h"
#include "implicitreg/dmf_step.h"
#include "implicitreg/metrics.h"

namespace py = pybind11;
namespace ir = implicitreg;

namespace {

using ir::bindings::require;

// The CPU kernels for the DMF and metric functions (bindings/dmf_bindings.h), without the
// GIL.
struct Cpu {
  static constexpr int kMaxDepth = 1 << 20;  // any depth
  static ir::bindings::View view(const std::string& fn, const char* name, const py::handle& h) {
    return ir::bindings::host_view(fn, name, h);
  }
  template <class T, class... A>
  static void dmf_step(A... a) {
    py::gil_scoped_release nogil;
    ir::cpu::dmf_step<T>(a...);
  }
  template <class T, class... A>
  static void dmf_loss(A... a) {
    py::gil_scoped_release nogil;
    ir::cpu::dmf_loss<T>(a...);
  }
  template <class T, class... A>
  static void svdvals(A... a) {
    py::gil_scoped_release nogil;
    ir::cpu::svdvals<T>(a...);
  }
  template <class T, class... A>
  static void svals_metrics(A... a) {
    py::gil_scoped_release nogil;
    ir::cpu::svals_metrics<T>(a...);
  }
  template <class T, class... A>
  static void balancedness(A... a) {
    py::gil_scoped_release nogil;
    ir::cpu::balancedness<T>(a...);
  }
  template <class T, class... A>
  static void dmf_measure(A... a) {
    py::gil_scoped_release nogil;
    ir::cpu::dmf_measure<T>(a...);
  }
};

// The CP functions' arrays get the DMF functions' checks: dtype, C-contiguity, writability.
template <class T>
void require_array(const std::string& fn, const char* name, const py::array& a, bool writable) {
  ir::bindings::checked<Cpu, T>(fn, name, a, writable);
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
  require_array<bool>(fn, "mask", mask, false);
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

  ir::bindings::define_dmf<Cpu>(m);

  m.def(
      "cp_step",
      [](const py::list& factors, const py::array& target, const py::array& mask,
         const py::array& lr, std::int64_t steps, double tol, std::int64_t step0, int optimizer,
         double beta, double eps, const py::object& v, const py::object& t, py::array status,
         py::array frozen_at, py::array loss) {
        if (ir::bindings::factors_f32<Cpu>("cp_step", factors))
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
        if (ir::bindings::factors_f32<Cpu>("cp_tensor", factors))
          return cp_tensor_t<float>(factors, out);
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
