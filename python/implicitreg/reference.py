"""Pure-NumPy implementation of every kernel: the oracle of the tests and the baseline of the
benchmarks, with exactly the semantics of the compiled backends (a real backend: pick it with
backend="numpy"). Batched over problems with NumPy; Python loops only over steps and layers.
"""

from __future__ import annotations

import numpy as np

from ._codes import (
    ADAM,
    CONVERGED,
    DIVERGED,
    GD,
    GROUP_RMSPROP,
    METRIC_KINDS,
    RUNNING,
    SVD_NON_FINITE,
)


def _forward(factors: list[np.ndarray]) -> list[np.ndarray]:
    """Prefix products [P_1 = W_1, P_2 = W_2 W_1, ..., P_N = E]."""
    P = [factors[0]]
    for W in factors[1:]:
        P.append(W @ P[-1])
    return P


def _residual(E, target, mask, A, y):
    """(G = dloss/dE, loss) with loss = 1/2 sum of squared residuals per problem."""
    if target is not None:
        G = np.where(mask, E - target, 0.0).astype(E.dtype, copy=False)
        return G, 0.5 * np.einsum("bij,bij->b", G, G)
    B = E.shape[0]
    A = np.broadcast_to(A, (B,) + A.shape[1:])
    r = np.einsum("bkij,bij->bk", A, E) - y
    return np.einsum("bk,bkij->bij", r, A), 0.5 * np.einsum("bk,bk->b", r, r)


def dmf_loss(factors, target, mask, A, y):
    """Loss (B,) and end-to-end product (B, m, n) of the factors."""
    with np.errstate(all="ignore"):
        E = _forward(factors)[-1].copy()  # depth 1: the prefix product is the live factor
        return _residual(E, target, mask, A, y)[1], E


def _record_crossings(factors, loss, run, step, thresholds, crossed_at, snapshots):
    """First crossings (see _core.dmf_step): every running problem whose loss is below a
    threshold it has not crossed yet gets this step and, when asked, these factors."""
    new = run[:, None] & (loss[:, None] < thresholds[None, :]) & (crossed_at < 0)
    if not new.any():
        return
    crossed_at[new] = step
    if snapshots is not None:
        b, k = np.nonzero(new)
        for W, S in zip(factors, snapshots, strict=True):
            S[b, k] = W[b]


def _freeze(loss, run, tol, step, status, frozen_at):
    """Freezes the running problems whose loss is non-finite (diverged) or below tol
    (converged) at `step`; returns the problems still running."""
    bad = run & ~np.isfinite(loss)
    done = run & np.isfinite(loss) & (loss < tol)
    status[bad], frozen_at[bad] = DIVERGED, step
    status[done], frozen_at[done] = CONVERGED, step
    return status == RUNNING


