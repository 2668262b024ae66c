"""Command line: `implicitreg info | run` (also `python -m implicitreg`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

THRESHOLDS = (1e-1, 1e-2, 1e-3, 1e-4)


def _info(args) -> int:
    from . import backends, build_info

    info = build_info()
    if args.json:
        print(json.dumps({"build": info, "backends": backends()}, indent=2))
        return 0
    for k, v in info.items():
        print(f"{k:22s} {v}")
    print("backends:")
    for name, b in backends().items():
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        print(f"  {name:8s} {state}")
    return 0


def _summary(values: np.ndarray) -> str:
    """'median [min, max] (k/B)' of the finite entries."""
    v = np.abs(values[np.isfinite(values)])
    if v.size == 0:
        return f"{'not reached':>26s}"
    return f"{np.median(v):8.3g} [{v.min():7.3g}, {v.max():7.3g}] {v.size:3d}/{values.size:<3d}"


def _run(args) -> int:
    from . import DeepFactorization, every, problems

    configs = [(lr, s) for lr in args.lrs for s in args.scales]
    B = args.seeds * len(configs)
    p = problems.paper_2x2(batch=B)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    print(f"canonical 2x2 completion (PAPER.md §2.1), init {args.init}, scale by {args.scale_by}, "
          f"det {args.det}, {args.seeds} seeds per config, tol {args.tol:g}, {args.dtype}, "
          f"backend {args.backend}")
    print("|w11| at the first logged step with loss below each threshold: "
          "median [min, max] (problems that got there)")
    header = f"{'depth':>5s} {'lr':>8s} {'scale':>8s} " + " ".join(
        f"{f'loss < {t:g}':>26s}" for t in THRESHOLDS)
    print(header)
    for depth in args.depths:
        parts, lrs = [], []
        for lr, scale in configs:  # the same seeds for every config: paired comparisons
            f = DeepFactorization.init(problems.paper_2x2(args.seeds), depth=depth,
                                       init=args.init, scale=scale, scale_by=args.scale_by,
                                       det=args.det, seed=args.seed, dtype=args.dtype,
                                       backend=args.backend)
            parts.append(f.factors)
            lrs.append(np.full(args.seeds, lr))
        factors = [np.concatenate([pt[j] for pt in parts]) for j in range(depth)]
        model = DeepFactorization(p, factors, backend=args.backend)
        t0 = time.perf_counter()
        traj = model.fit(np.concatenate(lrs), args.max_steps, tol=args.tol,
                         log=every(args.log_every), metrics=("loss", "entry:0,0", "det"),
                         progress=not args.quiet)
        elapsed = time.perf_counter() - t0
        firsts = [traj.first_below("loss", t) for t in THRESHOLDS]
        for c, (lr, scale) in enumerate(configs):
            sl = slice(c * args.seeds, (c + 1) * args.seeds)
            cells = " ".join(_summary(fb["entry:0,0"][sl]) for fb in firsts)
            print(f"{depth:5d} {lr:8.2g} {scale:8.2g} {cells}")
        conv = int((traj.status == "converged").sum())
        div = int((traj.status == "diverged").sum())
        print(f"      depth {depth}: {conv}/{B} converged, {div} diverged, "
              f"{traj.steps[-1]} steps, {elapsed:.1f} s")
        if args.out:
            traj.meta.update(depth=depth, configs=configs, seeds=args.seeds, init=args.init,
                             scale_by=args.scale_by, det=args.det, seed=args.seed)
            traj.save(os.path.join(args.out, f"depth{depth}.npz"))
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="implicitreg", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="build facts and available backends")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(fn=_info)

    run = sub.add_parser("run", help="train the canonical 2x2 problem for a batch of seeds",
                         description="Train the canonical 2x2 completion problem (PAPER.md §2.1) "
                         "at every (depth, lr, scale) for a batch of seeds in one batched call "
                         "per depth, and print |w11| at loss 1e-1 ... 1e-4.")
    run.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4])
    run.add_argument("--lrs", type=float, nargs="+", default=[3e-3])
    run.add_argument("--scales", type=float, nargs="+", default=[1e-6],
                     help="init scale (see --scale-by)")
    run.add_argument("--scale-by", choices=["factor", "product"], default="product",
                     help="scale is the per-factor std or the end-to-end std (the paper's 'init')")
    run.add_argument("--init", choices=["normal", "identity", "balanced"], default="normal")
    run.add_argument("--det", choices=["positive", "negative", "none"], default="positive")
    run.add_argument("--seeds", type=int, default=16, help="problems per config")
    run.add_argument("--seed", type=int, default=0, help="base seed")
    run.add_argument("--max-steps", type=int, default=10_000_000)
    run.add_argument("--tol", type=float, default=1e-4, help="freeze a problem below this loss")
    run.add_argument("--log-every", type=int, default=1000)
    run.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    run.add_argument("--backend", choices=["cpu", "numpy", "cuda"], default="cpu")
    run.add_argument("--out", help="directory for the trajectories (depth<N>.npz)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(fn=_run)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "det", None) == "none":
        args.det = None
    try:
        return args.fn(args)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"implicitreg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
