"""`implicitreg bench`: every compiled kernel against the `numpy` backend and, when installed,
PyTorch and JAX implementations of the same step, in one table.

Each case times the `cpu` backend, the `numpy` backend (`implicitreg/reference.py`) and the
peers of `benchmarks/peers.py` (torch, jax; loaded from --peers DIR, else `benchmarks/`
under the current directory or beside the package's source tree) on the same inputs.
Before timing, every side runs a few steps (or one call) and its result must match the cpu
backend's; a side that does not is flagged `!` and no target is judged against it. Each
side's steps (or calls) per sample are sized to take about `sample_s` seconds after a
warm-up (which absorbs compilation); then the sides take turns for `repeats` rounds, each
sample from the same start, so that all see the same machine load; rate = batch * steps /
median seconds. % peak = flops per unit * rate / the FMA peak of the dtype (`fma_peak`): the
throughput an FMA probe measures on this machine, beside the formula's figure.

The modules: `harness` (sides, cases, timers, sizing and timing, peer loading; shared with
benchmarks/bench_gpu.py and the other scripts in benchmarks/), `cases` (this command's cases
and their flop counts), `report` (peak, rows, table, notes) and `contention` (`--contention`:
two processes at once on the cores).

numpy is the only dependency: torch and jax are imported by peers.py, and only when a case
needs them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import _backend, build_info
from .cases import ALL_METRICS, CHECK_STEPS, STEP_RTOL, cases, cp_flops, dmf_flops, select
from .contention import contention_report, print_contention, run_contention
from .harness import (
    MAX_UNITS,
    PAUSE_S,
    PEERS,
    WALL_CLOCK,
    Case,
    CudaEvents,
    Peers,
    Side,
    WallClock,
    first_line,
    machine,
    rel_change_diff,
    rel_diff,
    time_sides,
    write_json,
)
from .report import FMA_UNITS, fma_peak, measured_peak, notes, print_report, run_case, table

SIDES = ("cpu", "numpy") + PEERS

__all__ = [
    "ALL_METRICS",
    "CHECK_STEPS",
    "FMA_UNITS",
    "MAX_UNITS",
    "PAUSE_S",
    "PEERS",
    "SIDES",
    "STEP_RTOL",
    "Case",
    "CudaEvents",
    "Peers",
    "Side",
    "WallClock",
    "cases",
    "contention_report",
    "cp_flops",
    "dmf_flops",
    "fma_peak",
    "measured_peak",
    "print_contention",
    "notes",
    "rel_change_diff",
    "rel_diff",
    "run",
    "run_case",
    "run_contention",
    "select",
    "table",
    "time_sides",
]


def run(args, timer=WALL_CLOCK) -> int:
    """`implicitreg bench` (args from the CLI's parser): print the table, write --json."""
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise ValueError(f"--json: expected a file in an existing directory, got {args.json}")
    quick = bool(args.quick)
    if getattr(args, "contention", False):
        contention_report(0.5 if quick else 2.0, args.json, "implicitreg bench --contention")
        return 0
    repeats = args.repeats or (3 if quick else 5)
    sample_s = args.sample_s or (0.1 if quick else 0.3)
    chosen = select(args.only, cases())
    info = build_info()
    threads = info["threads"]
    assert isinstance(threads, int)
    measured = measured_peak(_backend._core, threads, repeats, seconds=0.02 if quick else 0.05)
    peak = fma_peak(info, args.peak_gflops, measured)
    peers = Peers(args.peers)
    print(
        f"implicitreg {info['version']} bench: {info['cpu_flags']}, {info['threads']} "
        f"threads; median of {repeats} samples of about {sample_s:g} s, after a warm-up"
    )
    print(peak["text"])
    print(f"  cross-check, {peak['formula']}")
    print(f"peers: {peers.path if peers.path else peers.missing}", flush=True)
    report: dict[str, Any] = {
        "benchmark": "implicitreg bench",
        "machine": {**machine(), "platform": sys.platform},
        "build": info,
        "quick": quick,
        "repeats": repeats,
        "sample_s": sample_s,
        "peak": peak,
        "peers": str(peers.path) if peers.path else peers.missing,
        "cases": [],
        "errors": [],
    }
    t_all = time.perf_counter()
    for case in chosen:
        t0 = time.perf_counter()
        try:
            row = run_case(case, peers, repeats, sample_s, peak, timer)
        except Exception as exc:  # the cpu or numpy side failed: an error of this run
            report["errors"].append(f"{case.id}: {first_line(exc)}")
            print(f"  {case.id}: ERROR {first_line(exc)}", flush=True)
            continue
        report["cases"].append(row)
        print(
            f"  {case.id}: cpu {row['sides']['cpu']['rate']:.3g} {case.unit} "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    report["versions"] = {"numpy": np.__version__, **peers.versions()}
    report["targets"] = [t for r in report["cases"] for t in r["targets"]]
    report["elapsed_s"] = time.perf_counter() - t_all
    print_report(report)
    write_json(args.json, report)
    return 1 if report["errors"] else 0
