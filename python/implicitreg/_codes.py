"""The codes and limits of the compiled kernels, read from the module that uses them (they
are defined once, in C++): per-problem status, optimizers, metric kinds, svdvals outcomes and
size limits. Every other module takes them from here."""

from __future__ import annotations

from ._backend import _core

LIMITS, METRIC_KINDS, OPTIMIZERS = _core.LIMITS, _core.METRIC_KINDS, _core.OPTIMIZERS
STATUS, SVD_INFO = _core.STATUS, _core.SVD_INFO

RUNNING, CONVERGED, DIVERGED = STATUS["running"], STATUS["converged"], STATUS["diverged"]
STATUS_NAMES = tuple(sorted(STATUS, key=STATUS.__getitem__))  # indexed by status code
SVD_INFO_NAMES = tuple(sorted(SVD_INFO, key=SVD_INFO.__getitem__))
SVD_OK, SVD_NON_FINITE = SVD_INFO["ok"], SVD_INFO["non_finite"]
GD, GROUP_RMSPROP, ADAM = OPTIMIZERS["gd"], OPTIMIZERS["group_rmsprop"], OPTIMIZERS["adam"]

__all__ = [
    "ADAM",
    "CONVERGED",
    "DIVERGED",
    "GD",
    "GROUP_RMSPROP",
    "LIMITS",
    "METRIC_KINDS",
    "OPTIMIZERS",
    "RUNNING",
    "STATUS",
    "STATUS_NAMES",
    "SVD_INFO",
    "SVD_INFO_NAMES",
    "SVD_NON_FINITE",
    "SVD_OK",
]
