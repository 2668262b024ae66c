"""Input validation shared by every public entry point: each check names the argument, what
was expected and what arrived, and runs before any work is done."""

from __future__ import annotations

import numbers
import operator
import os
from typing import TypeVar

import numpy as np

from ._backend import host_array, is_device

T = TypeVar("T")

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _host(x, name: str) -> np.ndarray:
    """x as a NumPy array (NumPy, PyTorch, JAX, anything with __array__ or __dlpack__ on the
    host, sequences, numbers); a device array or another object is refused by type."""
    if is_device(x):
        raise TypeError(
            f"{name}: expected a host array, got a device array ({type(x).__name__}); "
            "device arrays are taken by the cuda backend's models and metrics, or copy it "
            "to the host"
        )
    a = host_array(x)
    if a.dtype == object and not isinstance(x, np.ndarray):  # not an array at all
        raise TypeError(
            f"{name}: expected an array (NumPy, or anything with __array__ or __dlpack__), "
            f"got {type(x).__name__}"
        )
    return a


def real_array(x, name: str) -> np.ndarray:
    """x as a NumPy array of real numbers (bool and complex refused)."""
    a = _host(x, name)
    if a.dtype == np.bool_ or a.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return a


def bool_array(x, name: str) -> np.ndarray:
    """x as a NumPy array of booleans."""
    a = _host(x, name)
    if a.dtype != np.bool_:
        raise TypeError(f"{name}: expected a boolean array, got dtype {a.dtype}")
    return a


def finite(a: np.ndarray, name: str) -> None:
    if a.size and not np.isfinite(a).all():
        raise ValueError(
            f"{name}: expected finite values, got {int((~np.isfinite(a)).sum())} "
            "NaN or infinite entries"
        )


def ndim_in(a: np.ndarray, name: str, ndims: tuple[int, ...], what: str) -> None:
    if a.ndim not in ndims:
        raise ValueError(f"{name}: expected shape {what}, got shape {a.shape}")


def integer(x, name: str, minimum: int | None = None) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        if isinstance(x, float) and x.is_integer():
            x = int(x)
        else:
            raise TypeError(f"{name}: expected an integer, got {type(x).__name__} {x!r}")
    x = operator.index(x)
    if minimum is not None and x < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {x}")
    return x


def positive(x, name: str) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__} {x!r}")
    v = float(x)
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {x}")
    return v


def choice(x: T, name: str, options: tuple) -> T:
    if x not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {x!r}")
    return x


def float_dtype(x, name: str) -> np.dtype:
    try:
        dt = np.dtype(x)
    except TypeError as exc:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {x!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dt}")
    return dt


def batch_size(sizes: dict[str, int], batch: int | None) -> int:
    """The common batch size of arrays whose leading sizes are given; 1 broadcasts."""
    if batch is not None:
        batch = integer(batch, "batch", minimum=0)
    if batch is not None:
        target = batch
    else:  # the one size other than 1 (0 for an empty batch), else 1
        others = [s for s in sizes.values() if s != 1]
        target = others[0] if others else 1
    for name, s in sizes.items():
        if s not in (1, target):
            got = ", ".join(f"{k}: {v}" for k, v in sizes.items())
            raise ValueError(
                f"{name}: batch size {s} does not match the batch of {target} "
                f"(expected 1 or {target}; got {got})"
            )
    return target


def available_memory() -> int | None:
    """Bytes of memory this process can still take without swapping (MemAvailable), or the
    machine's physical memory where that is unknown; None where neither is."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(nbytes: int) -> str:
    """A byte count in GiB, also one too large for a float (a power of two then)."""
    return f"{nbytes / 2**30:.3g}" if nbytes < 2**1000 else f"2^{nbytes.bit_length() - 30}"


def batch_memory(
    per_problem: int, batch: int, name: str, what: str, fixed: int = 0, device: bool = False
) -> None:
    """Refuse, before anything is allocated, a batch whose arrays (about per_problem bytes per
    problem, plus `fixed`) would not fit in the memory available, and with device=True in the
    device's free memory too, naming the largest batch that would. Overcommitting kernels let
    such an allocation succeed and kill the process when its pages are touched, so this is the
    only place the error can be clear."""
    need = per_problem * batch + fixed
    if need <= 1 << 26:  # small enough never to matter: no need to ask the system
        return
    places = [(available_memory(), "of memory available here")]
    if device:
        from ._backend import device_memory

        places.append((device_memory(), "free on the device"))
    for have, where in places:
        if have is None or need <= have:
            continue
        fits = max(0, (have - fixed) // max(1, per_problem))
        raise ValueError(
            f"{name}: {what} of {batch} problems needs about "
            f"{_gib(need)} GiB, more than the {_gib(have)} GiB "
            f"{where}; the largest batch that fits is {fits} problems"
        )
