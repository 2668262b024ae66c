// The CP tensor factorization step and tensor of both compiled modules, written once over a
// Backend (as bindings/dmf_bindings.h does for the matrix functions): _core on NumPy arrays
// and the CPU kernels, _cuda on device arrays and the CUDA kernels.
#pragma once
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings/dmf_bindings.h"
#include "implicitreg/cp_step.h"

namespace implicitreg {
namespace bindings {

// CP factors: `order` arrays (B, d_n, R) of one dtype, C-contiguous.
template <class T>
struct CpBatch {
  std::vector<T*> factors;
  std::vector<int> dims;
  CpShape shape{};
  std::int64_t numel = 1;
};

// shape.dims points into the returned CpBatch: use it where it was returned.
template <class Backend, class T>
CpBatch<T> make_cp(const std::string& fn, const py::list& factors, bool writable) {
  CpBatch<T> c;
  const int order = int(factors.size());
  require(order >= 1, fn, "need at least one factor");
  std::int64_t batch = -1, rank = -1;
  for (int n = 0; n < order; ++n) {
    View U = checked<Backend, T>(fn, "factors", factors[n], writable);
    require(U.ndim() == 3, fn, "factor " + std::to_string(n) + " must be 3-d (B, d_n, R)");
    if (n == 0) {
      batch = U.shape[0];
      rank = U.shape[2];
    }
    require(U.shape[0] == batch && U.shape[2] == rank, fn,
            "every factor must be (B, d_n, R) with the same B and R");
    c.dims.push_back(int(U.shape[1]));
    c.numel *= U.shape[1];
    c.factors.push_back(U.as<T>());
  }
  c.shape = {batch, order, c.dims.data(), int(rank)};
  return c;
}

template <class Backend, class T>
void cp_step_t(const py::list& factors, const py::object& target, const py::object& mask,
               const py::object& lr, std::int64_t steps, double tol, std::int64_t step0,
               int optimizer, double beta, double eps, const py::object& v, const py::object& t,
               const py::object& status, const py::object& frozen_at, const py::object& loss) {
  const std::string fn = "cp_step";
  CpBatch<T> c = make_cp<Backend, T>(fn, factors, true);
  require(c.shape.order >= 2 && c.shape.order <= 6, fn, "orders 2 to 6 only");
  const std::int64_t B = c.shape.batch, numel = c.numel;
  View tg = checked<Backend, T>(fn, "target", target, false);
  View mk = checked<Backend, bool>(fn, "mask", mask, false);
  require(tg.ndim() == 2 && (tg.shape[0] == B || tg.shape[0] == 1) && tg.shape[1] == numel, fn,
          "target must be (B, numel) or (1, numel)");
  require(mk.ndim() == 2 && (mk.shape[0] == B || mk.shape[0] == 1) && mk.shape[1] == numel, fn,
          "mask must be (B, numel) or (1, numel)");
  View l = checked<Backend, T>(fn, "lr", lr, false);
  require(l.ndim() == 1 && (l.shape[0] == B || l.shape[0] == 1), fn, "lr must be (B,) or (1,)");
  View st = checked<Backend, std::int8_t>(fn, "status", status, true);
  View fz = checked<Backend, std::int64_t>(fn, "frozen_at", frozen_at, true);
  View lo = checked<Backend, T>(fn, "loss", loss, true);
  for (const View* a : {&st, &fz, &lo})
    require(a->ndim() == 1 && a->shape[0] == B, fn, "status, frozen_at and loss must be (B,)");
  require(steps >= 0, fn, "steps must be >= 0");
  require(optimizer == kGd || optimizer == kGroupRmsprop, fn, "unknown optimizer");
  CpOptimizerState<T> opt;
  opt.kind = optimizer;
  opt.beta = T(beta);
  opt.eps = T(eps);
  if (optimizer == kGroupRmsprop) {
    View va = checked<Backend, T>(fn, "v", v, true);
    View ta = checked<Backend, std::int64_t>(fn, "t", t, true);
    require(va.ndim() == 1 && va.shape[0] == B && ta.ndim() == 1 && ta.shape[0] == B, fn,
            "v and t must be (B,)");
    opt.v = va.as<T>();
    opt.t = ta.as<std::int64_t>();
  }
  CpProblem<T> pb;
  pb.target = tg.as<const T>();
  pb.mask = mk.as<const std::uint8_t>();
  pb.target_stride = tg.shape[0] == 1 ? 0 : numel;
  pb.mask_stride = mk.shape[0] == 1 ? 0 : numel;
  Backend::template cp_step<T>(c.factors.data(), c.shape, pb, l.as<const T>(),
                               std::int64_t(l.shape[0] == 1 ? 0 : 1), steps, T(tol), step0, opt,
                               st.as<std::int8_t>(), fz.as<std::int64_t>(), lo.as<T>());
}

template <class Backend, class T>
void cp_tensor_t(const py::list& factors, const py::object& out) {
  const std::string fn = "cp_tensor";
  CpBatch<T> c = make_cp<Backend, T>(fn, factors, false);
  View o = checked<Backend, T>(fn, "out", out, true);
  require(o.ndim() == 2 && o.shape[0] == c.shape.batch && o.shape[1] == c.numel, fn,
          "out must be (B, numel)");
  std::vector<const T*> cf(c.factors.begin(), c.factors.end());
  Backend::template cp_tensor<T>(cf.data(), c.shape, o.as<T>());
}

template <class Backend>
void define_cp(py::module_& m) {
  m.def(
      "cp_step",
      [](const py::list& factors, const py::object& target, const py::object& mask,
         const py::object& lr, std::int64_t steps, double tol, std::int64_t step0, int optimizer,
         double beta, double eps, const py::object& v, const py::object& t,
         const py::object& status, const py::object& frozen_at, const py::object& loss) {
        if (factors_f32<Backend>("cp_step", factors))
          return cp_step_t<Backend, float>(factors, target, mask, lr, steps, tol, step0, optimizer,
                                           beta, eps, v, t, status, frozen_at, loss);
        return cp_step_t<Backend, double>(factors, target, mask, lr, steps, tol, step0, optimizer,
                                          beta, eps, v, t, status, frozen_at, loss);
      },
      py::arg("factors"), py::arg("target"), py::arg("mask"), py::arg("lr"), py::arg("steps"),
      py::arg("tol"), py::arg("step0"), py::arg("optimizer"), py::arg("beta"), py::arg("eps"),
      py::arg("v"), py::arg("t"), py::arg("status"), py::arg("frozen_at"), py::arg("loss"),
      R"doc(In place: `steps` updates (optimizer 0 gd, 1 group_rmsprop with state v, t) of every
running CP factorization; loss (B,) receives the mean squared error over observed entries of
each problem's last iterate.)doc");

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