def _finite(arrays) -> np.ndarray:
    """(B,) True where every entry of every (B, ...) array is finite."""
    fin = np.ones(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        fin &= np.isfinite(a).reshape(a.shape[0], -1).all(axis=1)
    return fin


def _optimize(factors, grads, lr, optimizer):
    """(next factors, next optimizer state, finite (B,)) of one update from the gradients
    (see _core.dmf_step's optimizer); the state is returned, not yet written."""
    dtype = factors[0].dtype
    kind = GD if optimizer is None else optimizer["kind"]
    lr = np.broadcast_to(np.asarray(lr, dtype=dtype), (factors[0].shape[0],))

    def per_problem(x):
        return x[:, None, None]

    if kind == GD:
        new = [W - per_problem(lr) * g for W, g in zip(factors, grads, strict=True)]
        return new, {}, _finite(new)
    t = optimizer["t"]
    if kind == GROUP_RMSPROP:
        beta, eps = dtype.type(optimizer["beta"]), dtype.type(optimizer["eps"])
        sq = sum((g.astype(np.float64) ** 2).sum(axis=(1, 2)) for g in grads)
        v_new = beta * optimizer["v"] + (1 - beta) * sq.astype(dtype)
        bias = 1.0 - np.power(float(beta), (t + 1).astype(np.float64))
        step = (lr / (np.sqrt(v_new.astype(np.float64) / bias).astype(dtype) + eps)).astype(dtype)
        new = [W - per_problem(step) * g for W, g in zip(factors, grads, strict=True)]
        # an overflowing running mean of ||g||^2 would make the step 0 and stall the problem
        return new, {"v": v_new}, _finite(new) & np.isfinite(step) & np.isfinite(v_new)
    if kind != ADAM:
        raise ValueError(f"unknown optimizer kind {kind}")
    b1, b2 = dtype.type(optimizer["beta1"]), dtype.type(optimizer["beta2"])
    eps = dtype.type(optimizer["eps"])
    n = (t + 1).astype(np.float64)
    step = (lr.astype(np.float64) / (1.0 - np.power(float(b1), n))).astype(dtype)
    bias2 = np.sqrt(1.0 - np.power(float(b2), n)).astype(dtype)
    m_new = [m + (1 - b1) * (g - m) for m, g in zip(optimizer["m"], grads, strict=True)]
    s_new = [s * b2 + (1 - b2) * g * g for s, g in zip(optimizer["s"], grads, strict=True)]
    new = [
        W - per_problem(step) * (m / (np.sqrt(v) / per_problem(bias2) + eps))
        for W, m, v in zip(factors, m_new, s_new, strict=True)
    ]
    return new, {"m": m_new, "s": s_new}, _finite(new + m_new + s_new)


def _commit(factors, new, optimizer, state, keep) -> None:
    """Writes the next factors and optimizer state of the problems in keep (B,)."""
    for W, Wn in zip(factors, new, strict=True):
        np.copyto(W, Wn, where=keep.reshape((-1,) + (1,) * (W.ndim - 1)))
    if optimizer is None or optimizer["kind"] == GD:
        return
    if "v" in state:
        optimizer["v"][keep] = state["v"][keep]
    for key in ("m", "s"):
        for old, nxt in zip(optimizer.get(key, ()), state.get(key, ()), strict=True):
            old[keep] = nxt[keep]
    optimizer["t"][keep] += 1


def dmf_step(
    factors,
    target,
    mask,
    A,
    y,
    lr,
    steps,
    tol,
    step0,
    status,
    frozen_at,
    optimizer=None,
    thresholds=None,
    crossed_at=None,
    snapshots=None,
):
    """In place, like _core.dmf_step: `steps` simultaneous updates of running problems by
    the optimizer (None: gd); before each update and after the last, loss < tol freezes a
    problem as converged and a non-finite loss or update freezes it as diverged at its last
    finite iterate and optimizer state. The first iterate below each of `thresholds` is
    recorded in crossed_at (and snapshots)."""
    with np.errstate(all="ignore"):
        for it in range(steps + 1):
            P = _forward(factors)
            G, loss = _residual(P[-1], target, mask, A, y)
            run = status == RUNNING
            if thresholds is not None:
                _record_crossings(factors, loss, run, step0 + it, thresholds, crossed_at, snapshots)
            run = _freeze(loss, run, tol, step0 + it, status, frozen_at)
            if it == steps or not run.any():
                return
            H, grads = G, [None] * len(factors)
            for j in range(len(factors) - 1, -1, -1):
                grads[j] = H if j == 0 else H @ np.swapaxes(P[j - 1], 1, 2)
                if j:
                    H = np.swapaxes(factors[j], 1, 2) @ H
            new, state, fin = _optimize(factors, grads, lr, optimizer)
            bad = run & ~fin
            status[bad], frozen_at[bad] = DIVERGED, step0 + it
            _commit(factors, new, optimizer, state, run & fin)


# ---------------------------------------------------------------- singular values and metrics
(
    LOSS,
    ENTRY,
    DET,
    SVALS,
    FRO,
    NUC,
    SPECTRAL,
    SCHATTEN,
    ERANK,
    RANK,
    DIST_RANK,
    BALANCEDNESS,
    RECON_ERROR,
) = (
    METRIC_KINDS[k]
    for k in (
        "loss",
        "entry",
        "det",
        "svals",
        "fro",
        "nuc",
        "spectral",
        "schatten",
        "erank",
        "rank",
        "dist_rank",
        "balancedness",
        "recon_error",
    )
)
_SVALS_KINDS = {FRO, NUC, SPECTRAL, SCHATTEN, ERANK, RANK, DIST_RANK}  # from singular values


def svd(X, compute_uv: bool = True) -> tuple:
    """LAPACK's thin SVD of each matrix of X (B, m, n): (U (B, m, k), s (B, k) descending,
    Vh (B, k, n), info (B,)), k = min(m, n), or (s, info) without compute_uv; NaN everywhere
    for a matrix with a non-finite entry."""
    B, m, n = X.shape
    k = min(m, n)
    fin = np.isfinite(X).all(axis=(1, 2))
    shapes = [(B, m, k), (B, k), (B, k, n)] if compute_uv else [(B, k)]
    out = [np.full(shape, np.nan, dtype=X.dtype) for shape in shapes]
    if fin.any() and k:
        if compute_uv:
            got = tuple(np.linalg.svd(X[fin], full_matrices=False))
        else:
            got = (np.linalg.svd(X[fin], compute_uv=False),)
        for o, g in zip(out, got, strict=True):
            o[fin] = g
    return (*out, np.where(fin, 0, SVD_NON_FINITE).astype(np.int8))


def _svals_metric(kind: int, param: float, rtol: float, s: np.ndarray) -> np.ndarray:
    s = s.astype(np.float64)
    k = s.shape[1]
    s1 = s[:, 0] if k else np.zeros(s.shape[0])
    # Sums of powers relative to the largest term, as the core takes them: no overflow or
    # underflow in between.
    with np.errstate(all="ignore"):
        if kind == SPECTRAL:
            return s1
        if kind == NUC:
            return s.sum(axis=1)
        if kind in (FRO, DIST_RANK):
            tail = s[:, int(param) if kind == DIST_RANK else 0 :]
            top = tail[:, 0] if tail.shape[1] else np.zeros(s.shape[0])
            safe = np.where(top > 0, top, 1)[:, None]
            return np.where(top > 0, top * np.sqrt(((tail / safe) ** 2).sum(axis=1)), 0.0)
        if kind == SCHATTEN:
            safe = np.where(s1 > 0, s1, 1)[:, None]
            return np.where(s1 > 0, s1 * ((s / safe) ** param).sum(axis=1) ** (1 / param), 0.0)
        if kind == ERANK:
            total = s.sum(axis=1, keepdims=True)
            p = np.where(s > 0, s / np.where(total > 0, total, 1), 0)
            h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(axis=1)
            return np.where(total[:, 0] > 0, np.exp(h), 0.0)
        if kind == RANK:
            return (s > (param + rtol * s1)[:, None]).sum(axis=1).astype(np.float64)
    raise ValueError(f"not a singular-value metric kind: {kind}")


def svals_metrics(s, kinds, params):
    """(n, B) float64: metric i of the singular values s (B, k); NaN where s has a NaN."""
    bad = np.isnan(s).any(axis=1)
    out = np.stack(
        [_svals_metric(int(kd), p, r, s) for kd, (p, r) in zip(kinds, params, strict=True)]
    )
    out = out.reshape(len(kinds), s.shape[0])
    out[:, bad] = np.nan
    return out


def balancedness(factors):
    """(B,) max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F in float64 (0 at depth 1)."""
    W = [np.asarray(f, dtype=np.float64) for f in factors]
    out = np.zeros(W[0].shape[0])
    for a, b in zip(W[:-1], W[1:], strict=True):
        D = np.swapaxes(b, 1, 2) @ b - a @ np.swapaxes(a, 1, 2)
        out = np.maximum(out, np.sqrt((D**2).sum(axis=(1, 2))))
    return out


def det_float64(factors):
    """det(W_N ... W_1) in float64: the product of the factors' determinants when every factor
    is square (exact sign even when the product rounds to rank one), else from the float64
    product."""
    f64 = [np.asarray(W, dtype=np.float64) for W in factors]
    with np.errstate(all="ignore"):  # a diverged problem's det is +-inf, as in the core
        if all(W.shape[1] == W.shape[2] for W in f64):
            det = np.ones(f64[0].shape[0])
            for W in f64:
                det = det * np.linalg.det(W)
            return det
        return np.linalg.det(_forward(f64)[-1])


def recon_error(E, truth):
    """(B,) ||E - truth||_F / ||truth||_F in float64 (unnormalized where truth is 0)."""
    E, truth = np.asarray(E, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    with np.errstate(all="ignore"):
        num = np.linalg.norm((E - truth).reshape(E.shape[0], -1), axis=1)
        den = np.linalg.norm(np.broadcast_to(truth, E.shape).reshape(E.shape[0], -1), axis=1)
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), num)


