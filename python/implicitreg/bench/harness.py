"""What every benchmark shares: sides and cases, the timers, sizing and timing the sides,
loading the PyTorch/JAX peers of `benchmarks/peers.py`, and the small helpers of their
reports (first lines of errors, relative differences, machine, JSON).

A timer is any object with `time(fn) -> seconds` that calls fn() once: `WallClock` on the
CPU, `CudaEvents` on a GPU. A side's run(n) returns only once its work is done, so either
timer measures the whole of it; the sizing and timing below never read a clock themselves.

numpy is the only import: CuPy is imported by `CudaEvents` alone, torch and jax by peers.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PEERS = ("torch", "jax")
MAX_UNITS = 1_000_000  # steps (or calls) per sample, whatever the sizing says
# before each interleaved sample: the worker threads of the side timed before (OpenMP,
# torch's and XLA's pools) spin a while after their work, and would take a core from the next
PAUSE_S = 0.01


# ----------------------------------------------------------------------------- timers


class WallClock:
    """Host wall time of fn()."""

    def time(self, fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


class CudaEvents:
    """GPU time of fn() between two CUDA events (CuPy), both recorded on the legacy default
    stream: the start waits there for the work queued before it on every blocking stream, so
    what the side timed before left running is not counted (events recorded on other streams
    may take in unrelated work, as cudaEventElapsedTime's documentation warns). fn() waits
    for its own work, on whatever streams torch or XLA use, so the end event follows it."""

    def __init__(self, cupy=None):
        if cupy is None:
            import cupy
        self._cuda = cupy.cuda

    def time(self, fn: Callable[[], object]) -> float:
        cuda = self._cuda
        # fresh events on each call: a timer shared by nested timings stays correct
        start, end = cuda.Event(), cuda.Event()
        start.record(cuda.Stream.null)
        fn()
        end.record(cuda.Stream.null)
        end.synchronize()  # get_elapsed_time refuses events the GPU has not reached
        return cuda.get_elapsed_time(start, end) / 1e3  # milliseconds


WALL_CLOCK = WallClock()


# ----------------------------------------------------------------------------- sides, cases


@dataclass
class Side:
    """One implementation of a case: run(n) does n steps (or calls) and returns when done;
    reset() restores the start, untimed; run takes whole multiples of granule. check: its
    difference from the cpu backend's result (relative); match: within the case's tolerance."""

    run: Callable[[int], object]
    reset: Callable[[], None] = lambda: None
    granule: int = 1
    check: float = 0.0
    match: bool = True
    variant: str | None = None


@dataclass
class Case:
    """One row: `build(peers)` gives its sides by name (or, for a side that cannot run, the
    reason); flops per unit (problem-step, matrix, tensor) where the kernel has a fixed count;
    targets: (kind, threshold) with kind "rate", "peak" (percent) or a peer (ratio)."""

    id: str
    kernel: str
    title: str
    unit: str
    batch: int
    dtype: str
    flops: int | None
    build: Callable[[Peers], dict]
    targets: tuple = ()
    peers: tuple = PEERS


def whole(n: float, granule: int) -> int:
    """n rounded up to a whole multiple of granule (a side's run takes no other counts)."""
    return granule * -(-int(n) // granule)


def repeat(fn: Callable[[], object], n: int) -> None:
    """n calls of fn, each result dropped at once: keeping them would time fresh pages of
    memory (page faults) instead of the kernel."""
    for _ in range(n):
        fn()


def first_line(exc: BaseException, limit: int = 120) -> str:
    """An exception in one line of at most limit characters, for a table cell or a note."""
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:limit]


def rel_change_diff(got, want, start) -> float:
    """max_j max|(got_j - start_j) - (want_j - start_j)| / max|want_j - start_j|: how well a
    side's change of the factors matches the cpu backend's (the factors alone would hide a
    wrong gradient behind the start)."""
    worst = 0.0
    for a, b, s in zip(got, want, start, strict=True):
        da = np.asarray(a, np.float64) - s
        db = np.asarray(b, np.float64) - s
        scale = np.abs(db).max(initial=0.0)
        worst = max(worst, np.abs(da - db).max(initial=0.0) / scale if scale > 0 else np.inf)
    return float(worst)


def rel_diff(got, want) -> float:
    """max|got - want| / max|want| over arrays (NaN where both are NaN counts as equal)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    both_nan = np.isnan(got) & np.isnan(want)
    d = np.where(both_nan, 0.0, np.abs(got - want))
    scale = np.abs(np.where(np.isnan(want), 0.0, want)).max(initial=0.0)
    worst = d.max(initial=0.0)
    return float(worst / scale) if scale > 0 else (0.0 if worst == 0 else float("inf"))


# ----------------------------------------------------------------------------- peers


class Peers:
    """peers.py, found in `directory` (else `benchmarks/` under the current directory or in
    the source tree beside this package) and loaded once; torch and jax imported on first
    use. Where one cannot run, `load(name)` and `reason(name)` say why, for the table."""

    def __init__(self, directory: str | os.PathLike | None):
        self.module: Any = None
        self.path: Path | None = None
        self.missing: str | None = None  # why peers.py is not loaded
        if directory is not None:
            candidates = [Path(directory)]
        else:
            here = Path(__file__).resolve().parents[3]  # the source tree, for a checkout
            candidates = [Path.cwd() / "benchmarks", here / "benchmarks"]
        for d in candidates:
            if (d / "peers.py").is_file():
                self.path = d / "peers.py"
                break
        if self.path is None:
            where = f" in {directory}" if directory is not None else ""
            self.missing = f"peers: not found{where}, pass --peers DIR"
        else:
            name = "_implicitreg_bench_peers"
            spec = importlib.util.spec_from_file_location(name, self.path)
            assert spec is not None and spec.loader is not None  # a .py file always has both
            module = importlib.util.module_from_spec(spec)
            # registered under its name, as `import` would: pickle and dataclasses look a
            # class's module up in sys.modules
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # a broken peers.py costs its columns, not the run
                del sys.modules[name]
                self.missing = f"peers: {self.path} failed to load ({first_line(exc)})"
            else:
                self.module = module
        self._libs: dict[str, tuple] = {}

    def load(self, name: str) -> tuple[object | None, str | None]:
        """(the torch or jax module, None), or (None, why it cannot run here)."""
        if self.module is None:
            return None, self.missing
        if name not in self._libs:
            try:
                self._libs[name] = getattr(self.module, f"load_{name}")()
            except Exception as exc:
                self._libs[name] = (None, f"failed to import ({first_line(exc)})")
        return self._libs[name]

    def lib(self, name: str):
        """The torch or jax module, or None (see reason)."""
        return self.load(name)[0]

    def reason(self, name: str) -> str:
        why = self.load(name)[1]
        return f"{name}: {why}" if self.module is not None else str(self.missing)

    def versions(self) -> dict:
        return {
            k: getattr(lib, "__version__", None)
            for k, (lib, _) in self._libs.items()
            if lib is not None
        }


# ----------------------------------------------------------------------------- timing


def _sample(side: Side, n: int, timer, pause_s: float = 0.0) -> float:
    """Seconds of n units from the start; the reset, and the pause after it, untimed."""
    side.reset()
    if pause_s:
        time.sleep(pause_s)
    return timer.time(lambda: side.run(n))


def _scaled(n: int, t: float, sample_s: float, granule: int, max_units: int) -> int:
    """Units for a sample of sample_s seconds, from n units taking t seconds."""
    return min(max_units, granule * max(1, round(n * sample_s / max(t, 1e-9) / granule)))


def size(
    side: Side,
    sample_s: float,
    timer=WALL_CLOCK,
    max_units: int = MAX_UNITS,
    warmups: int = 1,
    tries: int = 1,
) -> tuple[int, float]:
    """(units per sample of about sample_s seconds, seconds of the first warm-up call):
    `warmups` calls of one granule (thread start, page faults, compilation), then samples
    grown until one takes a quarter of sample_s, then scaled to it. Each size is tried
    `tries` times and the fastest counts, so that one hiccup does not shrink the samples."""
    g = side.granule
    warm = _sample(side, g, timer)
    for _ in range(warmups - 1):
        _sample(side, g, timer)
    n = g
    while True:
        t = min(_sample(side, n, timer) for _ in range(tries))
        if t >= sample_s / 4 or n >= max_units:
            break
        grow = min(100.0, max(2.0, sample_s / 2 / max(t, 1e-9)))
        n = min(max_units, whole(n * grow, g))
    return _scaled(n, t, sample_s, g, max_units), warm


def _result(batch: int, n: int, times: list, warm: float) -> dict:
    med = statistics.median(times)
    return {
        "units": n,
        "median_s": med,
        "times_s": times,
        "warmup_s": warm,
        "rate": batch * n / med,
    }


def time_sides(sides: dict, batch: int, repeats: int, sample_s: float, timer=WALL_CLOCK) -> dict:
    """{name: timing} of every Side: sized one by one, then `repeats` rounds in which they
    take turns, each sample from the start, so that all see the same machine load."""
    sized = {name: size(s, sample_s, timer) for name, s in sides.items()}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, s in sides.items():
            times[name].append(_sample(s, sized[name][0], timer, PAUSE_S))
    return {name: _result(batch, n, times[name], warm) for name, (n, warm) in sized.items()}


def time_alone(
    side: Side,
    batch: int,
    repeats: int,
    sample_s: float,
    timer=WALL_CLOCK,
    max_units: int = MAX_UNITS,
) -> dict:
    """The timing of one side on its own (a device holds one side's memory at a time): two
    warm-up calls, each trial size tried twice, then `repeats` samples from the start; when
    their median still comes out under a quarter of sample_s they are sized and taken again,
    once."""
    n, warm = size(side, sample_s, timer, max_units, warmups=2, tries=2)
    for _ in range(2):
        times = [_sample(side, n, timer) for _ in range(repeats)]
        med = statistics.median(times)
        if med >= sample_s / 4 or n >= max_units:
            break
        n = _scaled(n, med, sample_s, side.granule, max_units)
    return _result(batch, n, times, warm)


def median_time(fn, repeats: int = 5, warmup: int = 1, timer=WALL_CLOCK) -> float:
    """Median seconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    return statistics.median([timer.time(fn) for _ in range(repeats)])


# ----------------------------------------------------------------------------- reports


def note_lines(notes: dict[str, list[str]], n_rows: int) -> list[str]:
    """ "text [case, case]" per note, or "[every case]" where it holds for all n_rows."""
    return [
        f"{text} [{'every case' if len(ids) == n_rows else ', '.join(ids)}]"
        for text, ids in notes.items()
    ]


def ratio_text(v) -> str:
    """A ratio as a table cell: "12.3x", or "-" where there is none."""
    return "-" if v is None else f"{v:.1f}x"


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
    }


def write_json(path: str | None, report: dict, quiet: bool = False) -> None:
    """Write report to path (nothing when None), whole or not at all: a reader never sees a
    half-written file, even when the writer is killed mid-write."""
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=2)
        os.replace(tmp, path)
        if not quiet:
            print(f"wrote {path}")
