"""Pure-NumPy implementation of every kernel: the oracle of the tests and the baseline of the
benchmarks, with exactly the semantics of the compiled backends (a real backend: pick it with
backend="numpy"). Batched over problems with NumPy; Python loops only over steps and layers.
"""

from __future__ import annotations

import numpy as np

RUNNING, CONVERGED, DIVERGED = 0, 1, 2


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


def dmf_step(factors, target, mask, A, y, lr, steps, tol, step0, status, frozen_at,
             thresholds=None, crossed_at=None, snapshots=None):
    """In place, like _core.dmf_step: `steps` simultaneous GD updates of running problems;
    before each update and after the last, loss < tol freezes a problem as converged and a
    non-finite loss or update freezes it as diverged at its last finite iterate. The first
    iterate below each of `thresholds` is recorded in crossed_at (and snapshots)."""
    lr = np.asarray(lr)[:, None, None]
    with np.errstate(all="ignore"):
        for it in range(steps + 1):
            P = _forward(factors)
            G, loss = _residual(P[-1], target, mask, A, y)
            run = status == RUNNING
            if thresholds is not None:
                _record_crossings(factors, loss, run, step0 + it, thresholds, crossed_at,
                                  snapshots)
            bad = run & ~np.isfinite(loss)
            done = run & np.isfinite(loss) & (loss < tol)
            status[bad], frozen_at[bad] = DIVERGED, step0 + it
            status[done], frozen_at[done] = CONVERGED, step0 + it
            run = status == RUNNING
            if it == steps or not run.any():
                return
            H, new = G, [None] * len(factors)
            for j in range(len(factors) - 1, -1, -1):
                W = factors[j]
                grad = H if j == 0 else H @ np.swapaxes(P[j - 1], 1, 2)
                new[j] = W - lr * grad
                if j:
                    H = np.swapaxes(W, 1, 2) @ H
            fin = np.ones(run.shape, dtype=bool)
            for Wn in new:
                fin &= np.isfinite(Wn).all(axis=(1, 2))
            bad = run & ~fin
            status[bad], frozen_at[bad] = DIVERGED, step0 + it
            keep = (run & fin)[:, None, None]
            for W, Wn in zip(factors, new, strict=True):
                np.copyto(W, Wn, where=keep)


# ---------------------------------------------------------------- singular values and metrics
# Metric kinds, as the compiled kernels number them (implicitreg/metrics.h MetricKind).
(LOSS, ENTRY, DET, SVALS, FRO, NUC, SPECTRAL, SCHATTEN, ERANK, RANK, DIST_RANK, BALANCEDNESS,
 RECON_ERROR) = range(13)
SVD_OK, SVD_NOT_CONVERGED, SVD_NON_FINITE = 0, 1, 2


def svdvals(X):
    """(s (B, min(m, n)) descending, info (B,)) by LAPACK; NaN values for non-finite X."""
    B, m, n = X.shape
    s = np.full((B, min(m, n)), np.nan, dtype=X.dtype)
    info = np.zeros(B, dtype=np.int8)
    fin = np.isfinite(X).all(axis=(1, 2))
    if fin.any():
        s[fin] = np.linalg.svd(X[fin], compute_uv=False)
    info[~fin] = SVD_NON_FINITE
    return s, info


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
            tail = s[:, int(param) if kind == DIST_RANK else 0:]
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
    out = np.stack([_svals_metric(int(kd), p, r, s) for kd, (p, r) in zip(kinds, params,
                                                                          strict=True)])
    out = out.reshape(len(kinds), s.shape[0])
    out[:, bad] = np.nan
    return out


def balancedness(factors):
    """(B,) max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F in float64 (0 at depth 1)."""
    W = [np.asarray(f, dtype=np.float64) for f in factors]
    out = np.zeros(W[0].shape[0])
    for a, b in zip(W[:-1], W[1:], strict=True):
        D = np.swapaxes(b, 1, 2) @ b - a @ np.swapaxes(a, 1, 2)
        out = np.maximum(out, np.sqrt((D ** 2).sum(axis=(1, 2))))
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
    if any(int(kd) == SVALS or FRO <= int(kd) <= DIST_RANK for kd in kinds):
        s = svdvals(E)[0]
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