def dmf_measure(factors, target, mask, A, y, kinds, params, truth=None):
    """(rows, B) float64, like _core.dmf_measure: one row per spec, min(m, n) rows for svals;
    truth (B|1, m, n) for recon_error."""
    loss, E = dmf_loss(factors, target, mask, A, y)
    s = None
    if any(int(kd) == SVALS or int(kd) in _SVALS_KINDS for kd in kinds):
        s = svd(E, compute_uv=False)[0]
    rows = []
    for kd, (p, r) in zip(kinds, params, strict=True):
        kd = int(kd)
        if kd == LOSS:
            rows.append(loss[None])
        elif kd == ENTRY:
            rows.append(E.reshape(E.shape[0], -1)[:, int(p)][None])
        elif kd == DET:
            rows.append(det_float64(factors)[None])
        elif kd == SVALS:
            rows.append(s.T)
        elif kd == BALANCEDNESS:
            rows.append(balancedness(factors)[None])
        elif kd == RECON_ERROR:
            rows.append(recon_error(E, truth)[None])
        else:
            rows.append(svals_metrics(s, [kd], [(p, r)]))
    return np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, E.shape[0]))


# ------------------------------------------------------------------- CP tensor factorization
def cp_tensor(factors):
    """(B, numel) tensors sum_r prod_n U_n[i_n, r] of CP factors [(B, d_n, R)], products taken
    from the last mode to the first."""
    S = factors[-1]  # (B, d_N, R), then (B, d_n ... d_N, R)
    for U in factors[-2:0:-1]:
        S = (U[:, :, None, :] * S[:, None, :, :]).reshape(U.shape[0], -1, U.shape[2])
    if len(factors) == 1:
        return S.sum(axis=2)
    U0 = factors[0]
    return np.einsum("bir,bjr->bij", U0, S).reshape(U0.shape[0], -1)


