// _core: the CPU kernels on NumPy arrays. Python (ops.py) validates and allocates; this layer
// only re-checks what would make C++ misread memory (dtype, contiguity, writability, sizes),
// dispatches on dtype and releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "implicitreg/dmf_step.h"

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

template <class T>
Batch<T> make_batch(const std::string& fn, const py::list& factors, const py::object& target,
                    const py::object& mask, const py::object& A, const py::object& y,
                    bool writable) {
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
                double tol, std::int64_t step0, py::array status, py::array frozen_at) {
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
  py::gil_scoped_release nogil;
  ir::cpu::dmf_step<T>(b.factors.data(), b.shape, b.problem, lrp, lr_stride, steps, T(tol), step0,
                       st, fz);
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

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "implicitreg CPU kernels (batch-interleaved SIMD, OpenMP)";
  m.attr("__version__") = IMPLICITREG_VERSION;

  m.def(
      "dmf_step",
      [](const py::list& factors, const py::object& target, const py::object& mask,
         const py::object& A, const py::object& y, const py::array& lr, std::int64_t steps,
         double tol, std::int64_t step0, py::array status, py::array frozen_at) {
        if (is_f32(factors, "dmf_step"))
          return dmf_step_t<float>(factors, target, mask, A, y, lr, steps, tol, step0, status,
                                   frozen_at);
        return dmf_step_t<double>(factors, target, mask, A, y, lr, steps, tol, step0, status,
                                  frozen_at);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("A"), py::arg("y"),
      py::arg("lr").noconvert(), py::arg("steps"), py::arg("tol"), py::arg("step0"),
      py::arg("status").noconvert(), py::arg("frozen_at").noconvert(),
      R"doc(In place: `steps` fused gradient-descent updates of every running problem.
Completion passes target/mask (A = y = None), sensing passes A/y (target = mask = None).)doc");

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
