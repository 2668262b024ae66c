"""Rank and norm metrics of batches of matrices, from their singular values.

Every function takes matrices X of shape (..., m, n) or, by keyword, their precomputed
singular values `svals` of shape (..., k) (descending, as svdvals gives them), and returns
one float64 value per matrix, shape (...). The singular values come from the compiled core
(backend="cpu": 2x2 in closed form, other sizes by Jacobi or bidiagonal QR), from the same
math on the GPU (backend="cuda") or from LAPACK (backend="numpy", the oracle). A matrix with
a NaN or infinite entry gets NaN.

Arrays come back in the module they went in with: CuPy input runs on the cuda backend (the
default for it) and gives CuPy output with no host round trip; NumPy input with
backend="cuda" is copied to the device once and the results come back as NumPy.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import ops
from ._backend import array_module, is_device, to_device, to_host
from ._checks import choice, integer, real_array
from ._codes import LIMITS, METRIC_KINDS, SVD_INFO_NAMES

__all__ = [
    "balancedness",
    "dist_to_rank",
    "effective_rank",
    "frobenius",
    "nuclear",
    "rank",
    "schatten",
    "spectral",
    "svd",
    "svdvals",
]

MAX_SWEEPS = LIMITS["max_sweeps"]  # Jacobi sweeps before a matrix is reported not_converged
# With vectors every size goes through Jacobi, without QR preconditioning: graded matrices of
# a few hundred columns take 40 to 80 sweeps.
SVD_MAX_SWEEPS = 2 * MAX_SWEEPS

# fit() metric names -> kernel kinds; "entry:i,j", "schatten:p" and "dist_rank:r" take a
# parameter after the colon.
KINDS = METRIC_KINDS
NAMES = (
    "loss",
    "entry:i,j",
    "det",
    "svals",
    "fro",
    "nuc",
    "spectral",
    "schatten:p",
    "erank",
    "rank",
    "dist_rank:r",
    "balancedness",
    "recon_error",
)
_PARAM = re.compile(r"^(entry|schatten|dist_rank):(.+)$")


def det(factors) -> np.ndarray:
    """(B,) det(W_N ... W_1) in float64: the product of the factors' determinants when every
    factor is square (its sign exact even where the product rounds to rank one), else from
    the float64 product."""
    f64 = [np.asarray(W, dtype=np.float64) for W in factors]
    with np.errstate(all="ignore"):  # a diverged problem's det is +-inf, as in the core
        if all(W.shape[1] == W.shape[2] for W in f64):
            out = np.ones(f64[0].shape[0])
            for W in f64:
                out = out * np.linalg.det(W)
            return out
        E = f64[0]
        for W in f64[1:]:
            E = W @ E
        return np.linalg.det(E)


def _backend(backend: str | None, x=None) -> str:
    """The backend for input x: None picks cuda for a device array and cpu otherwise; a device
    array runs on cuda only."""
    if backend is None:
        return "cuda" if is_device(x) else "cpu"
    backend = choice(backend, "backend", ("cpu", "numpy", "cuda"))
    if is_device(x) and backend != "cuda":
        raise TypeError(
            f"backend: a device array ({type(x).__name__}) runs on backend 'cuda', "
            f"got backend={backend!r}; pass the array's .get() for another backend"
        )
    return backend


def _real(x, name: str):
    """x as a real float32/float64 array, C-contiguous, in its own array module (a device
    array stays on the device)."""
    if is_device(x):
        a = to_device(x)
        if a.dtype == np.bool_ or a.dtype.kind not in "iuf":
            raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    else:
        a = real_array(x, name)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a if a.flags.c_contiguous else a.copy(order="C")  # (keeps a 0-d array 0-d)


def _matrices(X, name: str = "X"):
    a = _real(X, name)
    if a.ndim < 2:
        raise ValueError(f"{name}: expected matrices of shape (..., m, n), got shape {a.shape}")
    return a


def svdvals(
    X: ArrayLike,
    backend: str | None = None,
    return_info: bool = False,
    max_sweeps: int = MAX_SWEEPS,
) -> Any:  # (..., k) values, or (values, info) with return_info; CuPy for CuPy input
    """Singular values of X (..., m, n), shape (..., min(m, n)), descending, in X's float
    dtype (integers become float64).

    cpu: 2x2 in closed form with the small value as `|det| / sigma_1` (relative accuracy kept
    when sigma_1 >> sigma_2); up to 11 columns (of X or X^T) one-sided Jacobi, from 12
    bidiagonalization and implicit-shift QR (Jacobi as the fallback); within a few ulps *
    sigma_1 either way, float32 reduced in float64; a small sigma_k keeps its relative accuracy
    down to sigma_k / sigma_1 ~ 1.5e-154 (its square underflows below). A matrix with a
    non-finite entry gets
    NaN. return_info=True also returns an array (...) of "ok" | "not_converged" |
    "non_finite"; without it, a matrix that reached the Jacobi sweep cap (max_sweeps, default
    40: far more than the 5 to 8 that small matrices take) raises a RuntimeWarning.
    """
    backend = _backend(backend, X)
    a = _matrices(X)
    max_sweeps = integer(max_sweeps, "max_sweeps", minimum=1)
    lead, (m, n) = a.shape[:-2], a.shape[-2:]
    s, info = ops.svdvals(a.reshape((math.prod(lead), m, n)), backend, max_sweeps)
    s = s.reshape(lead + (min(m, n),))
    names = _sweep_info(info, lead, return_info, "svdvals", "values", max_sweeps)
    return (s, names) if return_info else s


def _sweep_info(info, lead, return_info: bool, fn: str, what: str, max_sweeps: int):
    """The names of info (host strings, shape lead) with return_info; else None, after a
    RuntimeWarning (at the caller's caller) for the matrices that reached the sweep cap."""
    if return_info:
        return np.asarray(SVD_INFO_NAMES, dtype=str)[to_host(info)].reshape(lead)
    bad = int((info == 1).sum())
    if bad:
        warnings.warn(
            f"{fn}: {bad} matrices did not converge within {max_sweeps} Jacobi sweeps; their "
            f"{what} are the last iterates",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def svd(
    X: ArrayLike,
    backend: str | None = None,
    return_info: bool = False,
    max_sweeps: int = SVD_MAX_SWEEPS,
) -> Any:  # (U, S, Vh), or (U, S, Vh, info) with return_info; CuPy for CuPy input
    """The thin SVD of X (..., m, n) as numpy.linalg.svd(X, full_matrices=False): U
    (..., m, k), S (..., k) descending, Vh (..., k, n), k = min(m, n), in X's float dtype.

    cpu and cuda (the same kernels): one-sided Jacobi in float64 with the rotations
    accumulated, so U and Vh are orthonormal to working precision; a zero singular value gets
    a left vector that completes U to orthonormal columns. numpy: LAPACK. A non-finite matrix
    gets NaN everywhere; return_info and max_sweeps as for svdvals (default 80: graded
    matrices of a few hundred columns take 40 to 80 sweeps)."""
    backend = _backend(backend, X)
    a = _matrices(X)
    max_sweeps = integer(max_sweeps, "max_sweeps", minimum=1)
    lead, (m, n) = a.shape[:-2], a.shape[-2:]
    k = min(m, n)
    U, s, Vh, info = ops.svd(a.reshape((math.prod(lead), m, n)), backend, max_sweeps)
    out = (U.reshape(lead + (m, k)), s.reshape(lead + (k,)), Vh.reshape(lead + (k, n)))
    names = _sweep_info(info, lead, return_info, "svd", "factors", max_sweeps)
    return out + (names,) if return_info else out


def _svals(X, svals, backend: str | None):
    """(singular values (..., k), (m, n) when matrices were given, the backend to use)."""
    if (X is None) == (svals is None):
        raise TypeError("expected exactly one of X (matrices) or svals= (singular values)")
    backend = _backend(backend, X if svals is None else svals)
    if X is not None:
        a = _matrices(X)
        return svdvals(a, backend), a.shape[-2:], backend
    s = _real(svals, "svals")
    if s.ndim < 1:
        raise ValueError(f"svals: expected shape (..., k), got shape {s.shape}")
    with np.errstate(invalid="ignore"):
        if bool((s < 0).any()) or bool((s[..., 1:] > s[..., :-1]).any()):
            raise ValueError(
                "svals: expected non-negative singular values in descending order "
                "along the last axis"
            )
    return s, None, backend


def _compute(
    s: np.ndarray, name: str, param: float = 0.0, rtol: float = 0.0, backend: str = "cpu"
) -> np.ndarray:
    lead, k = s.shape[:-1], s.shape[-1]
    kinds = np.array([KINDS[name]], dtype=np.int32)
    params = np.array([[param, rtol]], dtype=np.float64)
    out = ops.svals_metrics(s.reshape((math.prod(lead), k)), kinds, params, backend)
    return out[0].reshape(lead)


def frobenius(
    X: ArrayLike | None = None, *, svals: ArrayLike | None = None, backend: str | None = None
) -> np.ndarray:
    """||X||_F = sqrt(sum sigma_i^2)."""
    s, _, backend = _svals(X, svals, backend)
    return _compute(s, "fro", backend=backend)


def nuclear(
    X: ArrayLike | None = None, *, svals: ArrayLike | None = None, backend: str | None = None
) -> np.ndarray:
    """||X||_* = sum sigma_i."""
    s, _, backend = _svals(X, svals, backend)
    return _compute(s, "nuc", backend=backend)


def spectral(
    X: ArrayLike | None = None, *, svals: ArrayLike | None = None, backend: str | None = None
) -> np.ndarray:
    """||X||_2 = sigma_1 (0 for an empty matrix)."""
    s, _, backend = _svals(X, svals, backend)
    return _compute(s, "spectral", backend=backend)


def _p(p) -> float:
    if p is None:
        raise TypeError("p: expected a number > 0, got None")
    p = real_array(p, "p")
    if p.ndim != 0 or not (np.isfinite(p) and p > 0):
        raise ValueError(f"p: expected a finite number > 0, got {p}")
    return float(p)


def schatten(
    X: ArrayLike | None = None,
    p: float | None = None,
    *,
    svals: ArrayLike | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """(sum sigma_i^p)^(1/p) for any p > 0: a norm for p >= 1 (p = 1 nuclear, p = 2
    Frobenius), a quasi-norm for p < 1."""
    p = _p(p)
    s, _, backend = _svals(X, svals, backend)
    return _compute(s, "schatten", p, backend=backend)


def effective_rank(
    X: ArrayLike | None = None, *, svals: ArrayLike | None = None, backend: str | None = None
) -> np.ndarray:
    """Roy & Vetterli's effective rank exp(-sum p_i ln p_i), p_i = sigma_i / sum sigma_j over
    the non-zero sigma_i: 1 <= erank <= rank; 0 for the zero matrix."""
    s, _, backend = _svals(X, svals, backend)
    return _compute(s, "erank", backend=backend)


def rank(
    X: ArrayLike | None = None,
    tol: float | None = None,
    *,
    svals: ArrayLike | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Numerical rank #{sigma_i > tol}, int64; -1 for a matrix with a non-finite entry.

    tol=None: sigma_1 * max(m, n) * eps(dtype), where (m, n) is the matrix shape (k for
    singular values given as svals=, which is the same for square matrices)."""
    s, shape, backend = _svals(X, svals, backend)
    if tol is None:
        size = max(shape) if shape is not None else s.shape[-1]
        param, rtol = 0.0, size * float(np.finfo(s.dtype).eps)
    else:
        t = real_array(tol, "tol")
        if t.ndim != 0 or not (np.isfinite(t) and t >= 0):
            raise ValueError(f"tol: expected a finite number >= 0 or None, got {tol}")
        param, rtol = float(t), 0.0
    r = _compute(s, "rank", param, rtol, backend)
    xp = array_module("cuda") if is_device(r) else np
    return xp.where(xp.isnan(r), -1, r).astype(np.int64)


def dist_to_rank(
    X: ArrayLike | None = None,
    r: int | None = None,
    *,
    svals: ArrayLike | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Frobenius distance to the nearest matrix of rank <= r (Eckart-Young):
    sqrt(sum_{i > r} sigma_i^2)."""
    if r is None:
        raise TypeError("r: expected an integer >= 0, got None")
    r = integer(r, "r", minimum=0)
    s, _, backend = _svals(X, svals, backend)
    return _compute(s, "dist_rank", r, backend=backend)


def balancedness(factors: Sequence[ArrayLike], backend: str | None = None) -> np.ndarray:
    """max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F of factors [W_1, ..., W_N], each
    (B, d_j, d_{j-1}); float64 (B,). Zero for balanced factors (and at depth 1)."""
    if not isinstance(factors, (list, tuple)) or len(factors) == 0:
        raise TypeError(
            f"factors: expected a non-empty list [W_1, ..., W_N], got {type(factors).__name__}"
        )
    backend = _backend(backend, factors[0])
    arrays = [_real(W, f"factors[{j}]") for j, W in enumerate(factors)]
    dtype = np.float32 if all(a.dtype == np.float32 for a in arrays) else np.float64
    B = arrays[0].shape[0] if arrays[0].ndim == 3 else None
    for j, a in enumerate(arrays):
        if a.ndim != 3 or a.shape[0] != B:
            raise ValueError(
                f"factors[{j}]: expected shape (B, d_{j + 1}, d_{j}) with the "
                f"batch of factors[0] ({B}), got {a.shape}"
            )
        if j and a.shape[2] != arrays[j - 1].shape[1]:
            raise ValueError(
                f"factors[{j}]: expected {arrays[j - 1].shape[1]} columns to chain "
                f"with factors[{j - 1}], got shape {a.shape}"
            )
    arrays = [a.astype(dtype, copy=False) for a in arrays]  # C-contiguous already (_real)
    return ops.balancedness(arrays, backend)


def parse(name: str, shape: tuple[int, int], dtype) -> tuple[int, float, float, int]:
    """(kind, param, rtol, rows) of a fit() metric name for end-to-end matrices of `shape`
    in `dtype`; ValueError naming the metric when it is unknown or its parameter is bad."""
    if not isinstance(name, str):
        raise TypeError(f"metrics: expected metric names, got {name!r}")
    m, n = shape
    base, arg = name, ""
    hit = _PARAM.match(name)
    if hit:
        base, arg = hit.groups()
    if base not in KINDS or bool(hit) != (base in ("entry", "schatten", "dist_rank")):
        raise ValueError(f"metrics: unknown metric {name!r}; known: {', '.join(NAMES)}")
    kind, param, rtol = KINDS[base], 0.0, 0.0
    try:
        if base == "entry":
            i, j = (int(v) for v in arg.split(","))
            if not (0 <= i < m and 0 <= j < n):
                raise ValueError(f"metrics: {name!r} is outside the {m} x {n} matrix")
            param = float(i * n + j)
        elif base == "schatten":
            param = float(arg)
            if not (np.isfinite(param) and param > 0):
                raise ValueError(f"metrics: {name!r}: expected p > 0")
        elif base == "dist_rank":
            param = float(int(arg))
            if param < 0:
                raise ValueError(f"metrics: {name!r}: expected r >= 0")
    except ValueError as exc:
        if str(exc).startswith("metrics:"):
            raise
        raise ValueError(
            f"metrics: cannot read the parameter of {name!r} "
            f"(expected {NAMES[list(KINDS).index(base)]})"
        ) from exc
    if base == "det" and m != n:
        raise ValueError(f"metrics: 'det' needs a square problem, got ({m}, {n})")
    if base == "rank":
        rtol = max(m, n) * float(np.finfo(dtype).eps)
    return kind, param, rtol, min(m, n) if base == "svals" else 1


def specs(metrics, problem, dtype) -> tuple[list[str], np.ndarray, np.ndarray, list[int]]:
    """fit()'s metrics for `problem`'s end-to-end matrices in `dtype`: (names without
    repeats, kinds, params, rows per name), checked before any work."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    if not isinstance(metrics, (list, tuple)):
        raise TypeError(f"metrics: expected a list of metric names, got {type(metrics).__name__}")
    names = list(dict.fromkeys(metrics))
    parsed = [parse(name, problem.shape, dtype) for name in names]
    if "recon_error" in names and problem.truth is None:
        raise ValueError(
            "metrics: 'recon_error' needs a problem with a known ground truth "
            "(truth=...), and this one has none"
        )
    kinds = np.array([p[0] for p in parsed], dtype=np.int32)
    params = np.array([p[1:3] for p in parsed], dtype=np.float64).reshape(-1, 2)
    return names, kinds, params, [p[3] for p in parsed]


RANK_CRITERIA = ("relative", "absolute")
RANK_TOL = {"relative": 1e-5, "absolute": 1e-6}  # tensor_rank's default tol per criterion


def tensor_rank(
    T: ArrayLike,
    tol: float | None = None,
    restarts: int = 10,
    seed: int = 0,
    max_iter: int = 1000,
    max_rank: int | None = None,
    backend: str | None = None,
    order: int | None = None,
    criterion: str = "relative",
) -> np.ndarray:
    """Estimated CP ranks (int64) of a batch of tensors.

    T: tensors of order N, 2 <= N <= 6. With order=N the last N axes are each tensor and any
    leading axes the batch (none: one tensor, a 0-d result), as svdvals takes (..., m, n).
    Without it the first axis is the batch, (B, d_1, ..., d_N) as tensor_completion takes it;
    a 3-d T is then refused, being as likely one order-3 tensor as a batch of matrices.

    As in the paper: the smallest r in [1, max_rank] (default prod(d) / max(d), the largest CP
    rank) found by bisection whose CP-ALS fit (at most max_iter sweeps) is good enough; -1 for
    a tensor with a NaN or inf entry. criterion "relative" (default): good enough is a mean
    squared error below tol (default 1e-5) times the tensor's mean square, whatever its
    scale; only the zero tensor has rank 0. "absolute", the paper's rule: below tol (default
    1e-6) itself, and rank 0 when every `|entry| <= 1e-8` (so a rank-2 tensor scaled by 1e-4
    reads as rank 1). Each tried r gets up to `restarts` seeded random starts and stops at the
    first that fits. With the defaults, 508 of 512 random unit-norm CP tensors of known rank
    (orders 3 and 4, ranks 2 to 4, cubic and not) get their exact rank and none a lower one,
    against 456 with the paper's single start; the extra starts run only where a rank does
    not fit, about 7x the time in all. Starts depend only on (seed, b, r, restart): the
    result is deterministic. Computed in float64, one tensor per thread.
    backend: None picks cuda for a CuPy T, else cpu. On cuda the CPU kernel runs (see
    ops.tensor_rank): T crosses to the host once for the whole batch and the ranks come back
    as CuPy, equal to the cpu backend's.
    """
    backend = _backend(backend, T)
    if backend == "cuda":
        array_module("cuda")  # RuntimeError saying why, where the backend cannot run
    a = _real(T, "T")
    choice(criterion, "criterion", RANK_CRITERIA)
    if order is None:
        if a.ndim == 3:
            raise ValueError(
                f"T: shape {a.shape} is one order-3 tensor or a batch of "
                f"{a.shape[0]} matrices: pass order=3 (one tensor) or order=2 "
                "(a batch of matrices)"
            )
        if a.ndim < 3 or a.ndim > 7:
            raise ValueError(
                f"T: expected a batch of tensors (B, d_1, ..., d_N) with 2 <= N "
                f"<= 6, got shape {a.shape}"
            )
        order = a.ndim - 1
    else:
        order = _bounded(order, "order", 2, 6)
        if a.ndim < order:
            raise ValueError(
                f"T: expected tensors of order {order} (and any batch axes "
                f"before them), got shape {a.shape}"
            )
    lead, dims = a.shape[: a.ndim - order], a.shape[a.ndim - order :]
    if min(dims) < 1:
        raise ValueError(f"T: expected non-empty tensors, got shape {a.shape}")
    if tol is None:
        tol = RANK_TOL[criterion]
    t = real_array(tol, "tol")
    if t.ndim != 0 or not (np.isfinite(t) and t > 0):
        raise ValueError(f"tol: expected a number > 0, got {tol!r}")
    tol = float(t)
    restarts = _bounded(restarts, "restarts", 1, 2**31 - 1)
    max_iter = _bounded(max_iter, "max_iter", 1, 2**31 - 1)
    seed = _bounded(seed, "seed", 0, 2**64 - 1)
    top = int(np.prod(dims)) // max(dims)
    max_rank = top if max_rank is None else _bounded(max_rank, "max_rank", 1, 2**31 - 1)
    xp = array_module("cuda") if is_device(a) else np
    X = xp.ascontiguousarray(a.reshape(int(np.prod(lead)), int(np.prod(dims))), dtype=np.float64)
    if criterion == "relative":  # each tensor scaled to mean square 1: tol is then relative
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            top_abs = xp.abs(X).max(axis=1, keepdims=True)  # first, so squares cannot overflow
            ok = (top_abs > 0) & xp.isfinite(top_abs)  # else zero (rank 0) or non-finite (-1)
            Y = X / xp.where(ok, top_abs, 1.0)
            X = xp.where(ok, Y / xp.sqrt(xp.mean(Y * Y, axis=1, keepdims=True)), X)
    ranks = ops.tensor_rank(X, dims, tol, max_rank, max_iter, restarts, seed, backend)
    return ranks.reshape(lead)


def _bounded(x, name: str, low: int, high: int) -> int:
    x = integer(x, name, minimum=low)
    if x > high:
        raise ValueError(f"{name}: expected an integer <= {high}, got {x}")
    return x
