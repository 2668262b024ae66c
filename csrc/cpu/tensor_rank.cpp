// Tensor-rank estimation by CP-ALS bisection (PAPER.md §4.5), one tensor per OpenMP
// iteration, in double.
//
// CP-ALS of rank r: for each mode n in turn, V = Hadamard product of the other factors' Gram
// matrices, M = X_(n) K with K the Khatri-Rao product of the other factors (modes in
// increasing order, the last fastest, matching the C-order unfolding), and the new factor
// solves F V = M. The paper's code divides every factor but the last by its previous column
// norms; that only rescales columns that the next mode's solve absorbs, so the model at the
// end of a sweep is the same. The normal equations are solved by Cholesky with a ridge of
// 1e-12 * trace(V) / r, the regularized form of the pseudo-inverse the paper's code uses.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/threads.h"
#include "implicitreg/cp_step.h"

namespace implicitreg {
namespace {

// splitmix64's finalizer: a bijective mix of 64 bits.
inline std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Standard normal number k of the stream `key` (Box-Muller on uniforms 2k and 2k + 1).
// implicitreg.reference.als_start draws the same numbers with NumPy.
inline double normal(std::uint64_t key, std::uint64_t k) {
  const double u1 = double((mix(key + 2 * k) >> 11) + 1) * 0x1.0p-53;  // (0, 1]
  const double u2 = double(mix(key + 2 * k + 1) >> 11) * 0x1.0p-53;    // [0, 1)
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

inline std::uint64_t stream_key(std::uint64_t seed, std::int64_t index, int r, int restart) {
  return mix(mix(mix(seed) ^ std::uint64_t(index)) ^
             ((std::uint64_t(r) << 20) | unsigned(restart)));
}

// Solves F V = M for F (rows x r) in place of M, V symmetric positive semi-definite (r x r,
// overwritten by its Cholesky factor).
void solve_normal(std::vector<double>& V, int r, double* M, int rows) {
  double trace = 0;
  for (int i = 0; i < r; ++i) trace += V[i * r + i];
  const double base = std::max(trace / r, 1e-300);
  std::vector<double> A(V.size());
  for (double ridge = 1e-12 * base;; ridge *= 100) {
    A = V;
    bool ok = true;
    for (int j = 0; j < r && ok; ++j) {
      double d = A[j * r + j] + ridge;
#pragma omp simd reduction(- : d)
      for (int k = 0; k < j; ++k) d -= A[j * r + k] * A[j * r + k];
      if (!(d > 0)) {
        ok = false;
        break;
      }
      d = std::sqrt(d);
      A[j * r + j] = d;
      for (int i = j + 1; i < r; ++i) {
        double s = A[i * r + j];
#pragma omp simd reduction(- : s)
        for (int k = 0; k < j; ++k) s -= A[i * r + k] * A[j * r + k];
        A[i * r + j] = s / d;
      }
    }
    if (ok || ridge > base) break;
  }
  for (int row = 0; row < rows; ++row) {  // L L^T f = m: forward then backward substitution
    double* f = M + std::int64_t(row) * r;
    for (int i = 0; i < r; ++i) {
      double s = f[i];
#pragma omp simd reduction(- : s)
      for (int k = 0; k < i; ++k) s -= A[i * r + k] * f[k];
      f[i] = s / A[i * r + i];
    }
    for (int i = r - 1; i >= 0; --i) {
      double s = f[i];
#pragma omp simd reduction(- : s)
      for (int k = i + 1; k < r; ++k) s -= A[k * r + i] * f[k];
      f[i] = s / A[i * r + i];
    }
  }
  V.swap(A);
}

struct Als {
  int order;
  const int* dims;
  std::int64_t numel;
  std::vector<std::vector<int>> row_of, col_of;  // per mode: entry -> (i_n, index in K)

  Als(int order_, const int* dims_) : order(order_), dims(dims_), numel(1) {
    for (int n = 0; n < order; ++n) numel *= dims[n];
    row_of.assign(order, std::vector<int>(numel));
    col_of.assign(order, std::vector<int>(numel));
    std::vector<int> d(order);
    for (std::int64_t e = 0; e < numel; ++e) {
      std::int64_t rest = e;
      for (int n = order - 1; n >= 0; --n) {
        d[n] = int(rest % dims[n]);
        rest /= dims[n];
      }
      for (int n = 0; n < order; ++n) {
        int j = 0;
        for (int m = 0; m < order; ++m)
          if (m != n) j = j * dims[m] + d[m];
        row_of[n][e] = d[n];
        col_of[n][e] = j;
      }
    }
  }

  double mse(const double* X, int r, double tol, int max_iter, std::uint64_t key) const {
    std::vector<std::vector<double>> F(order);
    std::uint64_t k = 0;
    for (int n = 0; n < order; ++n) {
      F[n].resize(std::size_t(dims[n]) * r);
      for (double& x : F[n]) x = normal(key, k++);
    }
    std::vector<double> V(std::size_t(r) * r), G(std::size_t(r) * r), K, M, coeff(r);
    double err = INFINITY;
    for (int sweep = 0; sweep < max_iter; ++sweep) {
      for (int n = 0; n < order; ++n) {
        std::fill(V.begin(), V.end(), 1.0);
        // K: Khatri-Rao product of the other factors, built mode by mode (last fastest)
        K.assign(r, 1.0);
        std::int64_t rows = 1;
        for (int m = 0; m < order; ++m) {
          if (m == n) continue;
          const std::vector<double>& Fm = F[m];
          for (int a = 0; a < r; ++a)  // Gram matrix of factor m, Hadamard into V
            for (int c = 0; c < r; ++c) {
              double s = 0;
              for (int i = 0; i < dims[m]; ++i) s += Fm[i * r + a] * Fm[i * r + c];
              G[a * r + c] = s;
            }
          for (std::size_t i = 0; i < V.size(); ++i) V[i] *= G[i];
          std::vector<double> next(std::size_t(rows) * dims[m] * r);
          for (std::int64_t j = 0; j < rows; ++j)
            for (int i = 0; i < dims[m]; ++i)
              for (int c = 0; c < r; ++c)
                next[(j * dims[m] + i) * r + c] = K[j * r + c] * Fm[i * r + c];
          K.swap(next);
          rows *= dims[m];
        }
        M.assign(std::size_t(dims[n]) * r, 0.0);
        for (std::int64_t e = 0; e < numel; ++e) {
          const double x = X[e];
          if (x == 0) continue;
          double* mrow = M.data() + std::int64_t(row_of[n][e]) * r;
          const double* krow = K.data() + std::int64_t(col_of[n][e]) * r;
#pragma omp simd
          for (int c = 0; c < r; ++c) mrow[c] += x * krow[c];
        }
        solve_normal(V, r, M.data(), dims[n]);
        if (n < order - 1) {  // the paper's rescaling by the previous column norms
          for (int c = 0; c < r; ++c) {
            double s = 0;
            for (int i = 0; i < dims[n]; ++i) s += F[n][i * r + c] * F[n][i * r + c];
            coeff[c] = std::sqrt(s) > 0 ? std::sqrt(s) : 1.0;
          }
          for (int i = 0; i < dims[n]; ++i)
            for (int c = 0; c < r; ++c) M[i * r + c] /= coeff[c];
        }
        F[n].swap(M);
      }
      // the model: K (Khatri-Rao of modes 0..N-2) times the last factor
      const int last = order - 1;
      double sq = 0;
      for (std::int64_t e = 0; e < numel; ++e) {
        const double* krow = K.data() + std::int64_t(col_of[last][e]) * r;
        const double* frow = F[last].data() + std::int64_t(row_of[last][e]) * r;
        double v = 0;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < r; ++c) v += krow[c] * frow[c];
        sq += (X[e] - v) * (X[e] - v);
      }
      err = sq / double(numel);
      if (!(err >= tol)) break;  // below tol, or NaN: stop
    }
    return err;
  }
};

}  // namespace

namespace cpu {

double cp_als_mse(const double* tensor, int order, const int* dims, int r, double tol, int max_iter,
                  std::uint64_t seed, std::int64_t index, int restart) {
  const Als als(order, dims);
  return als.mse(tensor, r, tol, max_iter, stream_key(seed, index, r, restart));
}

void tensor_rank(const double* tensors, std::int64_t batch, int order, const int* dims, double tol,
                 int max_rank, int max_iter, int restarts, std::uint64_t seed,
                 std::int64_t* rank_out) {
  if (batch == 0) return;
  const Als als(order, dims);
  // CP-ALS with restarts and a bisection over ranks: heavy enough for any team
#pragma omp parallel for num_threads(cpu::team(batch, cpu::kMinFlopsPerThread)) schedule(dynamic, 1)
  for (std::int64_t b = 0; b < batch; ++b) {
    const double* X = tensors + b * als.numel;
    bool finite = true, zero = true;
    for (std::int64_t e = 0; e < als.numel; ++e) {
      finite &= std::isfinite(X[e]);
      zero &= std::abs(X[e]) <= 1e-8;
    }
    if (!finite) {
      rank_out[b] = -1;
      continue;
    }
    if (zero) {
      rank_out[b] = 0;
      continue;
    }
    auto fits = [&](int r) {
      for (int k = 0; k < restarts; ++k)
        if (als.mse(X, r, tol, max_iter, stream_key(seed, b, r, k)) < tol) return true;
      return false;
    };
    // PAPER.md §4.5's bisection: the smallest r in [1, max_rank] that fits, assuming the
    // fit is monotone in r; max_rank when none below it fits.
    int first = 0, last = max_rank - 1, found = max_rank;
    while (first <= last) {
      const int mid = (first + last) / 2;
      if (fits(mid + 1)) {
        found = mid + 1;
        last = mid - 1;
      } else {
        first = mid + 1;
      }
    }
    rank_out[b] = found;
  }
}

}  // namespace cpu
}  // namespace implicitreg
