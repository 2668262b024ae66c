"""Wall time of the named experiments, and what exact threshold crossings cost.

    python benchmarks/bench_reproduce.py [--quick] [--repeats N] [--json out.json]
    python benchmarks/bench_reproduce.py --gpu [--gpu-seeds N] [--cpu-seeds N]
                                         [--gpu-timeout S] [--json out.json]

Part 1 runs `implicitreg reproduce NAME` (figures included, a fresh output directory each
time) for paper-2x2 --quick (target: under 180 s on 2 cores) and the full default paper-2x2
(target: under 1800 s), and each other experiment's default, and prints the median wall time,
the problem-steps/s of the training and the ratio to the target. --quick runs the quick
variants only.

Part 2 runs the paper-2x2 quick sweep, capped at 20,000 steps, on the `numpy` reference
backend and on `cpu`, side by side, and prints the ratio; then the same 2x2 depth-3 fit
(B = 4096, 200,000 steps) with and without the paper's 45 crossing thresholds, and prints
the overhead of recording them in the core (target: under 5%).

--gpu runs only the full paper-2x2, once on each backend, in fresh output directories:
`implicitreg reproduce paper-2x2 --backend cpu --seeds 32` (the default seeds), then
`--backend cuda --seeds 4096`, and prints each one's wall time (figures included) and
problem-steps/s of its training, their ratios, and the target: the GPU run under 300 s. A GPU
run still going after --gpu-timeout seconds (default 300, the target) is stopped: past the
target it is missed, before it the target is not judged. Exit code 2 at once when
implicitreg's cuda backend is not usable here, 1 when a run failed, else 0 (the target may be
missed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import implicitreg as ir
from implicitreg.bench.harness import machine, median_time, write_json
from implicitreg.experiments import EXPERIMENTS, get
from implicitreg.experiments.paper import loss_grid
from implicitreg.sweep import load_sweep, sweep

TARGETS = {("paper-2x2", True): 180.0, ("paper-2x2", False): 1800.0}
GPU_TARGET_S = 300.0  # reproduce paper-2x2 --backend cuda --seeds 4096


def run_cli(
    name: str, quick: bool, *extra: str, timeout: float | None = None
) -> tuple[float, float]:
    """(wall seconds of `implicitreg reproduce NAME [--quick] EXTRA...`, problem-steps/s of
    its training); subprocess.TimeoutExpired after `timeout` seconds, CalledProcessError
    (with its output) when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = (
            [
                sys.executable,
                "-m",
                "implicitreg",
                "reproduce",
                name,
                "--quiet",
                "--out",
                f"{tmp}/out",
            ]
            + (["--quick"] if quick else [])
            + list(extra)
        )
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        timings = load_sweep(f"{tmp}/out").meta["timings"]
    secs = sum(t["seconds"] for t in timings)
    return wall, sum(t["problem_steps"] for t in timings) / max(secs, 1e-9)


