// The CP tensor factorization step and tensor of both compiled modules, written once over a
// Backend (as bindings/dmf_bindings.h does for the matrix functions): _core on NumPy arrays
// and the CPU kernels, _cuda on device arrays and the CUDA kernels.
#pragma once
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "bindings/optimizer.h"
#include "implicitreg/codes.h"
#include "implicitreg/cp_step.h"

namespace implicitreg {
namespace bindings {

// CP factors: `order` arrays (B, d_n, R) of one dtype, C-contiguous. shape() points into this
// object: use it while the object lives.
template <class T>
struct CpBatch {
  std::int64_t batch = 0, numel = 1;
  int rank = 0;
  std::vector<T*> factors;
  std::vector<int> dims;
  std::vector<std::vector<std::int64_t>> factor_shapes;
  CpShape shape() const { return {batch, int(factors.size()), dims.data(), rank}; }
};

template <class Backend, class T>
CpBatch<T> make_cp(const std::string& fn, const py::list& factors, bool writable) {
  CpBatch<T> c;
  const int order = int(factors.size());
  require(order >= 1 && order <= kMaxCpOrder, fn,
          "factors must hold 1.." + std::to_string(kMaxCpOrder) + " arrays, got " +
              std::to_string(order));
  for (int n = 0; n < order; ++n) {
    View U = checked<Backend, T>(fn, "factors", factors[n], writable);
    const std::string name = "factors[" + std::to_string(n) + "]";
    if (n == 0) {
      require_shape(U.ndim() == 3, fn, name.c_str(), U, "3-d (B, d_0, R)");
      c.batch = U.shape[0];
      c.rank = int(U.shape[2]);
    }
    require_shape(U.ndim() == 3 && U.shape[0] == c.batch && U.shape[2] == c.rank, fn, name.c_str(),
                  U,
                  "(" + std::to_string(c.batch) + ", d, " + std::to_string(c.rank) +
                      "), the same B and R as factors[0]");
    c.dims.push_back(int(U.shape[1]));
    c.numel *= U.shape[1];
    c.factors.push_back(U.as<T>());
    c.factor_shapes.push_back(U.shape);
  }
  return c;
}

template <class Backend, class T>
void cp_step_t(const py::list& factors, const py::object& target, const py::object& mask,
               const py::object& lr, std::int64_t steps, double tol, std::int64_t step0,
               const py::object& optimizer, const py::object& status, const py::object& frozen_at,
               const py::object& loss, const py::object& observed) {
  const std::string fn = "cp_step";
  const CpBatch<T> c = make_cp<Backend, T>(fn, factors, true);
  require(c.factors.size() >= 2, fn,
          "factors must hold 2.." + std::to_string(kMaxCpOrder) + " arrays, got " +
              std::to_string(c.factors.size()));
  const std::int64_t B = c.batch, numel = c.numel;
  View tg = checked<Backend, T>(fn, "target", target, false);
  View mk = checked<Backend, bool>(fn, "mask", mask, false);
  const std::string want = "(B or 1, numel) = " + dims_str({B, numel});
  require_shape(tg.ndim() == 2 && tg.shape[1] == numel, fn, "target", tg, want);
  require_shape(mk.ndim() == 2 && mk.shape[1] == numel, fn, "mask", mk, want);
  View ob = checked<Backend, std::int64_t>(fn, "observed", observed, false);
  require_shape(ob.ndim() == 2 && ob.shape[1] >= 1, fn, "observed", ob,
                "(B or 1, slots >= 1) with B = " + std::to_string(B));
  const auto [lr_p, lr_stride] = make_lr<Backend, T>(fn, lr, B);
  auto* st = per_problem<Backend, std::int8_t>(fn, "status", status, B);
  auto* fz = per_problem<Backend, std::int64_t>(fn, "frozen_at", frozen_at, B);
  T* lo = per_problem<Backend, T>(fn, "loss", loss, B);
  require_steps(fn, steps);
  const Optimizer<T> opt = make_optimizer<Backend, T>(fn, optimizer, B, c.factor_shapes);
  CpProblem<T> pb;
  pb.target = tg.as<const T>();
  pb.mask = mk.as<const std::uint8_t>();
  pb.target_stride = problem_stride(fn, "target", tg, B, numel, want);
  pb.mask_stride = problem_stride(fn, "mask", mk, B, numel, want);
  pb.observed = ob.as<const std::int64_t>();
  pb.observed_slots = ob.shape[1];
  pb.observed_stride = problem_stride(fn, "observed", ob, B, ob.shape[1],
                                      "(B or 1, slots) with B = " + std::to_string(B));
  Backend::template cp_step<T>(c.factors.data(), c.shape(), pb, lr_p, lr_stride, steps, T(tol),
                               step0, opt.state(), st, fz, lo);
}

template <class Backend, class T>
void cp_tensor_t(const py::list& factors, const py::object& out) {
  const std::string fn = "cp_tensor";
  const CpBatch<T> c = make_cp<Backend, T>(fn, factors, false);
  View o = checked<Backend, T>(fn, "out", out, true);
  require_shape(o.ndim() == 2 && o.shape[0] == c.batch && o.shape[1] == c.numel, fn, "out", o,
                dims_str({c.batch, c.numel}));
  std::vector<const T*> cf(c.factors.begin(), c.factors.end());
  Backend::template cp_tensor<T>(cf.data(), c.shape(), o.as<T>());
}

template <class Backend>
void define_cp(py::module_& m) {
  m.def(
      "cp_step",
      [](const py::list& factors, const py::object& target, const py::object& mask,
         const py::object& lr, std::int64_t steps, double tol, std::int64_t step0,
         const py::object& observed, const py::object& status, const py::object& frozen_at,
         const py::object& loss, const py::object& optimizer) {
        auto f = factors_f32<Backend>("cp_step", factors) ? &cp_step_t<Backend, float>
                                                          : &cp_step_t<Backend, double>;
        f(factors, target, mask, lr, steps, tol, step0, optimizer, status, frozen_at, loss,
          observed);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("lr"), py::arg("steps"),
      py::arg("tol"), py::arg("step0"), py::arg("observed"), py::arg("status"),
      py::arg("frozen_at"), py::arg("loss"), py::arg("optimizer") = py::none(),
      R"doc(In place: `steps` updates of every running CP factorization by the optimizer (None:
gradient descent; else a dict of its kind, settings and state, updated in place, as for
dmf_step); loss (B,) receives the mean squared error over observed entries of each problem's
last iterate. observed (B or 1, slots) int64: each problem's observed flat indices in
ascending order, then -1 (a list ends at its first slot outside the tensor), the mask's True
entries listed once per problem so that no call scans the mask.)doc");

  m.def(
      "cp_tensor",
      [](const py::list& factors, const py::object& out) {
        if (factors_f32<Backend>("cp_tensor", factors))
          return cp_tensor_t<Backend, float>(factors, out);
        return cp_tensor_t<Backend, double>(factors, out);
      },
      py::arg("factors"), py::arg("out"),
      "Writes the full tensors (B, numel) of the CP factors [(B, d_n, R)].");
}

}  // namespace bindings
}  // namespace implicitreg
