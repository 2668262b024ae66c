// The optimizer argument of both models' step bindings: None for gradient descent, or a dict
// {"kind": code, "beta", "beta1", "beta2", "eps": numbers, "v": (B,), "t": (B,) int64,
// "m", "s": one array per factor, of the factor's shape} holding the state the kernels update
// in place (v for group_rmsprop, t for both, m and s for adam).
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "implicitreg/codes.h"
#include "implicitreg/optimizer.h"

namespace implicitreg {
namespace bindings {

template <class T>
struct Optimizer {
  int kind = kGd;
  T beta = T(0), beta1 = T(0), beta2 = T(0), eps = T(0);
  T* v = nullptr;
  std::int64_t* t = nullptr;
  std::vector<T*> m, s;

  // The kernels' view, pointing into this object: use it while this object lives.
  OptimizerState<T> state() const {
    OptimizerState<T> o;
    o.kind = kind;
    o.beta = beta;
    o.beta1 = beta1;
    o.beta2 = beta2;
    o.eps = eps;
    o.v = v;
    o.t = t;
    o.m = m.empty() ? nullptr : m.data();
    o.s = s.empty() ? nullptr : s.data();
    return o;
  }
};

// The optimizer of a batch of B problems whose factors have the given shapes.
template <class Backend, class T>
Optimizer<T> make_optimizer(const std::string& fn, const py::object& optimizer, std::int64_t B,
                            const std::vector<std::vector<std::int64_t>>& factor_shapes) {
  Optimizer<T> o;
  if (optimizer.is_none()) return o;
  if (!py::isinstance<py::dict>(optimizer))
    throw py::type_error(fn + ": optimizer must be None or a dict, got " + type_name(optimizer));
  py::dict d = optimizer.cast<py::dict>();
  auto item = [&](const char* key) -> py::object {
    if (!d.contains(key))
      throw std::invalid_argument(fn + ": optimizer needs the key '" + key + "'");
    return d[key];
  };
  o.kind = py::cast<int>(item("kind"));
  require(o.kind >= 0 && o.kind < kOptimizerCount, fn,
          "optimizer kind must be 0.." + std::to_string(kOptimizerCount - 1) + ", got " +
              std::to_string(o.kind));
  if (o.kind == kGd) return o;
  o.eps = T(py::cast<double>(item("eps")));
  View t = checked<Backend, std::int64_t>(fn, "optimizer t", item("t"), true);
  require_shape(t.ndim() == 1 && t.shape[0] == B, fn, "optimizer t", t,
                "(" + std::to_string(B) + ",)");
  o.t = t.as<std::int64_t>();
  if (o.kind == kGroupRmsprop) {
    o.beta = T(py::cast<double>(item("beta")));
    View v = checked<Backend, T>(fn, "optimizer v", item("v"), true);
    require_shape(v.ndim() == 1 && v.shape[0] == B, fn, "optimizer v", v,
                  "(" + std::to_string(B) + ",)");
    o.v = v.as<T>();
    return o;
  }
  o.beta1 = T(py::cast<double>(item("beta1")));
  o.beta2 = T(py::cast<double>(item("beta2")));
  for (const char* key : {"m", "s"}) {
    py::list arrays = py::cast<py::list>(item(key));
    const std::string name = std::string("optimizer ") + key;
    require(arrays.size() == factor_shapes.size(), fn,
            name + " must hold " + std::to_string(factor_shapes.size()) +
                " arrays (one per factor), got " + std::to_string(arrays.size()));
    for (std::size_t j = 0; j < arrays.size(); ++j) {
      View a = checked<Backend, T>(fn, name.c_str(), arrays[j], true);
      require_shape(a.shape == factor_shapes[j], fn, name.c_str(), a,
                    shape_str(factor_shapes[j]) + " (factor " + std::to_string(j) + "'s shape)");
      (key[0] == 'm' ? o.m : o.s).push_back(a.as<T>());
    }
  }
  return o;
}

}  // namespace bindings
}  // namespace implicitreg
