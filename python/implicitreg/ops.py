"""One thin function per kernel: routes backend="cpu" to the compiled core (_core),
backend="cuda" to the CUDA module (_cuda, same signatures, device arrays) and
backend="numpy" to reference.py. Arguments are validated by the callers (the models, models/).

On the cuda backend the model's state (factors, lr, status, crossings) is already on the
device; problem data is copied there once per problem and dtype (problem.arrays(device=True)).
Outputs that a caller passes in as host arrays (the measurement rows of fit()) are filled
from the device, which is where fit() synchronizes."""

from __future__ import annotations

import numpy as np

from . import _backend, reference
from ._backend import _core

BACKENDS = ("cpu", "numpy", "cuda")


def _module(backend: str):
    if backend == "cpu":
        return _core
    if backend == "numpy":
        return reference
    return _backend.cuda_module()


def _call(backend: str, name: str, *args, **kwargs):
    """_module(backend).name(*args, **kwargs). On the cuda backend a call whose scratch could not be
    allocated changed nothing (the kernels take all their scratch first), and CuPy's memory
    pool may be holding the memory it needs: the pool's unused blocks are freed and the call
    is made once more."""
    fn = getattr(_module(backend), name)
    if backend != "cuda":
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:
        if not str(exc).startswith("out of device memory"):
            raise
        _backend.free_device_pool()
        return fn(*args, **kwargs)


def _inputs(problem, dtype, backend: str) -> dict:
    return problem.arrays(dtype, device=backend == "cuda")


def _empty(backend: str, shape, dtype):
    return _backend.array_module(backend).empty(shape, dtype=dtype)


def dmf_step(
    factors,
    problem,
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
    backend="cpu",
):
    """In place: `steps` updates of every running problem by the optimizer (None: gd, fused;
    else the dict of its kind, settings and state), recording first crossings of the loss
    thresholds when given (see _core.dmf_step)."""
    a = _inputs(problem, factors[0].dtype, backend)
    _call(
        backend,
        "dmf_step",
        factors=list(factors),
        target=a["target"],
        mask=a["mask"],
        A=a["A"],
        y=a["y"],
        lr=lr,
        steps=steps,
        tol=tol,
        step0=step0,
        status=status,
        frozen_at=frozen_at,
        optimizer=optimizer,
        thresholds=thresholds,
        crossed_at=crossed_at,
        snapshots=None if snapshots is None else list(snapshots),
    )


