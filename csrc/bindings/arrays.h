// Arrays as the kernels see them, for both compiled modules: a Backend (module_core.cpp,
// module_cuda.cpp) says how to see an array (host_view for NumPy, device_view for anything
// with __cuda_array_interface__), and checked() re-checks only what would make C++ misread
// memory (dtype, contiguity, writability). Every refusal names the function and the argument
// and says what was expected and what was received.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace implicitreg {
namespace bindings {

namespace py = pybind11;

inline void require(bool ok, const std::string& fn, const std::string& msg) {
  if (!ok) throw std::invalid_argument(fn + ": " + msg);
}

inline std::string type_name(const py::handle& h) {
  return py::str(py::type::of(h).attr("__name__")).cast<std::string>();
}

// "(2, 3, 4)": a shape as NumPy prints it.
inline std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string out = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

// An array as the kernels see it: where it is, its shape, NumPy's name of its dtype.
struct View {
  void* ptr = nullptr;
  std::vector<std::int64_t> shape;
  std::string dtype;
  bool writable = false;
  int ndim() const { return int(shape.size()); }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

template <class T>
const char* dtype_name();
template <>
inline const char* dtype_name<float>() {
  return "float32";
}
template <>
inline const char* dtype_name<double>() {
  return "float64";
}
template <>
inline const char* dtype_name<std::int8_t>() {
  return "int8";
}
template <>
inline const char* dtype_name<std::int32_t>() {
  return "int32";
}
template <>
inline const char* dtype_name<std::int64_t>() {
  return "int64";
}
template <>
inline const char* dtype_name<bool>() {
  return "bool";
}

// A NumPy array, C-contiguous.
inline View host_view(const std::string& fn, const char* name, const py::handle& h) {
  if (!py::isinstance<py::array>(h))
    throw py::type_error(fn + ": " + name + " must be a NumPy array, got " + type_name(h));
  auto a = py::reinterpret_borrow<py::array>(h);
  if (!(a.flags() & py::array::c_style)) {
    std::vector<std::int64_t> strides(a.strides(), a.strides() + a.ndim());
    require(false, fn,
            std::string(name) + " must be C-contiguous, got strides " + shape_str(strides) +
                " (bytes) for shape " +
                shape_str(std::vector<std::int64_t>(a.shape(), a.shape() + a.ndim())));
  }
  View v;
  v.ptr = const_cast<void*>(a.data());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) v.shape.push_back(a.shape(i));
  v.dtype = py::str(a.dtype()).cast<std::string>();
  v.writable = a.writeable();
  return v;
}

// A device array (CuPy, or anything with __cuda_array_interface__), C-contiguous.
inline View device_view(const std::string& fn, const char* name, const py::handle& h) {
  if (!py::hasattr(h, "__cuda_array_interface__"))
    throw py::type_error(fn + ": " + name + " must be a device array (CuPy), got " + type_name(h));
  py::dict cai = h.attr("__cuda_array_interface__");
  View v;
  for (auto s : cai["shape"].cast<py::tuple>()) v.shape.push_back(s.cast<std::int64_t>());
  const std::string ts = cai["typestr"].cast<std::string>();
  static const std::pair<const char*, const char*> kNames[] = {
      {"<f4", "float32"}, {"<f8", "float64"}, {"|i1", "int8"},
      {"<i4", "int32"},   {"<i8", "int64"},   {"|b1", "bool"}};
  v.dtype = "typestr " + ts;
  for (const auto& [t, n] : kNames)
    if (ts == t) v.dtype = n;
  py::tuple data = cai["data"].cast<py::tuple>();
  v.ptr = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
  v.writable = !data[1].cast<bool>();
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    std::int64_t expect = std::stoll(ts.substr(2));  // the item size
    py::tuple strides = cai["strides"].cast<py::tuple>();
    for (int i = v.ndim() - 1; i >= 0; --i) {
      require(v.shape[i] <= 1 || strides[i].cast<std::int64_t>() == expect, fn,
              std::string(name) + " must be C-contiguous, got strides " +
                  py::str(strides).cast<std::string>() + " (bytes) for shape " +
                  shape_str(v.shape));
      expect *= v.shape[i];
    }
  }
  return v;
}

// The Backend's view of h, with dtype T (and writable when asked).
template <class Backend, class T>
View checked(const std::string& fn, const char* name, const py::handle& h, bool writable) {
  View v = Backend::view(fn, name, h);
  if (v.dtype != dtype_name<T>())
    throw py::type_error(fn + ": " + name + " must have dtype " + dtype_name<T>() + ", got " +
                         v.dtype);
  require(!writable || v.writable, fn,
          std::string(name) + " must be writable, got a read-only array");
  return v;
}

// True for float32, false for float64; TypeError for anything else.
template <class Backend>
bool is_f32(const std::string& fn, const char* name, const py::handle& h) {
  const std::string dt = Backend::view(fn, name, h).dtype;
  if (dt == "float32") return true;
  if (dt == "float64") return false;
  throw py::type_error(fn + ": " + name + " must be float32 or float64, got " + dt);
}

template <class Backend>
bool factors_f32(const std::string& fn, const py::list& factors) {
  require(!factors.empty(), fn, "factors must hold at least one array, got an empty list");
  return is_f32<Backend>(fn, "factors", factors[0]);
}

// ValueError "fn: name must be <expected>, got shape (...)" unless ok.
inline void require_shape(bool ok, const std::string& fn, const char* name, const View& v,
                          const std::string& expected) {
  require(ok, fn, std::string(name) + " must be " + expected + ", got shape " + shape_str(v.shape));
}

// "(B, d, e)" with B, d and e as numbers, for the error messages.
inline std::string dims_str(std::initializer_list<std::int64_t> dims) {
  return shape_str(std::vector<std::int64_t>(dims));
}

// The batch stride of a problem array whose first axis is 1 (shared) or B.
inline std::int64_t problem_stride(const std::string& fn, const char* name, const View& a,
                                   std::int64_t batch, std::int64_t per,
                                   const std::string& expected) {
  require_shape(a.shape[0] == batch || a.shape[0] == 1, fn, name, a, expected);
  return a.shape[0] == 1 ? std::int64_t(0) : per;
}

// A (B,) or (1,) per-problem learning rate, and its batch stride.
template <class Backend, class T>
std::pair<const T*, std::int64_t> make_lr(const std::string& fn, const py::object& lr,
                                          std::int64_t B) {
  View l = checked<Backend, T>(fn, "lr", lr, false);
  require_shape(l.ndim() == 1 && (l.shape[0] == B || l.shape[0] == 1), fn, "lr", l,
                "(B,) or (1,) with B = " + std::to_string(B));
  return {l.as<const T>(), l.shape[0] == 1 ? 0 : 1};
}

// A writable (B,) per-problem array.
template <class Backend, class T>
T* per_problem(const std::string& fn, const char* name, const py::object& h, std::int64_t B) {
  View v = checked<Backend, T>(fn, name, h, true);
  require_shape(v.ndim() == 1 && v.shape[0] == B, fn, name, v, dims_str({B}));
  return v.as<T>();
}

inline void require_steps(const std::string& fn, std::int64_t steps) {
  require(steps >= 0, fn, "steps must be >= 0, got " + std::to_string(steps));
}

}  // namespace bindings
}  // namespace implicitreg