def _cp_gradients(factors, G):
    """dL/dU_n = G_(n) KR(U_m, m != n) for dL/dW = G (B, numel): the mode-n unfolding times
    the Khatri-Rao product of the other factors, one matrix product per problem (so each
    problem's rounding does not depend on the batch)."""
    B = G.shape[0]
    dims = [U.shape[1] for U in factors]
    Gt = G.reshape((B,) + tuple(dims))
    grads = []
    for n in range(len(factors)):
        K = None  # (B, prod of the other modes, R), the last mode fastest
        for m, U in enumerate(factors):
            if m != n:
                K = (
                    U
                    if K is None
                    else (K[:, :, None, :] * U[:, None, :, :]).reshape(B, -1, U.shape[2])
                )
        Gn = np.moveaxis(Gt, n + 1, 1).reshape(B, dims[n], -1)
        grads.append(Gn @ K)
    return grads


def cp_step(
    factors, target, mask, lr, steps, tol, step0, observed, status, frozen_at, loss, optimizer=None
):
    """In place, like _core.cp_step: `steps` updates of running problems by the optimizer
    (None: gd; as for dmf_step); loss = mean squared error over observed entries (in
    float64, stored in the factors' dtype); freeze and divergence as dmf_step. The observed
    entries come from the mask: `observed`, the compiled kernels' list of them, is not read."""
    dtype = factors[0].dtype
    B = factors[0].shape[0]
    mask = np.broadcast_to(mask, (B, mask.shape[1]))
    n_obs = mask.sum(axis=1)
    scale = np.where(n_obs > 0, 2.0 / np.maximum(n_obs, 1), 0.0).astype(dtype)
    with np.errstate(all="ignore"):
        for it in range(steps + 1):
            W = cp_tensor(factors)
            res = np.where(mask, W - target, 0).astype(dtype)
            mse = ((res.astype(np.float64) ** 2).sum(axis=1) / np.maximum(n_obs, 1)).astype(dtype)
            run = status == RUNNING
            loss[run] = mse[run]  # frozen before the call: left as it is
            run = _freeze(mse, run, tol, step0 + it, status, frozen_at)
            if it == steps or not run.any():
                return
            grads = _cp_gradients(factors, res * scale[:, None])
            new, state, fin = _optimize(factors, grads, lr, optimizer)
            bad = run & ~fin
            status[bad], frozen_at[bad] = DIVERGED, step0 + it
            _commit(factors, new, optimizer, state, run & fin)


