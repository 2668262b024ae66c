"""Fused deep-matrix-factorization GD step: problem-steps per second of the compiled `cpu`
backend against the pure-NumPy `numpy` backend (the reference), side by side in one run.

    python benchmarks/bench_dmf_step.py [--quick] [--json out.json]

Each case times `f.step(lr, steps)` (many steps per call, as fit() runs them) and prints the
median over repeats, for each backend, and the ratio. Targets: 2x2 depth 3 B=4096 float64
at least 50x; 16x16 depth 3 B=1024 float64 at least 3x.
"""

from __future__ import annotations

import argparse
import sys

import implicitreg as ir
from implicitreg.bench.harness import machine, median_time, write_json

CASES = [  # (name, problem builder, depth, batch, dtype, steps cpu, steps numpy, target ratio)
    (
        "2x2 depth 3 B=4096 float64",
        lambda B: ir.problems.paper_2x2(batch=B),
        3,
        4096,
        "float64",
        4000,
        40,
        50.0,
    ),
    (
        "2x2 depth 3 B=4096 float32",
        lambda B: ir.problems.paper_2x2(batch=B),
        3,
        4096,
        "float32",
        4000,
        40,
        None,
    ),
    (
        "16x16 depth 3 B=1024 float64",
        lambda B: ir.problems.random_low_rank_completion(16, 16, 3, 128, batch=B, seed=0),
        3,
        1024,
        "float64",
        40,
        8,
        3.0,
    ),
]


def problem_steps_per_s(problem, depth, dtype, backend, steps, repeats) -> float:
    f = ir.DeepFactorization.init(
        problem, depth=depth, scale=1e-2, seed=0, dtype=dtype, backend=backend
    )
    # a small lr keeps every problem running (no freezing), so every step is real work
    t = median_time(lambda: f.step(1e-4, steps), repeats=repeats)
    return problem.batch * steps / t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    scale = 0.25 if args.quick else 1.0
    print(
        f"implicitreg {ir.__version__}, {ir.build_info()['cpu_flags']}, "
        f"{ir.build_info()['threads']} threads; median of {repeats}"
    )
    print(f"{'case':32s} {'cpu steps/s':>14s} {'numpy steps/s':>14s} {'ratio':>8s} {'target':>8s}")
    rows, ok = [], True
    for name, build, depth, B, dtype, s_cpu, s_np, target in CASES:
        p = build(B)
        cpu = problem_steps_per_s(p, depth, dtype, "cpu", max(1, int(s_cpu * scale)), repeats)
        ref = problem_steps_per_s(p, depth, dtype, "numpy", max(1, int(s_np * scale)), repeats)
        ratio = cpu / ref
        met = target is None or ratio >= target
        ok &= met
        print(
            f"{name:32s} {cpu:14.3e} {ref:14.3e} {ratio:7.1f}x "
            f"{(f'{target:.0f}x' if target else '-'):>8s}{'' if met else '  MISSED'}"
        )
        rows.append(
            {
                "case": name,
                "cpu_problem_steps_per_s": cpu,
                "numpy_problem_steps_per_s": ref,
                "ratio": ratio,
                "target": target,
            }
        )
    write_json(
        args.json,
        {"benchmark": "dmf_step", "machine": machine(), "build": ir.build_info(), "results": rows},
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
