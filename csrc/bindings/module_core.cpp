// _core: the CPU kernels on NumPy arrays. Python (ops.py) validates and allocates; this layer
// only re-checks what would make C++ misread memory (dtype, contiguity, writability, sizes),
// dispatches on dtype and releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/codes.h"
#include "bindings/cp_bindings.h"
#include "bindings/dmf_bindings.h"
#include "cpu/threads.h"
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
  template <class T, class... A>
  static void svd(A... a) {
    py::gil_scoped_release nogil;
    ir::cpu::svd<T>(a...);
  }
  template <class T, class... A>
  static void cp_step(A... a) {
    py::gil_scoped_release nogil;
    ir::cpu::cp_step<T>(a...);
  }
  template <class T, class... A>
  static void cp_tensor(A... a) {
    py::gil_scoped_release nogil;
    ir::cpu::cp_tensor<T>(a...);
  }
};

// The CP functions' arrays get the DMF functions' checks: dtype, C-contiguity, writability.
template <class T>
void require_array(const std::string& fn, const char* name, const py::array& a, bool writable) {
  ir::bindings::checked<Cpu, T>(fn, name, a, writable);
}

void tensor_rank_t(const py::array& tensors, const std::vector<int>& dims, double tol, int max_rank,
                   int max_iter, int restarts, std::uint64_t seed, py::array out) {
  const std::string fn = "tensor_rank";
  require_array<double>(fn, "tensors", tensors, false);
  require_array<std::int64_t>(fn, "out", out, true);
  require(!dims.empty(), fn, "dims must not be empty, got []");
  std::int64_t numel = 1;
  for (int d : dims) {
    require(d >= 1, fn, "mode sizes must be >= 1, got " + std::to_string(d));
    numel *= d;
  }
  const auto view = [&](const char* name, const py::array& a) {
    return ir::bindings::host_view(fn, name, a);
  };
  ir::bindings::require_shape(tensors.ndim() == 2 && tensors.shape(1) == numel, fn, "tensors",
                              view("tensors", tensors),
                              "(B, numel) with numel = " + std::to_string(numel));
  ir::bindings::require_shape(out.ndim() == 1 && out.shape(0) == tensors.shape(0), fn, "out",
                              view("out", out), ir::bindings::dims_str({tensors.shape(0)}));
  for (const auto& [name, value] :
       {std::pair{"max_rank", max_rank}, std::pair{"max_iter", max_iter},
        std::pair{"restarts", restarts}})
    require(value >= 1, fn, std::string(name) + " must be >= 1, got " + std::to_string(value));
  const auto* X = static_cast<const double*>(tensors.data());
  auto* op = static_cast<std::int64_t*>(out.mutable_data());
  const std::int64_t B = tensors.shape(0);
  py::gil_scoped_release nogil;
  ir::cpu::tensor_rank(X, B, int(dims.size()), dims.data(), tol, max_rank, max_iter, restarts, seed,
                       op);
}

// The x86-64 levels this CPU (and its OS: AVX state saved) supports, from CPUID, for the
// package to pick the build of the kernels to load. Empty on other architectures.
py::list cpu_levels() {
  py::list levels;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool v2 = __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("popcnt") &&
                  __builtin_cpu_supports("ssse3");
  const bool v3 = v2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  if (v2) levels.append("v2");
  if (v3) levels.append("v3");
  if (v4) levels.append("v4");
#endif
  return levels;
}

}  // namespace

// One module per build of the kernels (_core, _core_v3, ...): CMake names it.
#ifndef IMPLICITREG_MODULE
#define IMPLICITREG_MODULE _core
#endif
#ifndef IMPLICITREG_CPU_LEVEL
#define IMPLICITREG_CPU_LEVEL "baseline"
#endif