def part1(args, report):
    print("Part 1: `implicitreg reproduce NAME` wall time (figures included)")
    print(
        f"{'experiment':20s} {'variant':8s} {'median s':>9s} {'problem-steps/s':>16s} "
        f"{'target s':>9s} {'target/time':>12s}"
    )
    for name in EXPERIMENTS:
        for quick in (True, False) if not args.quick else (True,):
            walls, rate = [], 0.0
            for _ in range(args.repeats):
                w, rate = run_cli(name, quick)
                walls.append(w)
            wall = sorted(walls)[len(walls) // 2]
            target = TARGETS.get((name, quick))
            mark = (
                ""
                if target is None
                else f"{target / wall:11.0f}x" + ("" if wall < target else " MISSED")
            )
            print(
                f"{name:20s} {'quick' if quick else 'full':8s} {wall:9.1f} {rate:16.3g} "
                f"{target if target else '-':>9} {mark:>12s}"
            )
            report["reproduce"].append(
                {
                    "experiment": name,
                    "quick": quick,
                    "seconds": wall,
                    "problem_steps_per_s": rate,
                    "target_s": target,
                }
            )


def part2(args, report):
    print("\nPart 2: the paper-2x2 quick sweep capped at 20,000 steps, numpy vs cpu backend")
    exp = get("paper-2x2")
    base, grid, seeds = exp.spec(quick=True)
    base = {**base, "max_steps": 20_000}
    times = {}
    for backend in ("numpy", "cpu"):
        times[backend] = median_time(
            lambda b=backend: sweep(base, grid, seeds, backend=b, progress=False),
            repeats=args.repeats,
            warmup=0,
        )
    print(
        f"  numpy {times['numpy']:.2f} s, cpu {times['cpu']:.3f} s: "
        f"{times['numpy'] / times['cpu']:.0f}x"
    )
    report["sweep_numpy_vs_cpu"] = times

    print("\n  2x2 depth 3, B = 4096, 200,000 steps: fit without and with 45 thresholds")
    p = ir.problems.paper_2x2(batch=4096)
    thr = loss_grid(1e-4)

    def fit(thresholds):
        f = ir.DeepFactorization.init(
            p, depth=3, scale=1e-6, scale_by="product", det="positive", seed=0
        )
        f.fit(3e-3, 200_000, log=ir.geometric(100), thresholds=thresholds, progress=False)

    plain = median_time(lambda: fit(()), repeats=args.repeats)
    tracked = median_time(lambda: fit(thr), repeats=args.repeats)
    over = tracked / plain - 1
    print(
        f"  without {plain:.3f} s, with {tracked:.3f} s: overhead {100 * over:.1f}%"
        + ("" if over < 0.05 else " MISSED (target under 5%)")
    )
    report["crossings_overhead"] = {"plain_s": plain, "tracked_s": tracked}


def gpu(args) -> int:
    """--gpu: the full paper-2x2 on the cpu backend and on the device, one run each."""
    if args.gpu_backend == "cuda":
        cuda = ir.backends()["cuda"]
        if not cuda["available"]:
            print(
                f"bench_reproduce: --gpu needs implicitreg's cuda backend, which is not "
                f"usable here: {cuda['reason']}",
                file=sys.stderr,
            )
            write_json(
                args.json,
                {"machine": machine(), "error": f"cuda backend not usable: {cuda['reason']}"},
            )
            return 2
    print("implicitreg reproduce paper-2x2 (full, figures included), one run each")
    print(f"{'side':5s} {'backend':8s} {'seeds':>6s} {'wall s':>9s} {'problem-steps/s':>16s}")
    runs, failed = {}, False
    for side, backend, seeds, timeout in (
        ("cpu", "cpu", args.cpu_seeds, None),
        ("gpu", args.gpu_backend, args.gpu_seeds, args.gpu_timeout),
    ):
        run = runs[side] = {"backend": backend, "seeds": seeds}
        try:
            run["seconds"], run["problem_steps_per_s"] = run_cli(
                "paper-2x2", False, "--backend", backend, "--seeds", str(seeds), timeout=timeout
            )
        except subprocess.TimeoutExpired:
            run["timed_out_after_s"] = timeout
            print(
                f"{side:5s} {backend:8s} {seeds:6d} {f'> {timeout:.0f}':>9s} {'-':>16s}  (stopped)"
            )
            continue
        except subprocess.CalledProcessError as exc:
            run["error"] = f"exit {exc.returncode}: {(exc.stderr or '').strip()[-2000:]}"
            print(f"{side:5s} {backend:8s} {seeds:6d} FAILED ({run['error']})")
            failed = True
            continue
        print(
            f"{side:5s} {backend:8s} {seeds:6d} {run['seconds']:9.1f} "
            f"{run['problem_steps_per_s']:16.3g}"
        )
    g, c = runs["gpu"], runs["cpu"]
    both = "seconds" in g and "seconds" in c
    out = {
        "experiment": "paper-2x2",
        "runs": runs,
        "target_s": GPU_TARGET_S,
        "rate_ratio": g["problem_steps_per_s"] / c["problem_steps_per_s"] if both else None,
        "wall_ratio": g["seconds"] / c["seconds"] if both else None,
    }
    if both:
        print(
            f"gpu / cpu: {out['rate_ratio']:.3g}x the problem-steps/s, "
            f"{out['wall_ratio']:.3g}x the wall time for {g['seeds'] / c['seeds']:.3g}x the "
            "seeds"
        )
    # a run stopped at the target or later has missed it; stopped earlier, nothing is known
    stopped = g.get("timed_out_after_s")
    if "seconds" in g:
        out["met"], got = g["seconds"] < GPU_TARGET_S, f"{g['seconds']:.1f} s"
    elif stopped is not None:
        out["met"], got = (
            (False if stopped >= GPU_TARGET_S else None),
            f"stopped after {stopped:.0f} s",
        )
    else:
        out["met"], got = None, "failed"
    status = {True: "met", False: "MISSED", None: "not judged"}[out["met"]]
    print(
        f"target: --backend {g['backend']} --seeds {g['seeds']} under {GPU_TARGET_S:.0f} s: "
        f"{status} ({got})"
    )
    write_json(args.json, {"machine": machine(), "build": ir.build_info(), "gpu_reproduce": out})
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="quick variants only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--gpu",
        action="store_true",
        help="only paper-2x2 on the cuda backend against the cpu backend",
    )
    ap.add_argument("--gpu-seeds", type=int, default=4096, help="seeds of the --gpu device run")
    ap.add_argument("--cpu-seeds", type=int, default=32, help="seeds of the --gpu cpu run")
    ap.add_argument(
        "--gpu-timeout",
        type=float,
        default=GPU_TARGET_S,
        help="seconds after which the --gpu device run is stopped (default: the target, 300)",
    )
    # the --gpu device run's backend: "cpu" tests the --gpu path on a machine without a GPU
    ap.add_argument(
        "--gpu-backend", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS
    )
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    if args.gpu:
        return gpu(args)
    report = {"machine": machine(), "build": ir.build_info(), "reproduce": []}
    part1(args, report)
    part2(args, report)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
