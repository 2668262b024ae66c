// _cuda: the CUDA backend. It imports on machines without a GPU or driver and then reports
// "no device"; kernels come with the CUDA backend.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "implicitreg/cuda_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "implicitreg CUDA backend";
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
}
