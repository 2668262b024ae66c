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


def dmf_step(factors, target, mask, A, y, lr, steps, tol, step0, status, frozen_at):
    """In place, like _core.dmf_step: `steps` simultaneous GD updates of running problems;
    before each update and after the last, loss < tol freezes a problem as converged and a
    non-finite loss or update freezes it as diverged at its last finite iterate."""
    lr = np.asarray(lr)[:, None, None]
    with np.errstate(all="ignore"):
        for it in range(steps + 1):
            P = _forward(factors)
            G, loss = _residual(P[-1], target, mask, A, y)
            run = status == RUNNING
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
