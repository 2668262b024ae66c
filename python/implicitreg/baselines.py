"""Baselines: what a problem's solution would be without a trained factorization, to set
beside what gradient descent finds."""

from __future__ import annotations

import numpy as np

from .problems import TensorCompletion

__all__ = ["memorizer"]


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
