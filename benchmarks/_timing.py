"""Shared timing helpers of the benchmark scripts: warm up, repeat, take the median."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict[str, object]:
    return {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count()}


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


def ratio_text(v) -> str:
    """A ratio as a table cell: "12.3x", or "-" where there is none."""
    return "-" if v is None else f"{v:.1f}x"
