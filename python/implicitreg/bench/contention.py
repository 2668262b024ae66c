"""`implicitreg bench --contention`: the CPU kernels on a shared machine.

Two processes run at once on the machine's cores, as when a user runs two jobs, or a notebook
beside a sweep. Each runs the same phases for the same wall time, first alone, then beside the
other (both released by one event, so that their phases overlap): DMF steps of the paper's
2x2 problem at depth 3 (B=4096, calls of 20 steps), then many small svdvals calls (8x8, B=32
a call). What a process keeps is its rate beside the other over its rate alone. A kernel that
runs on every core alone can keep about half of it when two processes share the cores; one
that runs on one thread, all of it. The target is 40%: an OpenMP team whose threads spin
against the other process, or wait at a barrier for a descheduled thread, keeps a few
percent.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

from .harness import write_json

TARGET = 0.40  # of the solo rate, every process and phase
PHASES = ("dmf_step-2x2-f64 B=4096", "svdvals-8x8-f64 B=32")


def _phases():
    """(name, call, units per call) of every phase, inputs built."""
    import numpy as np

    import implicitreg as ir

    f = ir.DeepFactorization.init(ir.problems.paper_2x2(batch=4096), depth=3, scale=0.3, seed=0)
    X = np.random.default_rng(0).standard_normal((32, 8, 8))
    return [
        (PHASES[0], lambda: f.step(1e-3, 20), 4096 * 20),
        (PHASES[1], lambda: ir.svdvals(X), 32),
    ]


def _worker(ready, go, seconds: float, results) -> None:
    phases = _phases()
    for _, call, _ in phases:  # warm-up: threads started, pages touched
        call()
    ready.put(os.getpid())
    go.wait()
    rates = {}
    for name, call, units in phases:
        done, t0 = 0, time.perf_counter()
        while True:
            call()
            done += units
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        rates[name] = done / elapsed
    results.put((os.getpid(), rates))


def _run(processes: int, seconds: float) -> list[dict[str, float]]:
    """The rates of `processes` processes started together."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, as a second job would be
    ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(ready, go, seconds, results)) for _ in range(processes)
    ]
    for w in workers:
        w.start()
    for _ in workers:  # every worker has built its inputs and warmed up
        ready.get(timeout=300)
    go.set()
    out = [results.get(timeout=120 + 10 * seconds)[1] for _ in workers]
    for w in workers:
        w.join(timeout=30)
    return out


def run_contention(seconds: float = 2.0, processes: int = 2) -> dict[str, Any]:
    """Each phase's rate alone and, for each of `processes` processes at once, beside the
    others; `kept` = beside / alone; `met` = every process kept at least TARGET in every
    phase."""
    alone = _run(1, seconds)[0]
    together = _run(processes, seconds)
    kept = {name: [r[name] / alone[name] for r in together] for name in PHASES}
    return {
        "processes": processes,
        "cpus": os.cpu_count(),
        "seconds_per_phase": seconds,
        "alone": alone,
        "together": together,
        "kept": kept,
        "target": TARGET,
        "met": all(k >= TARGET for ks in kept.values() for k in ks),
    }


def contention_report(seconds: float, json_path: str | None, benchmark: str) -> dict[str, Any]:
    """run_contention, printed, and written to json_path (when given) as `benchmark`."""
    rep = run_contention(seconds=seconds)
    print_contention(rep)
    write_json(json_path, {"benchmark": benchmark, **rep})
    return rep


def print_contention(rep: dict[str, Any]) -> None:
    print(
        f"contention: {rep['processes']} processes at once on {rep['cpus']} CPUs, "
        f"{rep['seconds_per_phase']:g} s per phase; kept = rate beside the others / rate alone"
    )
    print(f"{'phase':26s} {'alone /s':>10s}  {'together /s, each':>24s}  {'kept':>12s}")
    for name in PHASES:
        each = ", ".join(f"{r[name]:.3g}" for r in rep["together"])
        kept = ", ".join(f"{k:.0%}" for k in rep["kept"][name])
        print(f"{name:26s} {rep['alone'][name]:10.3g}  {each:>24s}  {kept:>12s}")
    status = "met" if rep["met"] else "MISSED"
    print(f"target: every process keeps >= {rep['target']:.0%} of its rate alone: {status}")
