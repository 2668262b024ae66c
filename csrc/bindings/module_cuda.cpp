// _cuda: the CUDA kernels on device arrays (CuPy, or anything with __cuda_array_interface__),
// with _core's functions and arguments (bindings/dmf_bindings.h), so that ops.py routes by
// backend alone. Every call runs on CuPy's current stream and returns without waiting. The
// module imports on machines without a GPU or driver and then reports "no device".
// Compiled with IR_CUDA_EMULATION it is _cuda_emulated: the same kernels run on the CPU
// (cuda/emulation.h), for the tests.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "bindings/codes.h"
#include "bindings/cp_bindings.h"
#include "bindings/dmf_bindings.h"
#include "implicitreg/cuda_info.h"
#include "implicitreg/dmf_step.h"
#include "implicitreg/metrics.h"
#ifdef IR_CUDA_EMULATION
#include "cuda/emulation.h"  // failing_allocations, for the tests of a full device
#endif

namespace py = pybind11;
namespace ir = implicitreg;

namespace {

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

// Calls kernel(args..., stream) on CuPy's current stream without the GIL: a launch that waits
// (for scratch, or a count read back) leaves other Python threads running.
template <class Kernel, class... A>
void call(Kernel kernel, A... a) {
  void* stream = current_stream();
  py::gil_scoped_release nogil;
  kernel(a..., stream);
}

// The CUDA kernels for the DMF and metric functions.
struct Cuda {
  static constexpr int kMaxDepth = ir::kMaxCudaDepth;
  static ir::bindings::View view(const std::string& fn, const char* name, const py::handle& h) {
    return ir::bindings::device_view(fn, name, h);
  }
  template <class T, class... A>
  static void dmf_step(A... a) {
    call(&ir::cuda::dmf_step<T>, a...);
  }
  template <class T, class... A>
  static void dmf_loss(A... a) {
    call(&ir::cuda::dmf_loss<T>, a...);
  }
  template <class T, class... A>
  static void svdvals(A... a) {
    call(&ir::cuda::svdvals<T>, a...);
  }
  template <class T, class... A>
  static void svd(A... a) {
    call(&ir::cuda::svd<T>, a...);
  }
  template <class T, class... A>
  static void svals_metrics(A... a) {
    call(&ir::cuda::svals_metrics<T>, a...);
  }
  template <class T, class... A>
  static void balancedness(A... a) {
    call(&ir::cuda::balancedness<T>, a...);
  }
  template <class T, class... A>
  static void dmf_measure(A... a) {
    call(&ir::cuda::dmf_measure<T>, a...);
  }
  template <class T, class... A>
  static void cp_step(A... a) {
    call(&ir::cuda::cp_step<T>, a...);
  }
  template <class T, class... A>
  static void cp_tensor(A... a) {
    call(&ir::cuda::cp_tensor<T>, a...);
  }
};

void define(py::module_& m) {
  m.def("device_count", []() { return ir::cuda::device_info().device_count; });
  m.def("device_info", []() {
    const auto info = ir::cuda::device_info();
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
  ir::bindings::define_codes(m);
  ir::bindings::define_dmf<Cuda>(m);
  ir::bindings::define_cp<Cuda>(m);
}

}  // namespace

#ifdef IR_CUDA_EMULATION
PYBIND11_MODULE(_cuda_emulated, m) {
  m.doc() = "implicitreg CUDA backend emulated on the CPU (for tests): _cuda's functions";
  define(m);
  m.def(
      "fail_allocations", [](int n) { ir::cuda::emulation::failing_allocations = n; },
      "The next n device allocations fail as on a full device (tests).", py::arg("n"));
}
#else
PYBIND11_MODULE(_cuda, m) {
  m.doc() = "implicitreg CUDA backend: the kernels of _core on device (CuPy) arrays";
  define(m);
}
#endif
