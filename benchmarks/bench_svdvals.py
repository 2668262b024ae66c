"""Batched singular values and the cost of logging metrics in fit(): `implicitreg.svdvals`
(compiled `cpu` backend) against `numpy.linalg.svd(X, compute_uv=False)`, side by side in
one run, and fit() with every metric against fit() with the loss alone.

    python benchmarks/bench_svdvals.py [--quick] [--repeats N] [--json out.json]

Part 1 times one svdvals call on a batch of random normal matrices (median over repeats,
each repeat enough calls for about 20-50 ms) and prints matrices/s of each and the ratio
numpy time / cpu time. Targets (float64): 2x2 B=65536 at least 30x, 8x8 B=8192 at least 10x,
32x32 B=1024 at least 3x; float32 rows have none. When torch or jax is importable,
`torch.linalg.svdvals` (CPU tensor) and `jax.jit(jnp.linalg.svd(compute_uv=False))` (CPU
device, compiled in the warm-up), both from peers.py, are timed on the same data and their
time / cpu time is printed too.

Part 2 times fit() of the paper's 2x2 problem (B=4096, depth 3, float64, lr 1e-4, a log
row every 100 steps) with metrics=("loss",) and with all twelve metrics, each run on a fresh
model from the same start, and prints the extra cost of the metrics (target: under 20%),
plus the time of one measure() call with all metrics.

Targets missed are marked MISSED; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import implicitreg as ir
from implicitreg.bench.cases import ALL_METRICS
from implicitreg.bench.harness import Peers, machine, median_time, ratio_text, write_json

PEERS = Peers(Path(__file__).parent)  # peers.py beside this script

CASES = [  # (n, batch, float64 target ratio); every case also runs in float32, untargeted
    (2, 65536, 30.0),
    (3, 8192, None),
    (4, 8192, None),
    (8, 8192, 10.0),
    (16, 2048, None),
    (32, 1024, 3.0),
]
FIT_BATCH, FIT_DEPTH, FIT_LR, FIT_EVERY = 4096, 3, 1e-4, 100
FIT_TARGET_PCT = 20.0


def per_call(fn, repeats: int, sample_s: float) -> float:
    """Median seconds of one fn() call, timing batches of calls of about sample_s each."""
    # Warm-up of at least 3 calls and sample_s seconds: the first calls of a size are slower
    # (thread start, page faults, jax compilation) and would skew both the sizing and a sample.
    start, warm = time.perf_counter(), 0
    while warm < 3 or time.perf_counter() - start < sample_s:
        fn()
        warm += 1
    once = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        once.append(time.perf_counter() - t0)
    calls = max(1, min(10_000, round(sample_s / max(min(once), 1e-9))))

    def batch():
        for _ in range(calls):
            fn()

    return median_time(batch, repeats=repeats, warmup=0) / calls


def svdvals_case(n, B, dtype, repeats, sample_s, torch, jax) -> dict:
    X = np.random.default_rng(0).standard_normal((B, n, n)).astype(dtype)
    s_cpu = ir.svdvals(X)
    s_ref = np.linalg.svd(X, compute_uv=False)
    err = float(np.max(np.abs(s_cpu - s_ref).max(axis=1) / s_ref[:, 0]))
    row = {
        "n": n,
        "batch": B,
        "dtype": dtype,
        "max_rel_err": err,
        "cpu_s": per_call(lambda: ir.svdvals(X), repeats, sample_s),
        "numpy_s": per_call(lambda: np.linalg.svd(X, compute_uv=False), repeats, sample_s),
        "torch_s": None,
        "jax_s": None,
    }
    if torch is not None:
        row["torch_s"] = per_call(
            PEERS.module.torch_svdvals(X, "cpu", torch=torch), repeats, sample_s
        )
    if jax is not None:
        row["jax_s"] = per_call(PEERS.module.jax_svdvals(X, "cpu", jax=jax), repeats, sample_s)
    for k in ("cpu", "numpy"):
        row[f"{k}_matrices_per_s"] = B / row[f"{k}_s"]
    for k in ("numpy", "torch", "jax"):
        row[f"{k}_ratio"] = None if row[f"{k}_s"] is None else row[f"{k}_s"] / row["cpu_s"]
    return row


def fit_overhead(steps: int, repeats: int) -> dict:
    """Median fit() seconds with the loss alone and with every metric, alternating the two
    so that both see the same machine state; each run starts from a fresh copy of one init."""
    problem = ir.problems.paper_2x2(batch=FIT_BATCH)
    start = ir.DeepFactorization.init(
        problem, depth=FIT_DEPTH, init="normal", scale=1e-2, seed=0, dtype="float64"
    )
    factors = [W.copy() for W in start.factors]
    variants = {"loss_only": ("loss",), "all_metrics": ALL_METRICS}
    times = {k: [] for k in variants}
    for r in range(repeats + 1):  # round 0 is the warm-up
        for name, metrics in variants.items():
            f = ir.DeepFactorization(problem, factors)
            t0 = time.perf_counter()
            f.fit(FIT_LR, max_steps=steps, log=ir.every(FIT_EVERY), metrics=metrics, progress=False)
            if r:
                times[name].append(time.perf_counter() - t0)
    loss_s, all_s = (float(np.median(times[k])) for k in variants)
    measure_s = per_call(lambda: start.measure(ALL_METRICS), max(repeats, 5), 0.02)
    log_rows = steps // FIT_EVERY
    return {
        "batch": FIT_BATCH,
        "depth": FIT_DEPTH,
        "lr": FIT_LR,
        "steps": steps,
        "log_every": FIT_EVERY,
        "log_rows": log_rows,
        "metrics": list(ALL_METRICS),
        "loss_only_s": loss_s,
        "all_metrics_s": all_s,
        "loss_only_runs_s": times["loss_only"],
        "all_metrics_runs_s": times["all_metrics"],
        "extra_pct": 100.0 * (all_s - loss_s) / loss_s,
        "extra_per_log_row_us": 1e6 * (all_s - loss_s) / max(1, log_rows),
        "measure_all_us": 1e6 * measure_s,
        "target_pct": FIT_TARGET_PCT,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer fit steps and repeats")
    ap.add_argument("--repeats", type=int, help="repeats per median (default 5, 3 with --quick)")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    repeats = max(1, args.repeats or (3 if args.quick else 5))
    sample_s = 0.02 if args.quick else 0.05
    steps = 5000 if args.quick else 20000
    torch, jax = PEERS.lib("torch"), PEERS.lib("jax")
    versions = {
        "numpy": np.__version__,
        "torch": torch and torch.__version__,
        "jax": jax and jax.__version__,
    }
    info = ir.build_info()
    print(
        f"implicitreg {ir.__version__}, {info['cpu_flags']}, {info['threads']} threads; "
        f"median of {repeats}; " + ", ".join(f"{k} {v or '-'}" for k, v in versions.items())
    )

    print(
        f"\n{'svdvals':22s} {'cpu s':>10s} {'cpu mat/s':>10s} {'numpy s':>10s} "
        f"{'numpy mat/s':>11s} {'ratio':>8s} {'target':>7s} {'torch':>8s} {'jax':>8s}"
    )
    rows = []
    for dtype in ("float64", "float32"):
        for n, B, target in CASES:
            target = target if dtype == "float64" else None
            row = svdvals_case(n, B, dtype, repeats, sample_s, torch, jax)
            row["case"] = f"{n}x{n} B={B} {dtype}"
            row["target"] = target
            row["met"] = target is None or row["numpy_ratio"] >= target
            tol = 100 * n * float(np.finfo(dtype).eps)  # a few ulps * sigma_1, with room
            marks = ("" if row["met"] else "  MISSED") + (
                "" if row["max_rel_err"] <= tol else f"  MISMATCH {row['max_rel_err']:.1e}"
            )
            print(
                f"{row['case']:22s} {row['cpu_s']:10.3e} {row['cpu_matrices_per_s']:10.3e} "
                f"{row['numpy_s']:10.3e} {row['numpy_matrices_per_s']:11.3e} "
                f"{ratio_text(row['numpy_ratio']):>8s} {ratio_text(target):>7s} "
                f"{ratio_text(row['torch_ratio']):>8s} {ratio_text(row['jax_ratio']):>8s}{marks}"
            )
            rows.append(row)

    fit = fit_overhead(steps, repeats)
    fit["met"] = fit["extra_pct"] < FIT_TARGET_PCT
    print(
        f"\nfit() paper_2x2 B={FIT_BATCH} depth {FIT_DEPTH} float64, {steps} steps, "
        f"log every {FIT_EVERY} ({fit['log_rows']} rows)"
    )
    print(f"{'metrics':22s} {'median s':>10s} {'extra':>8s} {'target':>7s}")
    print(f"{'loss':22s} {fit['loss_only_s']:10.4f}")
    print(
        f"{f'all {len(ALL_METRICS)}':22s} {fit['all_metrics_s']:10.4f} "
        f"{fit['extra_pct']:7.1f}% {f'<{FIT_TARGET_PCT:.0f}%':>7s}"
        f"{'' if fit['met'] else '  MISSED'}"
    )
    print(
        f"extra per log row: {fit['extra_per_log_row_us']:.0f} us; one measure() of all "
        f"{len(ALL_METRICS)} metrics at B={FIT_BATCH}: {fit['measure_all_us']:.0f} us"
    )

    write_json(
        args.json,
        {
            "benchmark": "svdvals",
            "machine": machine(),
            "build": info,
            "versions": versions,
            "repeats": repeats,
            "quick": args.quick,
            "svdvals": rows,
            "fit": fit,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
