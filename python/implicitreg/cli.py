"""Command line: `implicitreg info | run | list | reproduce NAME | plot DIR | bench` (also
`python -m implicitreg`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .sweep import threshold_label

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
    from .sweep import sweep

    base = {
        "problem": "paper_2x2",
        "init": args.init,
        "scale_by": args.scale_by,
        "init_det": args.det,
        "init_seed": args.seed,
        "max_steps": args.max_steps,
        "tol": args.tol,
        "log": f"every:{args.log_every}",
        "metrics": ("loss", "entry:0,0", "det"),
        "thresholds": THRESHOLDS,
        "dtype": args.dtype,
    }
    grid = {"depth": args.depths, "lr": args.lrs, "scale": args.scales}
    print(
        f"canonical 2x2 completion, init {args.init}, scale by {args.scale_by}, "
        f"det {args.det}, {args.seeds} seeds per config, tol {args.tol:g}, {args.dtype}, "
        f"backend {args.backend}"
    )
    res = sweep(
        base,
        grid,
        seeds=args.seeds,
        backend=args.backend,
        out=args.out,
        progress=not args.quiet,
        name="run",
        executor=args.executor,
        address=args.address,
    )
    print(
        "|w11| at the first step with loss below each threshold: "
        "median [min, max] (problems that got there)"
    )
    print(
        f"{'depth':>5s} {'lr':>8s} {'scale':>8s} "
        + " ".join(f"{f'loss < {t:g}':>26s}" for t in THRESHOLDS)
    )
    c = res.columns
    for depth in args.depths:
        for lr in args.lrs:
            for scale in args.scales:
                idx = res.rows(depth=depth, lr=lr, scale=scale)
                cells = " ".join(
                    _summary(c[f"entry:0,0@{threshold_label(t)}"][idx]) for t in THRESHOLDS
                )
                print(f"{depth:5d} {lr:8.2g} {scale:8.2g} {cells}")
    for tm in res.meta["timings"]:
        idx = np.nonzero(c["batch"] == tm["batch"])[0]
        conv = int((c["status"][idx] == "converged").sum())
        div = int((c["status"][idx] == "diverged").sum())
        print(
            f"      depth {int(c['depth'][idx[0]])}: {conv}/{idx.size} converged, {div} "
            f"diverged, {tm['seconds']:.1f} s"
        )
    return 0


def _list(args) -> int:
    from .experiments import EXPERIMENTS

    width = max(len(name) for name in EXPERIMENTS)
    for exp in EXPERIMENTS.values():
        base, grid, seeds = exp.spec()
        print(f"{exp.name:{width}s} {exp.title}")
        print(
            f"{'':{width}s} default {seeds} seeds per config; --quick: "
            f"{exp.quick.get('seeds', seeds)} seeds"
        )
    return 0


def _has_matplotlib() -> bool:
    from .experiments.figures import _plt

    try:
        _plt()
    except ImportError:
        return False
    return True


def _reproduce(args) -> int:
    from .experiments import get, report_text, reproduce

    exp = get(args.name)  # an unknown name fails here, listing the valid ones
    out = args.out or os.path.join("results", exp.name)
    plot = not args.no_plot
    if plot and not _has_matplotlib():  # said before the run, not after it
        print(
            "implicitreg: note: matplotlib is not installed (extra 'plot'): the results and "
            f"the report are written, the figures are not; `implicitreg plot {out}` draws "
            "them once it is",
            file=sys.stderr,
        )
        plot = False
    try:
        res, rows = reproduce(
            exp.name,
            seeds=args.seeds,
            backend=args.backend,
            dtype=args.dtype,
            out=out,
            resume=args.resume,
            quick=args.quick,
            progress=not args.quiet,
            plot=plot,
            checkpoint_every=args.checkpoint_every,
            executor=args.executor,
            address=args.address,
        )
    except KeyboardInterrupt:
        print(
            f"\nimplicitreg: interrupted; finished batches are kept in {out}: rerun with "
            "--resume to continue",
            file=sys.stderr,
        )
        return 130
    print(report_text(exp, res, rows))
    print(
        f"results and report in {out}"
        + (", figures in " + os.path.join(out, "figures") if plot else " (no figures)")
    )
    return 0


def _plot(args) -> int:
    from .experiments import replot

    if not os.path.isdir(args.dir):
        raise ValueError(f"dir: {args.dir} is not a directory")
    for path in replot(args.dir):
        print(path)
    return 0


def _bench(args) -> int:
    from .bench import run

    return run(args)


def _positive(kind):
    """An argparse type: a number of `kind` > 0, else an error naming what was expected."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or (kind is float and not np.isfinite(value)):
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'} > 0, got {text!r}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _executor_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="run the batches here one after another (local) or as Ray tasks (ray; extra 'ray')",
    )
    ap.add_argument(
        "--address",
        help="with --executor ray: the cluster to run on, e.g. "
        "HEAD:6379 or ray://HEAD:10001 (default: $RAY_ADDRESS, else the cluster "
        "`ray start` runs on this machine, else a new local one)",
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="implicitreg", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="build facts and available backends")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(fn=_info)

    run = sub.add_parser(
        "run",
        help="train the canonical 2x2 problem for a batch of seeds",
        description="Train the canonical 2x2 completion problem "
        "at every (depth, lr, scale) for a batch of seeds in one batched call "
        "per depth, and print |w11| at loss 1e-1 ... 1e-4.",
    )
    run.add_argument(
        "--depths", type=int, nargs="+", default=[2, 3, 4], help="depths to train (default: 2 3 4)"
    )
    run.add_argument(
        "--lrs", type=float, nargs="+", default=[3e-3], help="learning rates (default: 3e-3)"
    )
    run.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[1e-6],
        help="init scales, see --scale-by (default: 1e-6)",
    )
    run.add_argument(
        "--scale-by",
        choices=["factor", "product"],
        default="product",
        help="scale is the per-factor std or the end-to-end std, the paper's "
        "'init' (default: product)",
    )
    run.add_argument(
        "--init",
        choices=["normal", "identity", "balanced"],
        default="normal",
        help="(default: normal)",
    )
    run.add_argument(
        "--det",
        choices=["positive", "negative", "none"],
        default="positive",
        help="sign of det(W(0)) (default: positive)",
    )
    run.add_argument("--seeds", type=int, default=16, help="problems per config (default: 16)")
    run.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    run.add_argument("--max-steps", type=int, default=10_000_000, help="(default: 10000000)")
    run.add_argument(
        "--tol", type=float, default=1e-4, help="freeze a problem below this loss (default: 1e-4)"
    )
    run.add_argument("--log-every", type=int, default=1000, help="(default: 1000)")
    run.add_argument(
        "--dtype", choices=["float64", "float32"], default="float64", help="(default: float64)"
    )
    run.add_argument(
        "--backend", choices=["cpu", "numpy", "cuda"], default="cpu", help="(default: cpu)"
    )
    run.add_argument("--out", help="results directory (see implicitreg.sweep; default: none)")
    _executor_arguments(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(fn=_run)

    lst = sub.add_parser("list", help="the named experiments")
    lst.set_defaults(fn=_list)

    rep = sub.add_parser(
        "reproduce",
        help="run a named experiment: results, report, figures",
        description="Run a named experiment (see `implicitreg list`), write "
        "its results, report and figures to --out, and print our median and "
        "IQR next to the paper's value for every legend entry.",
    )
    rep.add_argument("name", help="experiment name (implicitreg list)")
    rep.add_argument("--seeds", type=int, help="seeds per config (default: the experiment's)")
    rep.add_argument("--backend", choices=["cpu", "numpy", "cuda"], default="cpu")
    rep.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default=None,
        help="default: the experiment's (float64)",
    )
    rep.add_argument("--out", help="results directory (default: results/NAME)")
    rep.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    rep.add_argument("--quick", action="store_true", help="the quick variant (fewer seeds)")
    rep.add_argument("--no-plot", action="store_true", help="write no figures")
    rep.add_argument(
        "--checkpoint-every",
        type=float,
        default=120.0,
        help="seconds between checkpoints of a running batch (default 120)",
    )
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    _executor_arguments(rep)
    rep.set_defaults(fn=_reproduce)

    plot = sub.add_parser("plot", help="redraw the figures of a results directory")
    plot.add_argument("dir")
    plot.set_defaults(fn=_plot)

    bench = sub.add_parser(
        "bench",
        help="time every kernel against numpy, PyTorch and JAX",
        description="Time every compiled kernel against the numpy backend and, when installed, "
        "PyTorch and JAX implementations of the same step (peers.py of the source tree's "
        "benchmarks directory, see --peers): rate, % of the FMA peak, ratios, and the targets "
        "met or MISSED. Exit code 0 even when a target is missed; 1 when a case failed. The "
        "cases, their flop counts and how to read the table: the documentation's Performance "
        "page.",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="shorter samples and fewer repeats (about a minute on 2 cores)",
    )
    bench.add_argument(
        "--repeats",
        type=_positive(int),
        metavar="N",
        help="samples per median (default 5; 3 with --quick)",
    )
    bench.add_argument(
        "--sample-s",
        type=_positive(float),
        metavar="S",
        help="seconds per sample (default 0.3; 0.1 with --quick)",
    )
    bench.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="only these cases: case ids or kernel names (dmf_step, svdvals, cp_step, ...)",
    )
    bench.add_argument(
        "--peers",
        metavar="DIR",
        help="the directory of peers.py (default: benchmarks/ here or beside "
        "the package's source tree)",
    )
    bench.add_argument(
        "--peak-gflops",
        type=_positive(float),
        metavar="G",
        help="float64 FMA peak of this machine in Gflop/s, in place of the one "
        "measured by an FMA probe (the formula cores x SIMD lanes x 2 FMA units x 2 x clock "
        "is printed beside it); float32 is twice it",
    )
    bench.add_argument(
        "--contention",
        action="store_true",
        help="instead of the table: two processes at once on the cores, each running DMF "
        "steps and many small svdvals calls alone and then beside the other; the share of "
        "its rate alone each keeps (target >= 40%%)",
    )
    bench.add_argument("--json", metavar="F", help="write the results to this JSON file")
    bench.set_defaults(fn=_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "det", None) == "none":
        args.det = None
    try:
        code = args.fn(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return code
    except BrokenPipeError:  # `implicitreg list | head`: the reader has gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, RuntimeError, ImportError, OSError) as exc:
        print(f"implicitreg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
