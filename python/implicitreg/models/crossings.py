"""The crossings of loss thresholds that DeepFactorization.step records inside the core's
step loop: the records, their checks against a model, and every metric measured at each
problem's first iterate below each threshold."""

from __future__ import annotations

import numpy as np

from .. import ops
from .._backend import to_host
from .._checks import batch_memory, real_array

__all__ = [
    "Crossings",
    "check_crossings",
    "loss_thresholds",
    "measure_crossings",
    "split_rows",
    "threshold_values",
]


class Crossings:
    """First crossings of loss thresholds, filled by the core during step():
    step (B, k) int64 (-1 until crossed) and factors [(B, k, d_j, d_{j-1})] at that iterate."""

    def __init__(self, thresholds: np.ndarray, batch: int, dims: list[int], dtype, xp=np):
        k = thresholds.size
        self.thresholds_f64 = thresholds
        # compared in the factors' precision; the records live where the factors do (xp)
        self.thresholds = xp.asarray(thresholds.astype(dtype))
        self.step = xp.full((batch, k), -1, dtype=np.int64)
        self.factors = [
            xp.zeros((batch, k, dims[j], dims[j - 1]), dtype=dtype) for j in range(1, len(dims))
        ]


def loss_thresholds(values) -> np.ndarray:
    """Loss thresholds as a strictly decreasing float64 array of finite values > 0."""
    t = real_array(values if values is not None else (), "thresholds")
    t = t.astype(np.float64).reshape(-1) if t.ndim <= 1 else t
    if t.ndim != 1:
        raise ValueError(f"thresholds: expected a list of numbers, got shape {t.shape}")
    if not (np.isfinite(t).all() and (t > 0).all() and (np.diff(t) < 0).all()):
        raise ValueError(
            f"thresholds: expected finite values > 0 in strictly decreasing "
            f"order (e.g. 1e-1, 1e-2, 1e-3, 1e-4), got {t.tolist()}"
        )
    return t


def threshold_values(model, thresholds) -> np.ndarray:
    """The loss thresholds of `model`'s crossings, checked, and their records' memory."""
    t = loss_thresholds(thresholds)
    batch_memory(
        t.size * (model._size() * model.dtype.itemsize + 8),
        model.batch,
        "thresholds",
        "recording the crossings",
    )
    with np.errstate(over="ignore"):
        if not np.isfinite(t.astype(model.dtype)).all():
            raise ValueError(
                f"thresholds: expected values representable in {model.dtype}, got {t.tolist()}"
            )
    return t


def check_crossings(model, c) -> None:
    """A Crossings made for `model` (by model.crossings), or TypeError/ValueError."""
    if not isinstance(c, Crossings):
        raise TypeError(f"crossings: expected model.crossings(thresholds), got {type(c).__name__}")
    k = c.thresholds.size
    dims = model.dims
    want = [(model.batch, k, dims[j], dims[j - 1]) for j in range(1, len(dims))]
    if (
        c.step.shape != (model.batch, k)
        or [S.shape for S in c.factors] != want
        or any(S.dtype != model.dtype for S in c.factors)
        or c.thresholds.dtype != model.dtype
    ):
        raise ValueError(
            f"crossings: made for another model (batch, dims or dtype differ "
            f"from {model.batch}, {dims}, {model.dtype}); use model.crossings()"
        )


def measure_crossings(model, cross: Crossings, names, kinds, params, metric_rows):
    """{"thresholds": (k,), "step": (k, B), name: (k, B, ...)}: every metric at each
    recorded crossing (NaN where a problem never crossed), or None without thresholds."""
    k, B = cross.thresholds.size, model.batch
    if k == 0:
        return None
    flat = [S.reshape((B * k,) + S.shape[2:]) for S in cross.factors]
    out = np.empty((sum(metric_rows), B * k))
    ops.dmf_measure(flat, model.problem.repeat_each(k), kinds, params, out, model.backend)
    per = np.moveaxis(out.reshape(sum(metric_rows), B, k), 2, 0)  # (k, rows, B)
    data = split_rows(per, names, metric_rows)
    step = to_host(cross.step)
    hit = (step >= 0).T  # (k, B)
    for name, v in data.items():
        data[name] = np.where(hit.reshape(hit.shape + (1,) * (v.ndim - 2)), v, np.nan)
    return {"thresholds": cross.thresholds_f64.copy(), "step": step.T.copy(), **data}


def split_rows(buf: np.ndarray, names: list[str], rows: list[int]) -> dict:
    """{name: (T, B) view, or (T, B, k) for svals} of a (T, rows, B) measurement buffer."""
    out, at = {}, 0
    for name, r in zip(names, rows, strict=True):
        out[name] = buf[:, at] if name != "svals" else np.swapaxes(buf[:, at : at + r], 1, 2)
        at += r
    return out
