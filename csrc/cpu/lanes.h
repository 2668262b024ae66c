// Lanes<T>: one 64-byte vector of T as a number type. The pack kernels of kernels/dmf_step.h,
// instantiated with T = Lanes<T> and L = 1, then run every lane of a pack in vector registers:
// the compiler keeps a small pack's factors in registers across steps, where with L scalar
// lanes in arrays they go through memory every step. Each operation is the scalar one lane by
// lane, so results are bit-identical to the L-lane instantiation.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/hd.h"

namespace implicitreg {
namespace cpu {

// Lane-wise truth values of a comparison of Lanes.
template <class T>
struct LaneMask {
  typedef std::conditional_t<sizeof(T) == 8, std::int64_t, std::int32_t> Int;
  typedef Int Vector __attribute__((vector_size(64)));  // 0 or -1 per lane
  Vector m;

  friend LaneMask operator&(LaneMask a, LaneMask b) { return {a.m & b.m}; }
  friend LaneMask operator|(LaneMask a, LaneMask b) { return {a.m | b.m}; }
  friend LaneMask operator!(LaneMask a) { return {~a.m}; }
  bool all() const { return all_of(m); }

 private:
  // Halves and'ed together down to one lane: a loop over the lanes moved each one to a
  // general register.
  template <class V>
  static bool all_of(V v) {
    if constexpr (sizeof(V) == sizeof(Int)) {
      return v[0] != 0;
    } else {
      typedef Int Half __attribute__((vector_size(sizeof(V) / 2)));
      Half lo, hi;
      std::memcpy(&lo, &v, sizeof(Half));
      std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
      return all_of(lo & hi);
    }
  }
};

template <class T>
struct Lanes {
  static constexpr int kLanes = 64 / int(sizeof(T));
  typedef kernels::SimdVec<T, kLanes> Vector;
  Vector v;

  Lanes() = default;
  Lanes(T x) : v(Vector{} + x) {}  // every lane x
  static Lanes from(Vector x) {
    Lanes r;
    r.v = x;
    return r;
  }
  static Lanes load(const T* p) { return from(kernels::simd_load<Vector>(p)); }
  void store(T* p) const { kernels::simd_store(p, v); }

  friend Lanes operator-(Lanes a) { return from(-a.v); }
  friend Lanes operator+(Lanes a, Lanes b) { return from(a.v + b.v); }
  friend Lanes operator-(Lanes a, Lanes b) { return from(a.v - b.v); }
  friend Lanes operator*(Lanes a, Lanes b) { return from(a.v * b.v); }
  Lanes& operator+=(Lanes b) { return *this = *this + b; }
  Lanes& operator*=(Lanes b) { return *this = *this * b; }
  friend LaneMask<T> operator<(Lanes a, Lanes b) { return {a.v < b.v}; }
  friend LaneMask<T> operator<=(Lanes a, Lanes b) { return {a.v <= b.v}; }
  friend LaneMask<T> operator>=(Lanes a, Lanes b) { return {a.v >= b.v}; }
  friend LaneMask<T> operator==(Lanes a, Lanes b) { return {a.v == b.v}; }
};

// a in the lanes of m, b in the others.
template <class T>
Lanes<T> select(LaneMask<T> m, Lanes<T> a, Lanes<T> b) {
  return Lanes<T>::from(m.m ? a.v : b.v);
}

// The masked residual (kernels/dmf_step.h) lane by lane.
template <class T>
Lanes<T> observed(Lanes<T> m, Lanes<T> x) {
  return Lanes<T>::from(m.v != T(0) ? x.v : typename Lanes<T>::Vector{});
}

}  // namespace cpu
}  // namespace implicitreg
