"""Wall time of the named experiments, and what exact threshold crossings cost.

    python benchmarks/bench_reproduce.py [--quick] [--repeats N] [--json out.json]

Part 1 runs `implicitreg reproduce NAME` (figures included, a fresh output directory each
time) for paper-2x2 --quick (target: under 180 s on 2 cores) and the full default paper-2x2
(target: under 1800 s), and each other experiment's default, and prints the median wall time,
the problem-steps/s of the training and the ratio to the target. --quick runs the quick
variants only.

Part 2 runs the paper-2x2 quick sweep, capped at 20,000 steps, on the `numpy` reference
backend and on `cpu`, side by side, and prints the ratio; then the same 2x2 depth-3 fit
(B = 4096, 200,000 steps) with and without the paper's 45 crossing thresholds, and prints
the overhead of recording them in the core (target: under 5%).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import implicitreg as ir
from implicitreg.experiments import EXPERIMENTS, get
from implicitreg.experiments.matrix import loss_grid
from implicitreg.sweep import load_sweep, sweep

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine, median_time, write_json  # noqa: E402

TARGETS = {("paper-2x2", True): 180.0, ("paper-2x2", False): 1800.0}


def run_cli(name: str, quick: bool) -> tuple[float, float]:
    """(wall seconds of `implicitreg reproduce`, problem-steps/s of its training)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "implicitreg", "reproduce", name, "--quiet",
               "--out", f"{tmp}/out"] + (["--quick"] if quick else [])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        timings = load_sweep(f"{tmp}/out").meta["timings"]
    secs = sum(t["seconds"] for t in timings)
    return wall, sum(t["problem_steps"] for t in timings) / max(secs, 1e-9)


def part1(args, report):
    print("Part 1: `implicitreg reproduce NAME` wall time (figures included)")
    print(f"{'experiment':20s} {'variant':8s} {'median s':>9s} {'problem-steps/s':>16s} "
          f"{'target s':>9s} {'target/time':>12s}")
    for name in EXPERIMENTS:
        for quick in (True, False) if not args.quick else (True,):
            walls, rate = [], 0.0
            for _ in range(args.repeats):
                w, rate = run_cli(name, quick)
                walls.append(w)
            wall = sorted(walls)[len(walls) // 2]
            target = TARGETS.get((name, quick))
            mark = ("" if target is None else
                    f"{target / wall:11.0f}x" + ("" if wall < target else " MISSED"))
            print(f"{name:20s} {'quick' if quick else 'full':8s} {wall:9.1f} {rate:16.3g} "
                  f"{target if target else '-':>9} {mark:>12s}")
            report["reproduce"].append({"experiment": name, "quick": quick, "seconds": wall,
                                        "problem_steps_per_s": rate, "target_s": target})


def part2(args, report):
    print("\nPart 2: the paper-2x2 quick sweep capped at 20,000 steps, numpy vs cpu backend")
    exp = get("paper-2x2")
    base, grid, seeds = exp.spec(quick=True)
    base = {**base, "max_steps": 20_000}
    times = {}
    for backend in ("numpy", "cpu"):
        times[backend] = median_time(lambda b=backend: sweep(base, grid, seeds, backend=b,
                                                             progress=False),
                                     repeats=args.repeats, warmup=0)
    print(f"  numpy {times['numpy']:.2f} s, cpu {times['cpu']:.3f} s: "
          f"{times['numpy'] / times['cpu']:.0f}x")
    report["sweep_numpy_vs_cpu"] = times

    print("\n  2x2 depth 3, B = 4096, 200,000 steps: fit without and with 45 thresholds")
    p = ir.problems.paper_2x2(batch=4096)
    thr = loss_grid(1e-4)

    def fit(thresholds):
        f = ir.DeepFactorization.init(p, depth=3, scale=1e-6, scale_by="product",
                                      det="positive", seed=0)
        f.fit(3e-3, 200_000, log=ir.geometric(100), thresholds=thresholds, progress=False)

    plain = median_time(lambda: fit(()), repeats=args.repeats)
    tracked = median_time(lambda: fit(thr), repeats=args.repeats)
    over = tracked / plain - 1
    print(f"  without {plain:.3f} s, with {tracked:.3f} s: overhead {100 * over:.1f}%"
          + ("" if over < 0.05 else " MISSED (target under 5%)"))
    report["crossings_overhead"] = {"plain_s": plain, "tracked_s": tracked}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="quick variants only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    report = {"machine": machine(), "build": ir.build_info(), "reproduce": []}
    part1(args, report)
    part2(args, report)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
