"""The cost of running a sweep on Ray instead of in this process: the same 64-batch sweep with
`executor="local"` and `executor="ray"` (a local Ray cluster of this machine's cores), side
by side in one run.

    python benchmarks/bench_sweep_executor.py [--quick] [--repeats N] [--json out.json]

The sweep: the canonical 2x2 problem, depth 3, 256 seeds per batch, 64
batches (max_steps 20000, 20001, ..., one batch each: a shared key splits batches), lr 1e-3,
logged at 20 geometric points with the loss and w11, crossings at 1e-1 and 1e-2 (--quick:
16 batches of 64 seeds). The local executor runs the batches one after another, each on all
cores (OpenMP); Ray runs one batch per core at a time, each single-threaded, and writes
nothing here (no `out`) so that both time the same work.

Ray is started once, before timing (its start-up, about a few seconds, is printed apart: a
cluster is started once and serves many sweeps), and each executor gets one warm-up sweep
(for Ray: its workers start and import implicitreg). Then the median of `repeats` sweeps
each. ratio = ray / local; target: under 1.20 (Ray at most 20% slower). The results of the
two are checked equal, bit for bit. Targets missed are marked MISSED; the exit code is 0
either way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import implicitreg as ir
from implicitreg.bench.harness import machine, median_time, write_json

TARGET = 1.20


def spec(quick: bool):
    batches, seeds = (16, 64) if quick else (64, 256)
    base = {
        "problem": "paper_2x2",
        "depth": 3,
        "scale": 1e-2,
        "scale_by": "factor",
        "lr": 1e-3,
        "log": 20,
        "metrics": ("loss", "entry:0,0"),
        "thresholds": (1e-1, 1e-2),
    }
    grid = {"max_steps": [20_000 + i for i in range(batches)]}
    return base, grid, seeds


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal arrays, NaN where the other has NaN (a threshold never crossed)."""
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        import ray
    except ImportError:
        print("bench_sweep_executor: needs Ray (pip install 'implicitreg[ray]')")
        return 0

    base, grid, seeds = spec(args.quick)
    cpus = os.cpu_count() or 1
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0

    def run(executor):
        return ir.sweep(base, grid, seeds=seeds, progress=False, executor=executor)

    results = {e: run(e) for e in ("local", "ray")}  # the warm-up, kept for the check
    same = all(
        _equal(results["local"].columns[k], results["ray"].columns[k])
        for k in results["local"].columns
    )
    times = {
        e: median_time(lambda e=e: run(e), repeats=args.repeats, warmup=0) for e in ("local", "ray")
    }
    ray.shutdown()

    n_batches = len(grid["max_steps"])
    work = int(np.sum(results["local"].columns["steps"]))
    ratio = times["ray"] / times["local"]
    verdict = "" if ratio <= TARGET else "  MISSED"
    print(
        f"sweep: {n_batches} batches x {seeds} seeds (paper_2x2, depth 3, ~20000 steps), "
        f"{work:.3g} problem-steps; {cpus} CPUs; median of {args.repeats}"
    )
    print(f"{'executor':>9s} {'median s':>9s} {'problem-steps/s':>16s}")
    for e in ("local", "ray"):
        print(f"{e:>9s} {times[e]:9.3f} {work / times[e]:16.3g}")
    print(f"ratio ray / local: {ratio:.3f} (target <= {TARGET:.2f}){verdict}")
    print(f"results equal bit for bit: {same}")
    print(f"Ray start-up (once per cluster, not in the medians): {ray_start:.1f} s")
    write_json(
        args.json,
        {
            "machine": machine(),
            "batches": n_batches,
            "seeds": seeds,
            "problem_steps": work,
            "median_s": times,
            "ratio": ratio,
            "target": TARGET,
            "equal": same,
            "ray_start_s": ray_start,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
