"""One thin function per kernel: routes backend="cpu" to the compiled core (_core),
backend="numpy" to reference.py. Arguments are validated by the callers (models.py)."""

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
    raise RuntimeError(f"backend 'cuda' is not available here: {_backend.cuda_reason()}")


def dmf_step(factors, problem, lr, steps, tol, step0, status, frozen_at, backend="cpu"):
    """In place: `steps` fused GD updates of every running problem (see _core.dmf_step)."""
    a = problem.arrays(factors[0].dtype)
    _module(backend).dmf_step(list(factors), a["target"], a["mask"], a["A"], a["y"], lr, steps,
                              tol, step0, status, frozen_at)


def dmf_loss(factors, problem, backend="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(loss (B,), product (B, m, n)) of the current factors."""
    a = problem.arrays(factors[0].dtype)
    if backend == "numpy":
        return reference.dmf_loss(list(factors), a["target"], a["mask"], a["A"], a["y"])
    B, dtype = factors[0].shape[0], factors[0].dtype
    loss = np.empty(B, dtype=dtype)
    product = np.empty((B, factors[-1].shape[1], factors[0].shape[2]), dtype=dtype)
    _module(backend).dmf_loss(list(factors), a["target"], a["mask"], a["A"], a["y"], loss,
                              product)
    return loss, product
