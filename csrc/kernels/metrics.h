// Per-problem rank and norm metrics (PAPER.md §5), written once for the CPU driver
// (cpu/metrics.cpp) and the CUDA one (cuda/metrics.cu): each function handles one problem and
// takes its scratch from the caller.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "implicitreg/metrics.h"
#include "kernels/hd.h"

namespace implicitreg {
namespace kernels {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// x^p, exact-rounding shortcuts for the exponents the experiments use (the paper's Schatten
// quasi-norms p = 1/2, 1/4 and their inverses), std::pow otherwise.
IR_HD inline double pow_p(double x, double p) {
  if (p == 1) return x;
  if (p == 2) return x * x;
  if (p == 4) return (x * x) * (x * x);
  if (p == 0.5) return std::sqrt(x);
  if (p == 0.25) return std::sqrt(std::sqrt(x));
  return std::pow(x, p);
}

// One metric of the descending singular values s[0..k). Sums of powers are taken relative to
// the largest term, so that no intermediate overflows or underflows.
template <class T>
IR_HD double svals_metric(const MetricSpec& spec, const T* s, int k) {
  const double s1 = k ? double(s[0]) : 0.0;
  switch (spec.kind) {
    case kSpectral:
      return s1;
    case kNuc: {
      double acc = 0;
      for (int i = 0; i < k; ++i) acc += s[i];
      return acc;
    }
    case kFro:
    case kDistRank: {
      // r >= k: distance 0 (the comparison also keeps a huge r from overflowing an int)
      const int from = spec.kind == kFro ? 0 : spec.param < double(k) ? int(spec.param) : k;
      const double top = from < k ? double(s[from]) : 0.0;
      if (top == 0) return 0;
      double acc = 0;
      for (int i = from; i < k; ++i) acc += (s[i] / top) * (s[i] / top);
      return top * std::sqrt(acc);
    }
    case kSchatten: {
      if (s1 == 0) return 0;
      const double p = spec.param;
      double acc = 0;
      for (int i = 0; i < k; ++i) acc += s[i] > 0 ? pow_p(s[i] / s1, p) : 0.0;
      return s1 * pow_p(acc, 1 / p);
    }
    case kErank: {  // Roy & Vetterli: exp of the entropy of s / sum(s) over non-zero s
      double total = 0;
      for (int i = 0; i < k; ++i) total += s[i];
      if (total == 0) return 0;  // the zero matrix: no non-zero singular value
      double h = 0;
      for (int i = 0; i < k; ++i)
        if (s[i] > 0) {
          const double p = s[i] / total;
          h -= p * std::log(p);
        }
      return std::exp(h);
    }
    case kRank: {
      const double tol = spec.param + spec.rtol * s1;
      int r = 0;
      for (int i = 0; i < k; ++i) r += s[i] > tol;
      return r;
    }
    default:
      return kNaN;
  }
}

// det of the n x n matrix a (row-major, destroyed) by LU with partial pivoting.
IR_HD inline double det_lu(double* a, int n) {
  double det = 1;
  for (int c = 0; c < n; ++c) {
    int piv = c;
    for (int r = c + 1; r < n; ++r)
      if (std::fabs(a[r * n + c]) > std::fabs(a[piv * n + c])) piv = r;
    if (a[piv * n + c] == 0) return 0;
    if (piv != c) {
      for (int e = 0; e < n; ++e) {
        const double t = a[c * n + e];
        a[c * n + e] = a[piv * n + e];
        a[piv * n + e] = t;
      }
      det = -det;
    }
    det *= a[c * n + c];
    for (int r = c + 1; r < n; ++r) {
      const double f = a[r * n + c] / a[c * n + c];
      for (int e = c + 1; e < n; ++e) a[r * n + e] -= f * a[c * n + e];
    }
  }
  return det;
}

// det(W_N ... W_1) of problem b in double (square end-to-end matrix).
// ad - bc by Kahan's FMA form (within 2 ulps). Entries so large that a product overflows
// are scaled by a power of two first, so the result is the rounded value or +-inf, never the
// NaN of inf - inf.
IR_HD inline double det2(double a, double b, double c, double d) {
  auto kahan = [](double a, double b, double c, double d) {
    const double w = b * c;
    return std::fma(a, d, -w) + std::fma(-b, c, w);
  };
  const double det = kahan(a, b, c, d);
  if (!std::isnan(det) ||
      !(std::isfinite(a) && std::isfinite(b) && std::isfinite(c) && std::isfinite(d)))
    return det;
  int e = 0;
  std::frexp(std::max(std::max(std::fabs(a), std::fabs(b)), std::max(std::fabs(c), std::fabs(d))),
             &e);
  const double r =
      kahan(std::ldexp(a, -e), std::ldexp(b, -e), std::ldexp(c, -e), std::ldexp(d, -e));
  return std::ldexp(r, 2 * e);
}

// Doubles of scratch det_f64 needs for a problem of these dims.
IR_HD inline std::int64_t det_scratch(const DmfShape& shape) {
  int rows = shape.dims[0];
  for (int j = 1; j <= shape.depth; ++j) rows = rows > shape.dims[j] ? rows : shape.dims[j];
  return 2 * std::int64_t(rows) * shape.dims[0];
}

// det(W_N ... W_1) of problem b in double (square end-to-end matrix); buf holds
// det_scratch(shape) doubles.
template <class T>
IR_HD double det_f64(const T* const* factors, const DmfShape& shape, std::int64_t b, double* buf) {
  const int* d = shape.dims;
  bool all_square = true;
  for (int j = 1; j <= shape.depth; ++j) all_square &= d[j] == d[j - 1];
  const int n = d[0];
  if (all_square) {
    double det = 1;
    for (int j = 0; j < shape.depth; ++j) {
      const T* W = factors[j] + b * n * n;
      if (n == 2) {
        det *= det2(W[0], W[1], W[2], W[3]);
        continue;
      }
      for (int e = 0; e < n * n; ++e) buf[e] = W[e];
      det *= det_lu(buf, n);
    }
    return det;
  }
  // The product in double, one factor at a time: cur (d_j x n) <- W_j cur.
  double* cur = buf;
  double* tmp = buf + det_scratch(shape) / 2;
  for (int e = 0; e < d[1] * n; ++e) cur[e] = factors[0][b * d[1] * n + e];
  for (int j = 1; j < shape.depth; ++j) {
    const T* W = factors[j] + b * d[j + 1] * d[j];
    for (int e = 0; e < d[j + 1] * n; ++e) tmp[e] = 0.0;
    for (int r = 0; r < d[j + 1]; ++r)
      for (int i = 0; i < d[j]; ++i)
        for (int c = 0; c < n; ++c) tmp[r * n + c] += double(W[r * d[j] + i]) * cur[i * n + c];
    double* t = cur;
    cur = tmp;
    tmp = t;
  }
  return det_lu(cur, n);
}

// ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F maximized over j, for problem b.
template <class T>
IR_HD double balancedness_one(const T* const* factors, const DmfShape& shape, std::int64_t b) {
  const int* d = shape.dims;
  double worst = 0;
  for (int j = 0; j + 1 < shape.depth; ++j) {
    const int rows = d[j + 1], cols = d[j], next = d[j + 2];  // W_j: rows x cols
    const T* Wj = factors[j] + b * rows * cols;
    const T* Wk = factors[j + 1] + b * next * rows;
    double acc = 0;
    for (int p = 0; p < rows; ++p)
      for (int q = 0; q < rows; ++q) {
        double v = 0;
        for (int i = 0; i < next; ++i) v += double(Wk[i * rows + p]) * Wk[i * rows + q];
        for (int i = 0; i < cols; ++i) v -= double(Wj[p * cols + i]) * Wj[q * cols + i];
        acc += v * v;
      }
    worst = std::max(worst, std::sqrt(acc));
  }
  return worst;
}

// ||E - truth||_F / ||truth||_F in double, each sum scaled by its largest term so that
// nothing overflows; unnormalized when truth is 0.
template <class T>
IR_HD double recon_error(const T* E, const T* truth, int size) {
  double big_d = 0, big_t = 0;
  for (int i = 0; i < size; ++i) {
    big_d = std::max(big_d, std::fabs(double(E[i]) - double(truth[i])));
    big_t = std::max(big_t, std::fabs(double(truth[i])));
  }
  if (!std::isfinite(big_d)) return std::isnan(big_d) ? big_d : kInf;
  double sd = 0, st = 0;
  for (int i = 0; i < size; ++i) {
    const double d = big_d > 0 ? (double(E[i]) - double(truth[i])) / big_d : 0.0;
    const double t = big_t > 0 ? double(truth[i]) / big_t : 0.0;
    sd += d * d;
    st += t * t;
  }
  const double num = big_d * std::sqrt(sd);
  return big_t > 0 ? num / (big_t * std::sqrt(st)) : num;
}

// False when a singular value is NaN (a matrix with a non-finite entry): its metrics are NaN.
template <class T>
IR_HD bool all_finite(const T* s, int k) {
  bool finite = true;
  for (int i = 0; i < k; ++i) finite &= !std::isnan(s[i]);
  return finite;
}

IR_HD inline bool is_svals_kind(std::int32_t kind) {
  return kind == kSvals || (kind >= kFro && kind <= kDistRank);
}

// Every requested metric of problem b, written to out[row * batch + b] (svals take min(m, n)
// rows): what dmf_measure computes per problem on the CPU and on the GPU. loss, product and s
// (its singular values, null when no spec needs them) are the batch's; truth is problem b's
// (null without kReconError); det_buf holds det_scratch(shape) doubles.
template <class T>
IR_HD void measure_rows(const MetricSpec* specs, int n_specs, const T* const* factors,
                        const DmfShape& shape, std::int64_t b, const T* loss, const T* product,
                        const T* s, const T* truth, double* det_buf, double* out) {
  const std::int64_t batch = shape.batch;
  const int m = shape.dims[shape.depth], n = shape.dims[0], k = m < n ? m : n;
  const T* sb = s != nullptr ? s + b * k : nullptr;
  const T* E = product + b * m * n;
  const bool finite = sb == nullptr || all_finite(sb, k);
  double* row = out + b;
  for (int i = 0; i < n_specs; ++i, row += batch) {
    const MetricSpec& spec = specs[i];
    switch (spec.kind) {
      case kLoss:
        *row = loss[b];
        break;
      case kEntry:
        *row = E[std::int64_t(spec.param)];
        break;
      case kSvals:
        for (int c = 0; c < k; ++c) row[c * batch] = sb[c];
        row += (k - 1) * batch;
        break;
      case kBalancedness:
        *row = balancedness_one(factors, shape, b);
        break;
      case kDet:
        *row = det_f64(factors, shape, b, det_buf);
        break;
      case kReconError:
        *row = recon_error(E, truth, m * n);
        break;
      default:
        *row = finite ? svals_metric(spec, sb, k) : kNaN;
    }
  }
}

}  // namespace kernels
}  // namespace implicitreg