def dmf_loss(factors, problem, backend="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(loss (B,), product (B, m, n)) of the current factors, in their array module."""
    a = _inputs(problem, factors[0].dtype, backend)
    if backend == "numpy":
        return reference.dmf_loss(list(factors), a["target"], a["mask"], a["A"], a["y"])
    B, dtype = factors[0].shape[0], factors[0].dtype
    loss = _empty(backend, B, dtype)
    product = _empty(backend, (B, factors[-1].shape[1], factors[0].shape[2]), dtype)
    _call(backend, "dmf_loss", list(factors), a["target"], a["mask"], a["A"], a["y"], loss, product)
    return loss, product


def svdvals(X: np.ndarray, backend: str, max_sweeps: int) -> tuple[np.ndarray, np.ndarray]:
    """(s (B, min(m, n)) descending, info (B,) int8) of X (B, m, n) C-contiguous float, in
    X's array module; max_sweeps caps the compiled backends' Jacobi sweeps."""
    if backend == "numpy":
        return reference.svd(X, compute_uv=False)
    host = not _backend.is_device(X)
    if backend == "cuda":
        X = _backend.to_device(X)
    B, m, n = X.shape
    s = _empty(backend, (B, min(m, n)), X.dtype)
    info = _empty(backend, B, np.int8)
    _call(backend, "svdvals", X, s, info, max_sweeps)
    return (_backend.to_host(s), _backend.to_host(info)) if host else (s, info)


def svd(X: np.ndarray, backend: str, max_sweeps: int) -> tuple:
    """(U (B, m, k), s (B, k) descending, Vh (B, k, n), info (B,) int8) of X (B, m, n)
    C-contiguous float, k = min(m, n), in X's array module."""
    if backend == "numpy":
        return reference.svd(X)
    host = not _backend.is_device(X)
    if backend == "cuda":
        X = _backend.to_device(X)
    B, m, n = X.shape
    k = min(m, n)
    out = (
        _empty(backend, (B, m, k), X.dtype),
        _empty(backend, (B, k), X.dtype),
        _empty(backend, (B, k, n), X.dtype),
        _empty(backend, B, np.int8),
    )
    U, s, Vh, info = out
    _call(backend, "svd", X, U, s, Vh, info, max_sweeps)
    return tuple(_backend.to_host(a) for a in out) if host else out


def svals_metrics(
    s: np.ndarray, kinds: np.ndarray, params: np.ndarray, backend="cpu"
) -> np.ndarray:
    """(n, B) float64: metric (kinds[i], params[i] = [param, rtol]) of singular values s, in
    s's array module."""
    if backend == "numpy":
        return reference.svals_metrics(s, kinds, params)
    host = not _backend.is_device(s)
    if backend == "cuda":
        s = _backend.to_device(s)
    out = _empty(backend, (kinds.shape[0], s.shape[0]), np.float64)
    _call(backend, "svals_metrics", s, kinds, params, out)
    return _backend.to_host(out) if host else out


def balancedness(factors, backend="cpu") -> np.ndarray:
    """(B,) max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F, in the factors' array module."""
    if backend == "numpy":
        return reference.balancedness(factors)
    host = not _backend.is_device(factors[0])
    if backend == "cuda":
        factors = [_backend.to_device(W) for W in factors]
    out = _empty(backend, factors[0].shape[0], np.float64)
    _call(backend, "balancedness", list(factors), out)
    return _backend.to_host(out) if host else out


def dmf_measure(
    factors, problem, kinds: np.ndarray, params: np.ndarray, out: np.ndarray, backend="cpu"
) -> np.ndarray:
    """Writes into out (rows, B) float64 every requested metric of the factors, from one
    product and one SVD per problem; returns out (a host array on every backend)."""
    a = _inputs(problem, factors[0].dtype, backend)
    args = (list(factors), a["target"], a["mask"], a["A"], a["y"], kinds, params)
    if backend == "numpy":
        out[...] = reference.dmf_measure(*args, truth=a["truth"])
    elif backend == "cuda":
        dev = _empty(backend, out.shape, np.float64)
        _call(backend, "dmf_measure", *args, dev, a["truth"])
        out[...] = dev.get()
    else:
        _call(backend, "dmf_measure", *args, out, a["truth"])
    return out


def cp_step(
    factors, problem, lr, steps, tol, step0, status, frozen_at, loss, optimizer=None, backend="cpu"
):
    """In place: `steps` updates of every running CP factorization by the optimizer (as for
    dmf_step; see _core.cp_step)."""
    a = _inputs(problem, factors[0].dtype, backend)
    _call(
        backend,
        "cp_step",
        factors=list(factors),
        target=a["target"],
        mask=a["mask"],
        lr=lr,
        steps=steps,
        tol=tol,
        step0=step0,
        observed=a["observed"],
        status=status,
        frozen_at=frozen_at,
        loss=loss,
        optimizer=optimizer,
    )


def cp_tensor(factors, backend="cpu") -> np.ndarray:
    """(B, numel) full tensors of CP factors [(B, d_n, R)], in the factors' array module."""
    if backend == "numpy":
        return reference.cp_tensor(list(factors))
    numel = int(np.prod([U.shape[1] for U in factors]))
    out = _empty(backend, (factors[0].shape[0], numel), factors[0].dtype)
    _call(backend, "cp_tensor", list(factors), out)
    return out


def tensor_rank(
    tensors, dims, tol, max_rank, max_iter, restarts, seed, backend="cpu"
) -> np.ndarray:
    """(B,) estimated CP ranks of tensors (B, numel) float64 (see _core.tensor_rank).

    The cuda backend runs the CPU kernel: CP-ALS bisection is a branchy, per-tensor search
    (pseudo-inverses of R x R Gram matrices, a different rank per tensor) that a GPU would
    serialize. The whole batch crosses to the host once and the ranks come back at once, in
    the tensors' array module."""
    if backend == "numpy":
        return reference.tensor_rank(tensors, list(dims), tol, max_rank, max_iter, restarts, seed)
    host = _backend.to_host(tensors)
    out = np.empty(host.shape[0], dtype=np.int64)
    _core.tensor_rank(host, list(dims), tol, max_rank, max_iter, restarts, seed, out)
    return out if host is tensors else _backend.to_device(out)
