"""The factorization models, trained many at once: DeepFactorization (deep matrix
factorizations, dmf.py) and CPFactorization (CP tensor factorizations, cp.py). What they
share lives in base.py (state, checks, optimizers) and fit.py (the fit loop)."""

from __future__ import annotations

from ..trajectory import Trajectory, every, geometric, load
from .cp import CP_METRICS, CPFactorization
from .crossings import Crossings
from .dmf import DeepFactorization

__all__ = [
    "CP_METRICS",
    "CPFactorization",
    "Crossings",
    "DeepFactorization",
    "Trajectory",
    "every",
    "geometric",
    "load",
]