_M64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 arrays (wrapping arithmetic, as in the core)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def als_start(dims, r: int, seed: int, index: int, restart: int) -> list[np.ndarray]:
    """The CP-ALS start of the core (tensor_rank.cpp): standard normals of the counter-based
    stream keyed by (seed, index, r, restart), factor after factor, row-major."""
    with np.errstate(over="ignore"):
        key = _mix(
            _mix(_mix(np.array([seed], dtype=np.uint64)) ^ np.uint64(index))
            ^ np.uint64((r << 20) | restart)
        )[0]
        total = sum(dims) * r
        k = np.arange(total, dtype=np.uint64)
        u1 = ((_mix(key + np.uint64(2) * k) >> np.uint64(11)) + np.uint64(1)) * 2.0**-53
        u2 = (_mix(key + np.uint64(2) * k + np.uint64(1)) >> np.uint64(11)) * 2.0**-53
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)
    out, at = [], 0
    for d in dims:
        out.append(z[at : at + d * r].reshape(d, r))
        at += d * r
    return out


def _khatri_rao(mats):
    K = mats[0]
    for M in mats[1:]:
        K = (K[:, None, :] * M[None, :, :]).reshape(-1, K.shape[1])
    return K


def _solve_normal(V, M):
    """F with F V = M (V symmetric PSD), by Cholesky with the core's ridge."""
    r = V.shape[0]
    base = max(np.trace(V) / r, 1e-300)
    ridge = 1e-12 * base
    while True:
        try:
            L = np.linalg.cholesky(V + ridge * np.eye(r))
            break
        except np.linalg.LinAlgError:
            if ridge > base:
                raise
            ridge *= 100
    return np.linalg.solve(L.T, np.linalg.solve(L, M.T)).T


def cp_als_mse(tensor, dims, r, tol, max_iter, seed, index, restart) -> float:
    """Like _core.cp_als_mse: the mean squared error of the CP-ALS fit of rank r."""
    X = np.asarray(tensor, dtype=np.float64).reshape(dims)
    F = als_start(dims, r, seed, index, restart)
    N = len(dims)
    err = np.inf
    for _ in range(max_iter):
        for n in range(N):
            others = [m for m in range(N) if m != n]
            V = np.ones((r, r))
            for m in others:
                V *= F[m].T @ F[m]
            K = _khatri_rao([F[m] for m in others])
            Xn = np.moveaxis(X, n, 0).reshape(dims[n], -1)
            upd = _solve_normal(V, Xn @ K)
            if n < N - 1:
                coeff = np.linalg.norm(F[n], axis=0)
                upd = upd / np.where(coeff > 0, coeff, 1.0)
            F[n] = upd
        W = (_khatri_rao(F[:-1]) @ F[-1].T).reshape(dims) if N > 1 else F[0].sum(axis=1)
        err = float(((X - W) ** 2).mean())
        if not err >= tol:
            break
    return err


def tensor_rank(tensors, dims, tol, max_rank, max_iter, restarts, seed):
    """Like _core.tensor_rank: (B,) estimated CP ranks by CP-ALS bisection."""
    out = np.empty(tensors.shape[0], dtype=np.int64)
    for b, X in enumerate(tensors):
        if not np.isfinite(X).all():
            out[b] = -1
            continue
        if (np.abs(X) <= 1e-8).all():
            out[b] = 0
            continue

        def fits(r, X=X, b=b):
            return any(
                cp_als_mse(X, dims, r, tol, max_iter, seed, b, k) < tol for k in range(restarts)
            )

        first, last, found = 0, max_rank - 1, max_rank
        while first <= last:
            mid = (first + last) // 2
            if fits(mid + 1):
                found, last = mid + 1, mid - 1
            else:
                first = mid + 1
        out[b] = found
    return out
