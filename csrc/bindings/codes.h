// Exports implicitreg/codes.h to Python: each compiled module carries the codes it was built
// with, as dicts from name to value, and the kernels' limits.
#pragma once
#include <pybind11/pybind11.h>

#include "implicitreg/codes.h"

namespace implicitreg {
namespace bindings {

namespace py = pybind11;

template <std::size_t N>
py::dict code_dict(const char* const (&names)[N]) {
  py::dict d;
  for (std::size_t i = 0; i < N; ++i) d[names[i]] = int(i);
  return d;
}

inline void define_codes(py::module_& m) {
  m.attr("STATUS") = code_dict(kStatusNames);
  m.attr("OPTIMIZERS") = code_dict(kOptimizerNames);
  m.attr("METRIC_KINDS") = code_dict(kMetricKindNames);
  m.attr("SVD_INFO") = code_dict(kSvdInfoNames);
  py::dict limits;
  limits["max_sweeps"] = kMaxSweeps;
  limits["max_cuda_depth"] = kMaxCudaDepth;
  limits["max_cp_order"] = kMaxCpOrder;
  limits["max_cp_dim"] = kMaxCpDim;
  limits["max_cp_rank"] = kMaxCpRank;
  m.attr("LIMITS") = limits;
}

}  // namespace bindings
}  // namespace implicitreg