PYBIND11_MODULE(IMPLICITREG_MODULE, m) {
  m.doc() = "implicitreg CPU kernels (batch-interleaved SIMD, OpenMP)";
  m.attr("__version__") = IMPLICITREG_VERSION;

  ir::bindings::define_codes(m);
  ir::bindings::define_dmf<Cpu>(m);

  ir::bindings::define_cp<Cpu>(m);

  m.def("tensor_rank", &tensor_rank_t, py::arg("tensors").noconvert(), py::arg("dims"),
        py::arg("tol"), py::arg("max_rank"), py::arg("max_iter"), py::arg("restarts"),
        py::arg("seed"), py::arg("out").noconvert(),
        "Writes the estimated CP rank (CP-ALS bisection) of each tensor (B, "
        "numel) float64 of mode sizes dims into out (B,) int64.");

  m.def(
      "cp_als_mse",
      [](const py::array& tensor, const std::vector<int>& dims, int r, double tol, int max_iter,
         std::uint64_t seed, std::int64_t index, int restart) {
        require_array<double>("cp_als_mse", "tensor", tensor, false);
        std::int64_t numel = 1;
        for (int d : dims) numel *= d;
        require(tensor.size() == numel, "cp_als_mse",
                "tensor must have prod(dims) = " + std::to_string(numel) + " entries, got " +
                    std::to_string(tensor.size()));
        const auto* X = static_cast<const double*>(tensor.data());
        py::gil_scoped_release nogil;
        return ir::cpu::cp_als_mse(X, int(dims.size()), dims.data(), r, tol, max_iter, seed, index,
                                   restart);
      },
      py::arg("tensor").noconvert(), py::arg("dims"), py::arg("r"), py::arg("tol"),
      py::arg("max_iter"), py::arg("seed"), py::arg("index"), py::arg("restart"),
      "Mean squared error of the CP-ALS fit of rank r from the seeded start (index, restart).");

  m.def(
      "fma_probe",
      [](const std::string& dtype, int threads, std::int64_t rounds) {
        require(dtype == "float32" || dtype == "float64", "fma_probe",
                "dtype must be 'float32' or 'float64', got '" + dtype + "'");
        require(threads >= 1, "fma_probe", "threads must be >= 1, got " + std::to_string(threads));
        require(rounds >= 1, "fma_probe", "rounds must be >= 1, got " + std::to_string(rounds));
        py::gil_scoped_release nogil;
        return dtype == "float32" ? ir::cpu::fma_probe<float>(threads, rounds)
                                  : ir::cpu::fma_probe<double>(threads, rounds);
      },
      py::arg("dtype"), py::arg("threads"), py::arg("rounds"),
      "Measured multiply-add throughput (flop/s) of `threads` threads, each running `rounds` "
      "rounds of independent FMA chains on the kernels' SIMD vectors.");

  m.def(
      "set_num_threads",
      [](int n) {
        require(n >= 0, "set_num_threads", "n must be >= 0, got " + std::to_string(n));
        ir::cpu::set_num_threads(n);
      },
      py::arg("n"),
      "Threads of every CPU kernel call from now on (0: OpenMP's count: OMP_NUM_THREADS or "
      "the cores).");
  m.def("get_num_threads", &ir::cpu::num_threads,
        "Threads a large CPU kernel call uses: the smaller of set_num_threads' count and "
        "OpenMP's (OMP_NUM_THREADS, threadpoolctl's limit, the cores).");

  m.def("team", &ir::cpu::team, py::arg("units"), py::arg("flops_per_unit"),
        "Threads a CPU kernel call of `units` independent pieces of about `flops_per_unit` "
        "flops each runs on (one when the work is too small to share).");
  m.def("min_flops_per_thread", []() { return ir::cpu::kMinFlopsPerThread; });

  m.def("cpu_levels", &cpu_levels,
        "The x86-64 levels (v2, v3, v4) this CPU supports, from CPUID; empty elsewhere.");

  m.def("build_info", []() {
    py::dict d;
    d["version"] = IMPLICITREG_VERSION;
    d["compiler"] = IMPLICITREG_COMPILER;
    d["cpu_flags"] = IMPLICITREG_CPU_FLAGS;
    d["cpu_level"] = IMPLICITREG_CPU_LEVEL;
    d["simd_lanes_f64"] = ir::simd_lanes_f64();
    d["openmp"] = ir::openmp_enabled();
    d["threads"] = ir::cpu::num_threads();
    return d;
  });
}
