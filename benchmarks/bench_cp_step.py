"""CP tensor factorization steps: problem-steps per second of `CPFactorization.step` on the
compiled `cpu` backend against the pure-NumPy `numpy` backend (the reference), side by side
in one run, and against batched PyTorch and JAX versions of the same step when installed.

    python benchmarks/bench_cp_step.py [--quick] [--repeats N] [--json out.json]

Each case builds B tensor completion problems (`ir.problems.random_cp_tensor`, rank 1,
Frobenius norm 1, the first n entries of each problem's permutation observed by
`observe_first`), one start (`CPFactorization.init`, init std 1e-2, seed 0) and times
`f.step(lr, steps, optimizer=...)` on a fresh model from that start in every sample (tol
None and lr 1e-3, so no problem freezes and every step is real work). Steps per sample are
sized from calibration calls to take about 1 s (0.5 s with --quick), at least one step; the
versions take turns in each round, so that all see the same load from other processes, and
the median over repeats (after one warm-up round) is printed for each, with cpu / numpy.

Target: order 3, dim 8, R = 64, B = 256, n = 200, float64, group_rmsprop: cpu at least 20x
numpy. The other rows (gd, float32, n = 511, order 4 dim 8 R = 512 B = 32 n = 2000) have no
target.

When torch is importable, a batched PyTorch step (`peers.TorchCP`: full tensor by einsum,
masked mean squared error per problem, autograd, the same gd / GroupRMSprop update with
per-problem state in torch ops, CPU tensors, float64) runs on the float64 rows; when jax is
importable, the same step under jax.jit + lax.scan of 10 steps per call (`peers.JaxCP`, CPU
device, x64 enabled, compiled in the warm-up). Before
timing, each checks that its loss after a few steps matches the cpu backend's to 1e-8
relative (printed; MISMATCH otherwise). Their columns are cpu / torch and cpu / jax.

Targets missed are marked MISSED; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import implicitreg as ir
from implicitreg.bench.harness import Peers, machine, ratio_text, write_json

PEERS = Peers(Path(__file__).parent)  # peers.py beside this script

LR, SCALE, BETA, EPS = 1e-3, 1e-2, 0.99, 1e-6
CHECK_STEPS, CHECK_RTOL = 10, 1e-8  # a whole number of jax's scans (peers.JaxCP.granule)
CASES = [  # (order, dim, R, batch, n observed, dtype, optimizer, target cpu/numpy)
    (3, 8, 64, 256, 200, "float64", "group_rmsprop", 20.0),
    (3, 8, 64, 256, 200, "float64", "gd", None),
    (3, 8, 64, 256, 200, "float32", "group_rmsprop", None),
    (3, 8, 64, 256, 511, "float64", "group_rmsprop", None),
    (4, 8, 512, 32, 2000, "float64", "group_rmsprop", None),
]


def interleaved(variants: dict, repeats: int, warmup: int = 1) -> dict:
    """{name: (median seconds, last result)} of run(make(), steps) for each variant
    name -> (make, run, steps), the variants taking turns in every round so that all see the
    same machine load; make() (a fresh model from the start) is not timed."""
    times = {k: [] for k in variants}
    last = {}
    for i in range(warmup + repeats):
        for k, (make, run, steps) in variants.items():
            state = make()
            t0 = time.perf_counter()
            last[k] = run(state, steps)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(times[k]), last[k]) for k in variants}


def size_steps(make, run, sample_s: float, probe: int, granule: int = 1) -> int:
    """Steps (a multiple of granule) for a sample of about sample_s seconds: estimated from
    the second of two `probe`-step calls (the first pays for thread start, page faults,
    compilation), then corrected by up to two trial samples."""

    def sample(steps):
        state = make()
        t0 = time.perf_counter()
        run(state, steps)
        return time.perf_counter() - t0

    def whole(steps):
        return granule * max(1, round(steps / granule))

    probe = whole(probe)
    sample(probe)
    steps = whole(sample_s * probe / max(sample(probe), 1e-9))
    for _ in range(2):
        dt = sample(steps)
        if 0.6 * sample_s <= dt <= 1.6 * sample_s:
            break
        steps = whole(steps * sample_s / max(dt, 1e-9))
    return min(steps, granule * (100_000 // granule))


def build(order, dim, batch, n):
    dims = (dim,) * order
    targets, orders = ir.problems.random_cp_tensor(dims, 1, batch=batch, seed=0)
    return ir.tensor_completion(targets, ir.problems.observe_first(orders, n, dims))


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def run_case(case, repeats, sample_s, torch, jax) -> dict:
    order, dim, R, B, n, dtype, optimizer, target = case
    name = f"order {order} d={dim} R={R} B={B} n={n} {dtype} {optimizer}"
    problem = build(order, dim, B, n)
    start = [
        U.copy()
        for U in ir.CPFactorization.init(problem, rank=R, scale=SCALE, seed=0, dtype=dtype).factors
    ]
    row = {
        "case": name,
        "order": order,
        "dim": dim,
        "R": R,
        "batch": B,
        "n": n,
        "dtype": dtype,
        "optimizer": optimizer,
        "target": target,
    }

    def step(f, steps):
        f.step(LR, steps, optimizer=optimizer, beta=BETA, eps=EPS)
        return f

    # loss after CHECK_STEPS steps on the cpu backend: the reference for every other version
    ref_loss = step(ir.CPFactorization(problem, start, backend="cpu"), CHECK_STEPS).loss()
    row["checks"] = {}
    variants = {}
    for backend, probe in (("cpu", 10), ("numpy", 2)):

        def make(backend=backend):
            return ir.CPFactorization(problem, start, backend=backend)

        if backend == "numpy":
            row["checks"]["numpy"] = rel_diff(step(make(), CHECK_STEPS).loss(), ref_loss)
        variants[backend] = (make, step, size_steps(make, step, sample_s, probe))
    a = problem.arrays(np.float64)
    targets, masks = (a[k].reshape((-1,) + problem.dims) for k in ("target", "mask"))
    for name_x, lib, cls in (
        ("torch", torch, PEERS.module.TorchCP),
        ("jax", jax, PEERS.module.JaxCP),
    ):
        row[f"{name_x}_problem_steps_per_s"] = None
        if lib is None or dtype != "float64":
            continue
        impl = cls(
            targets, masks, start, optimizer, BETA, EPS, dtype, device="cpu", **{name_x: lib}
        )

        def make(impl=impl):
            impl.reset()
            return impl

        def run(impl, steps):
            impl.run(steps, LR)
            return impl

        run(make(), CHECK_STEPS)
        row["checks"][name_x] = rel_diff(impl.losses(), ref_loss)
        variants[name_x] = (make, run, size_steps(make, run, sample_s, 2, impl.granule))
    for k, (sec, last) in interleaved(variants, repeats).items():
        steps = variants[k][2]
        row[f"{k}_steps"], row[f"{k}_s"] = steps, sec
        row[f"{k}_problem_steps_per_s"] = B * steps / sec
        if k in ("cpu", "numpy"):
            row[f"{k}_frozen"] = int((last.frozen_at >= 0).sum())
    cpu = row["cpu_problem_steps_per_s"]
    for k in ("numpy", "torch", "jax"):
        other = row[f"{k}_problem_steps_per_s"]
        row[f"{k}_ratio"] = None if other is None else cpu / other
    row["met"] = target is None or row["numpy_ratio"] >= target
    return row


def _r(v) -> str:
    return "-" if v is None else f"{v:.3e}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter samples and fewer repeats")
    ap.add_argument("--repeats", type=int, help="repeats per median (default 5, 3 with --quick)")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    repeats = max(1, args.repeats or (3 if args.quick else 5))
    sample_s = 0.5 if args.quick else 1.0
    torch, jax = PEERS.lib("torch"), PEERS.lib("jax")
    versions = {
        "numpy": np.__version__,
        "torch": torch and torch.__version__,
        "jax": jax and jax.__version__,
    }
    info = ir.build_info()
    print(
        f"implicitreg {ir.__version__}, {info['cpu_flags']}, {info['threads']} threads; "
        f"median of {repeats}, samples of about {sample_s} s; lr {LR}, init std {SCALE}, "
        f"tol None; " + ", ".join(f"{k} {v or '-'}" for k, v in versions.items())
    )
    if torch is None or jax is None:
        print(
            "("
            + " and ".join(k for k, v in (("torch", torch), ("jax", jax)) if v is None)
            + " not importable: those columns are '-')"
        )
    print(
        f"\n{'case (problem-steps/s)':52s} {'cpu':>10s} {'numpy':>10s} {'ratio':>7s} "
        f"{'target':>6s} {'torch':>10s} {'cpu/torch':>9s} {'jax':>10s} {'cpu/jax':>8s}"
    )
    rows = []
    for case in CASES:
        row = run_case(case, repeats, sample_s, torch, jax)
        rows.append(row)
        t = row["target"]
        frozen = row["cpu_frozen"] + row["numpy_frozen"]
        print(
            f"{row['case']:52s} {_r(row['cpu_problem_steps_per_s']):>10s} "
            f"{_r(row['numpy_problem_steps_per_s']):>10s} {ratio_text(row['numpy_ratio']):>7s} "
            f"{(f'{t:.0f}x' if t else '-'):>6s} {_r(row['torch_problem_steps_per_s']):>10s} "
            f"{ratio_text(row['torch_ratio']):>9s} {_r(row['jax_problem_steps_per_s']):>10s} "
            f"{ratio_text(row['jax_ratio']):>8s}{'' if row['met'] else '  MISSED'}"
            f"{f'  ({frozen} problems froze)' if frozen else ''}"
        )

    print(
        f"\nsteps per sample and median sample seconds; loss after {CHECK_STEPS} steps against "
        f"the cpu backend's (max relative difference over problems, must be <= {CHECK_RTOL:g} "
        "for torch/jax)"
    )
    for row in rows:
        parts = [
            f"{k} {row[f'{k}_steps']} steps {row[f'{k}_s']:.2f} s"
            for k in ("cpu", "numpy", "torch", "jax")
            if f"{k}_steps" in row
        ]
        checks = []
        for k, d in row["checks"].items():
            if k == "numpy":  # the reference backend: shown, not judged (float32 rows too)
                checks.append(f"numpy {d:.1e}")
                continue
            row[f"{k}_loss_ok"] = bool(d <= CHECK_RTOL)
            checks.append(f"{k} {d:.1e} {'ok' if d <= CHECK_RTOL else 'MISMATCH'}")
        print(f"  {row['case']:52s} " + "; ".join(parts) + " | check: " + ", ".join(checks))

    write_json(
        args.json,
        {
            "benchmark": "cp_step",
            "machine": machine(),
            "build": info,
            "versions": versions,
            "repeats": repeats,
            "quick": args.quick,
            "lr": LR,
            "init_std": SCALE,
            "beta": BETA,
            "eps": EPS,
            "results": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
