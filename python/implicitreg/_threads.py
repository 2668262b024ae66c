"""The thread count of the CPU kernels (csrc/cpu/threads.h decides each call's team)."""

from __future__ import annotations

from . import _backend
from ._checks import integer


def set_num_threads(n: int | None) -> None:
    """The threads of every CPU kernel call from now on; None or 0 restores the default
    (OMP_NUM_THREADS, else every core). A smaller limit that threadpoolctl (or
    omp_set_num_threads) sets on the calling thread wins. A call too small to share runs on
    one thread whatever the count."""
    _backend._core.set_num_threads(0 if n is None else integer(n, "n", minimum=0))


def get_num_threads() -> int:
    """The threads a large CPU kernel call uses now."""
    return int(_backend._core.get_num_threads())
