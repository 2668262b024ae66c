"""Baselines: what a problem's solution would be without a trained factorization, to set
beside what gradient descent finds: the fit a norm would pick (min_norm) and, for tensor
completion, the memorizer."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ._checks import integer, positive
from .problems import Completion, Sensing, TensorCompletion

__all__ = ["MinNorm", "memorizer", "min_norm"]


def memorizer(problem: TensorCompletion) -> np.ndarray:
    """The "linear" baseline: observed entries copied, all others 0
    (B, d_1, ..., d_N) — what gradient descent on the tensor itself from zero converges to."""
    if not isinstance(problem, TensorCompletion):
        raise TypeError(
            f"problem: expected implicitreg.tensor_completion(...), got {type(problem).__name__}"
        )
    shape = (problem.batch,) + problem.dims
    return np.where(
        np.broadcast_to(problem.masks, shape), np.broadcast_to(problem.targets, shape), 0.0
    )


@dataclass
class MinNorm:
    """The fits a norm picks, per problem of a batch (float64).

    matrices (B, m, n); value (B,) their norm; gap (B,) the certified relative duality gap
    (nuclear: (norm - dual bound) / norm, an upper bound on the relative distance to the
    optimum; 0 for the Frobenius closed form; NaN for a Schatten quasi-norm, which has no
    certificate); iterations (B,); status (B,): "exact" (closed form), "optimal" (gap below
    tol), "max_iter" (stopped by max_iter) or "local" (a local minimizer: Schatten p < 1 is not
    convex, and iteratively reweighted least squares finds a stationary point).
    """

    norm: str
    matrices: np.ndarray
    value: np.ndarray
    gap: np.ndarray
    iterations: np.ndarray
    status: np.ndarray

    @property
    def local(self) -> bool:
        """Whether the fits are local minimizers only (a Schatten quasi-norm, p < 1)."""
        return self.norm.startswith("schatten")


class _Affine:
    """The problem's constraint set as least squares: the matrices X whose fit is as good as
    any, {X : A*A X = A*b} (for completion, the observed entries equal to the targets). It
    projects onto that set and onto the range of A* (the dual certificates' subspace), and
    gives the set's minimum-Frobenius-norm member."""

    def __init__(self, problem: Completion | Sensing) -> None:
        B = problem.batch
        m, n = problem.shape
        self.shape = (B, m, n)
        self.mask: np.ndarray | None = None  # completion: the observed entries
        if isinstance(problem, Completion):
            self.mask = np.broadcast_to(problem.masks, self.shape)
            self.x0 = np.where(self.mask, np.broadcast_to(problem.targets, self.shape), 0.0)
            return
        A = np.broadcast_to(problem.A, (B,) + problem.A.shape[1:]).reshape(B, -1, m * n)
        y = np.broadcast_to(problem.y, (B, A.shape[1]))
        # the rows of A's SVD that span its range: pinv(A) = V diag(1/s) U^T on them
        U, s, Vh = np.linalg.svd(A, full_matrices=False)
        keep = s > s[:, :1] * max(A.shape[1:]) * np.finfo(np.float64).eps
        self.V = np.where(keep[:, None, :], np.swapaxes(Vh, 1, 2), 0.0)  # (B, mn, r)
        coef = np.where(keep, np.einsum("bkr,bk->br", U, y) / np.where(keep, s, 1.0), 0.0)
        self.x0 = np.einsum("bnr,br->bn", self.V, coef).reshape(self.shape)

    def row_space(self, Y: np.ndarray, idx) -> np.ndarray:
        """Y's projection onto the range of A* (problems idx)."""
        if self.mask is not None:
            return np.where(self.mask[idx], Y, 0.0)
        V = self.V[idx]
        y = Y.reshape(V.shape[0], -1)
        return np.einsum("bnr,br->bn", V, np.einsum("bnr,bn->br", V, y)).reshape(Y.shape)

    def null_space(self) -> list[np.ndarray]:
        """Sensing: per problem an orthonormal basis (mn, mn - r) of A's null space (made
        once)."""
        if not hasattr(self, "_null"):
            self._null = []
            for V in self.V:
                r = int((np.abs(V).sum(axis=0) > 0).sum())
                self._null.append(np.linalg.svd(V[:, :r].T, full_matrices=True)[2][r:].T)
        return self._null

    def project(self, Z: np.ndarray, idx) -> np.ndarray:
        """The nearest member of the constraint set to Z (problems idx)."""
        return Z - self.row_space(Z, idx) + self.x0[idx]


def _nuclear(s: np.ndarray) -> np.ndarray:
    return s.sum(axis=-1)


def _svt(X: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Singular value thresholding: X with its singular values shrunk by tau (per problem)."""
    U, s, Vh = np.linalg.svd(X, full_matrices=False)
    return (U * np.maximum(s - tau[:, None], 0.0)[:, None, :]) @ Vh


def _min_nuclear(c: _Affine, tol: float, max_iter: int, check_every: int = 10):
    """ADMM on min ||Z||_* s.t. X in the constraint set, X = Z (scaled form, over-relaxed by 1.6,
    a penalty rho per problem balanced between the primal and dual residuals). Every
    check_every iterations each running problem is certified: the primal bound p = ||P(Z)||_*
    (P onto the set: a feasible point) and the dual bound d = <Y, x0> from Y = rho U projected
    onto the range of A* and scaled into the spectral-norm unit ball (a feasible dual point:
    every Y with ||Y||_2 <= 1 in that range bounds the optimum from below by <Y, x0>). It stops
    when (p - d) / p < tol."""
    B = c.shape[0]
    # Solved at unit scale, then rescaled: the set is affine in the observations, so dividing
    # x0 by a problem's scale divides the whole set (and the optimum) by it.
    scale = np.linalg.norm(c.x0.reshape(B, -1), axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    x0 = c.x0 = c.x0 / scale[:, None, None]
    Z = x0.copy()
    U = np.zeros_like(Z)
    rho = np.ones(B)
    X_best = x0.copy()
    gap = np.full(B, np.inf)
    iters = np.zeros(B, dtype=np.int64)
    run = np.arange(B)
    for it in range(1, max_iter + 1):
        if run.size == 0:
            break
        Zr, Ur, r = Z[run], U[run], rho[run]
        X = c.project(Zr - Ur, run)
        Xr = 1.6 * X - 0.6 * Zr  # over-relaxation (Boyd et al. 2011, 3.4.3)
        Z_new = _svt(Xr + Ur, 1.0 / r)
        Ur = Ur + Xr - Z_new
        # residual balancing (Boyd et al. 2011, 3.4.1): the scaled dual U moves with rho
        prim = np.linalg.norm((X - Z_new).reshape(run.size, -1), axis=1)
        dual = r * np.linalg.norm((Z_new - Zr).reshape(run.size, -1), axis=1)
        up, down = prim > 10 * dual, dual > 10 * prim
        factor = np.where(up, 2.0, np.where(down, 0.5, 1.0))
        Ur = Ur / factor[:, None, None]
        r = r * factor
        Z[run], U[run], rho[run] = Z_new, Ur, r
        iters[run] = it
        if it % check_every and it != max_iter:
            continue
        P = c.project(Z_new, run)
        p = _nuclear(np.linalg.svd(P, compute_uv=False))
        Y = c.row_space(r[:, None, None] * Ur, run)
        Y = Y / np.maximum(1.0, np.linalg.norm(Y, ord=2, axis=(1, 2)))[:, None, None]
        d = np.einsum("bij,bij->b", Y, x0[run])
        g = np.where(p > 0, (p - d) / np.where(p > 0, p, 1.0), 0.0)
        better = g < gap[run]
        X_best[run[better]] = P[better]
        gap[run[better]] = g[better]
        run = run[gap[run] >= tol]
    matrices = X_best * scale[:, None, None]
    value = _nuclear(np.linalg.svd(matrices, compute_uv=False))
    status = np.where(gap < tol, "optimal", "max_iter")
    return matrices, value, np.maximum(gap, 0.0), iters, status


def _min_schatten(c: _Affine, p: float, max_iter: int):
    """Iteratively reweighted least squares for min sum_i sigma_i^p over the constraint set
    (Mohan & Fazel 2012): X_{k+1} minimizes tr(W_k X^T X) over the set, with
    W_k = (X_k^T X_k + g_k I)^(p/2 - 1) and g_k shrinking by half per iteration down to
    1e-10 sigma_1(x0)^2. Each step is a weighted minimum-norm fit: per row for completion,
    one linear system for sensing. A problem stops once g_k is at its floor and an iteration
    moves it by at most 1e-12 sigma_1(x0), whatever its batch: a stationary point, not a
    certified minimum."""
    B, m, n = c.shape
    X = c.x0.copy()
    s1 = np.maximum(np.linalg.norm(X, ord=2, axis=(1, 2)), 1e-300)
    g = s1**2
    g_min = 1e-10 * g
    iters = np.zeros(B, dtype=np.int64)
    run = np.arange(B)
    for it in range(1, max_iter + 1):
        if run.size == 0:
            break
        Xr = X[run]
        evals, evecs = np.linalg.eigh(np.swapaxes(Xr, 1, 2) @ Xr + g[run, None, None] * np.eye(n))
        W = (evecs * np.maximum(evals, 1e-300)[:, None, :] ** (p / 2 - 1)) @ np.swapaxes(
            evecs, 1, 2
        )
        X_new = _weighted_fit(c, W, run)
        change = np.linalg.norm((X_new - Xr).reshape(run.size, -1), axis=1)
        X[run] = X_new
        iters[run] = it
        settled = (g[run] == g_min[run]) & (change <= 1e-12 * s1[run])
        g[run] = np.maximum(g[run] / 2, g_min[run])
        run = run[~settled]
    s = np.linalg.svd(X, compute_uv=False)
    value = (s**p).sum(axis=1) ** (1 / p)
    return X, value, np.full(B, np.nan), iters, np.full(B, "local")


def _weighted_fit(c: _Affine, W: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """argmin tr(W X^T X) = sum of the rows' x W x^T over the constraint set, for problems
    idx (W per problem, n x n, symmetric positive definite)."""
    _, m, n = c.shape
    X = c.x0[idx].copy()
    if c.mask is not None:
        for k, b in enumerate(idx):
            for i in range(m):
                o = c.mask[b, i]
                u = ~o
                if not u.any():
                    continue
                # the row's unobserved entries minimize x W x^T given the observed ones
                X[k, i, u] = -np.linalg.solve(W[k][np.ix_(u, u)], W[k][np.ix_(u, o)] @ X[k, i, o])
        return X
    # sensing: min x^T Q x s.t. A x = y (x = vec(X) row-major: Q = I_m kron W); the set is
    # x0 + null(A): x = x0 + N z with N an orthonormal basis of A's null space
    null = c.null_space()
    for k, b in enumerate(idx):
        N = null[b]
        if N.shape[1] == 0:
            continue
        x0 = c.x0[b].reshape(-1)
        Q = np.kron(np.eye(m), W[k])
        z = -np.linalg.solve(N.T @ Q @ N, N.T @ Q @ x0)
        X[k] = (x0 + N @ z).reshape(m, n)
    return X


def schatten_p(norm, name: str = "norm") -> float:
    """The norm names min_norm takes, checked: p of "schatten:p" (0 < p < 1), 2 for
    "frobenius", 1 for "nuclear"; TypeError or ValueError naming `name` for anything else."""
    if not isinstance(norm, str):
        raise TypeError(f"{name}: expected a string, got {type(norm).__name__} {norm!r}")
    if norm in ("frobenius", "nuclear"):
        return 2.0 if norm == "frobenius" else 1.0
    m = re.fullmatch(r"schatten:([0-9.eE+-]+)", norm)
    try:
        p = float(m.group(1)) if m else np.nan
    except ValueError:
        p = np.nan
    if not 0 < p < 1:
        raise ValueError(
            f"{name}: expected 'frobenius', 'nuclear' or 'schatten:p' with 0 < p < 1, got {norm!r}"
        )
    return p


def min_norm(
    problem: Completion | Sensing,
    norm: str = "frobenius",
    tol: float = 1e-8,
    max_iter: int = 20_000,
) -> MinNorm:
    """The fit a norm picks: for each problem of the batch, the matrix of least norm among
    those that fit its observations best (for completion, the observed entries exactly; for
    sensing, the least-squares fits of y).

    norm: "frobenius" (the closed form: the observed entries and zeros for completion, the
    pseudo-inverse fit for sensing), "nuclear" (a convex problem, solved by ADMM to a
    certified relative duality gap below tol, or until max_iter iterations) or "schatten:p"
    with 0 < p < 1 (a quasi-norm: a local minimizer by iteratively reweighted least squares,
    at most max_iter iterations). Computed on the host in float64; returns a MinNorm.
    """
    if not isinstance(problem, (Completion, Sensing)):
        raise TypeError(
            "problem: expected implicitreg.completion(...) or implicitreg.sensing(...), got "
            f"{type(problem).__name__}"
        )
    p = schatten_p(norm)
    tol = positive(tol, "tol")
    max_iter = integer(max_iter, "max_iter", minimum=1)
    c = _Affine(problem)
    if norm == "frobenius":
        X = c.x0
        B = X.shape[0]
        out = (
            X,
            np.linalg.norm(X.reshape(B, -1), axis=1),
            np.zeros(B),
            np.zeros(B, dtype=np.int64),
            np.full(B, "exact"),
        )
    elif norm == "nuclear":
        out = _min_nuclear(c, tol, max_iter)
    else:
        out = _min_schatten(c, p, max_iter)
    return MinNorm(norm, *out)
