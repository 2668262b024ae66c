"""What both kinds of problem batch share: inputs cached per dtype and copied to the device
once, and targets whose unobserved entries may be NaN."""

from __future__ import annotations

import numpy as np

from .._backend import to_device
from .._checks import finite


def on_device(cache: dict, dtype: np.dtype) -> dict:
    """The cached host inputs cache[dtype], copied to the device once."""
    key = (dtype, "device")
    if key not in cache:
        cache[key] = {k: None if v is None else to_device(v) for k, v in cache[dtype].items()}
    return cache[key]


def unobserved_nan_to_zero(t: np.ndarray, mk: np.ndarray) -> np.ndarray:
    """targets as float64, NaN (the usual mark of a missing value) allowed where every problem
    that shares the entry leaves it unobserved, and stored as 0 (its value is never read);
    ValueError for a NaN that some problem observes, or an infinite value."""
    nan = np.isnan(t)
    if nan.any():
        seen = nan & mk  # broadcast over the batch: a shared target meets every mask
        if seen.any():
            b, *idx = np.argwhere(seen)[0].tolist()
            raise ValueError(
                f"targets: NaN at observed entry {tuple(idx)} of problem {b} "
                f"({int(seen.sum())} in all); NaN may only mark an unobserved "
                "entry"
            )
        t = np.where(nan, 0.0, t)
    finite(t, "targets")
    return t.astype(np.float64)
