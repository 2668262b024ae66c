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
median seconds. % peak = flops per unit * rate / the FMA peak of the dtype (`fma_peak`).

numpy is the only dependency: torch and jax are imported by peers.py, and only when a case
needs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import build_info
from .metrics import svdvals, tensor_rank
from .models import CPFactorization, DeepFactorization
from .problems import (
    observe_first,
    paper_2x2,
    random_cp_tensor,
    random_low_rank_completion,
    tensor_completion,
)

PEERS = ("torch", "jax")
SIDES = ("cpu", "numpy") + PEERS
FMA_UNITS = 2  # FMA pipes per core: 2 on every AVX2 / AVX-512 server core we run on
MAX_UNITS = 1_000_000  # steps (or calls) per sample, whatever the sizing says
# before each sample: the worker threads of the side timed before (OpenMP, torch's and XLA's
# pools) spin a while after their work, and would take a core from the next side
PAUSE_S = 0.01
ALL_METRICS = ("loss", "entry:0,0", "det", "svals", "fro", "nuc", "spectral", "schatten:0.5",
               "erank", "rank", "dist_rank:1", "balancedness")
# the change of the factors after the check steps, relative, max norm (float32 rounding of a
# sum over 16 terms and over the observed entries stays well inside these)
STEP_RTOL = {"float64": 1e-8, "float32": 1e-3}
CHECK_STEPS = 20


def dmf_flops(d: int, depth: int) -> int:
    """One GD step of d x d factors: forward (N-1) 2d^3, backward 2 (N-1) 2d^3, updates 2N d^2,
    residual and loss about 3d^2."""
    return 6 * (depth - 1) * d**3 + (2 * depth + 3) * d**2


def cp_flops(order: int, R: int, n_obs: int, dims, optimizer: str) -> int:
    """One CP step: per observed entry and component, the value ((N-1) products and a sum)
    and every factor's gradient row (suffix products, prefix * suffix, an FMA per factor):
    6 (N-1); then the update, 2 flops per factor entry (gd) or 4 (group_rmsprop: ||g||^2)."""
    per_entry = 6 * (order - 1) * R
    return n_obs * per_entry + (4 if optimizer == "group_rmsprop" else 2) * R * sum(dims)


# ----------------------------------------------------------------------------- the peak


def _clock_hz() -> tuple[float | None, str]:
    """The core clock and where it was read: the cpufreq maximum, else /proc/cpuinfo."""
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return float(khz) * 1e3, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text()
               .splitlines() if line.startswith("cpu MHz")]
        if mhz:
            return max(mhz) * 1e6, "/proc/cpuinfo cpu MHz"
    except (OSError, ValueError, IndexError):
        pass
    return None, "unknown"


def fma_peak(info: dict, peak_gflops: float | None = None) -> dict:
    """FMA peak in flop/s per dtype: threads x SIMD lanes x FMA units x 2 flops x clock
    (float32 has twice the float64 lanes), or the user's float64 figure (float32: twice)."""
    if peak_gflops is not None:
        f64 = float(peak_gflops) * 1e9
        return {"float64": f64, "float32": 2 * f64, "source": "--peak-gflops",
                "formula": f"float64 peak {peak_gflops:g} Gflop/s (--peak-gflops); "
                           "float32 twice that"}
    cores, lanes = int(info["threads"]), int(info["simd_lanes_f64"])
    hz, where = _clock_hz()
    if hz is None:
        return {"float64": None, "float32": None, "source": "unknown",
                "formula": "peak unknown (no clock found): pass --peak-gflops"}
    f64 = cores * lanes * FMA_UNITS * 2 * hz
    return {"float64": f64, "float32": 2 * f64, "source": where, "cores": cores,
            "simd_lanes_f64": lanes, "fma_units": FMA_UNITS, "clock_hz": hz,
            "formula": f"peak = cores x SIMD f64 lanes x FMA units x 2 flops x clock = {cores} x "
                       f"{lanes} x {FMA_UNITS} x 2 x {hz / 1e9:.2f} GHz ({where}) = "
                       f"{f64 / 1e9:.0f} Gflop/s float64, {2 * f64 / 1e9:.0f} float32 "
                       f"({2 * lanes} lanes)"}


# ----------------------------------------------------------------------------- peers


class Peers:
    """benchmarks/peers.py, found and loaded once; torch and jax imported on first use. Where
    one cannot run, `reason(name)` says why, for the table."""

    def __init__(self, directory: str | None):
        self.module, self.path = None, None
        if directory is not None:
            candidates = [Path(directory)]
        else:
            here = Path(__file__).resolve().parents[2]  # the source tree, for a checkout
            candidates = [Path.cwd() / "benchmarks", here / "benchmarks"]
        for d in candidates:
            if (d / "peers.py").is_file():
                self.path = d / "peers.py"
                break
        if self.path is None:
            where = f" in {directory}" if directory is not None else ""
            self.missing = f"peers: not found{where}, pass --peers DIR"
        else:
            self.missing = None
            spec = importlib.util.spec_from_file_location("_implicitreg_bench_peers", self.path)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # a broken peers.py costs its columns, not the run
                self.missing = f"peers: {self.path} failed to load ({_first_line(exc)})"
            else:
                self.module = module
        self._libs: dict[str, tuple] = {}

    def lib(self, name: str):
        """The torch or jax module, or None (see reason)."""
        if self.module is None:
            return None
        if name not in self._libs:
            try:
                self._libs[name] = getattr(self.module, f"load_{name}")()
            except Exception as exc:
                self._libs[name] = (None, f"failed to import ({_first_line(exc)})")
        return self._libs[name][0]

    def reason(self, name: str) -> str:
        if self.module is None:
            return self.missing
        self.lib(name)
        return f"{name}: {self._libs[name][1]}"

    def versions(self) -> dict:
        return {k: getattr(self._libs[k][0], "__version__", None) for k in self._libs
                if self._libs[k][0] is not None}


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:120]


# ----------------------------------------------------------------------------- sides


@dataclass
class Side:
    """One implementation of a case: run(n) does n steps (or calls) and returns when done;
    reset() restores the start, untimed; run takes whole multiples of granule. check: its
    difference from the cpu backend's result (relative); match: within the case's tolerance."""

    run: Callable[[int], object]
    reset: Callable[[], None] = lambda: None
    granule: int = 1
    check: float = 0.0
    match: bool = True
    variant: str | None = None


class _IrDMF:
    """A DeepFactorization with the peers' protocol (reset, run(steps, lr), factors)."""

    granule = 1

    def __init__(self, problem, start, dtype, backend):
        self.problem, self.start, self.dtype, self.backend = problem, start, dtype, backend
        self.reset()

    def reset(self):
        self.f = DeepFactorization(self.problem, self.start, backend=self.backend,
                                   dtype=self.dtype)

    def run(self, steps, lr):
        self.f.step(lr, steps)

    def factors(self):
        return [W.copy() for W in self.f.factors]


class _IrCP:
    granule = 1

    def __init__(self, problem, start, dtype, backend, optimizer, beta, eps):
        self.problem, self.start, self.dtype, self.backend = problem, start, dtype, backend
        self.opt = {"optimizer": optimizer, "beta": beta, "eps": eps}
        self.reset()

    def reset(self):
        self.f = CPFactorization(self.problem, self.start, backend=self.backend,
                                 dtype=self.dtype)

    def run(self, steps, lr):
        self.f.step(lr, steps, **self.opt)

    def factors(self):
        return [U.copy() for U in self.f.factors]


def rel_change_diff(got, want, start) -> float:
    """max_j max|(got_j - start_j) - (want_j - start_j)| / max|want_j - start_j|: how well a
    side's change of the factors matches the cpu backend's (the factors alone would hide a
    wrong gradient behind the start)."""
    worst = 0.0
    for a, b, s in zip(got, want, start, strict=True):
        da = np.asarray(a, np.float64) - s
        db = np.asarray(b, np.float64) - s
        scale = np.abs(db).max(initial=0.0)
        worst = max(worst, np.abs(da - db).max(initial=0.0) / scale if scale > 0 else np.inf)
    return float(worst)


def rel_diff(got, want) -> float:
    """max|got - want| / max|want| over arrays (NaN where both are NaN counts as equal)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    both_nan = np.isnan(got) & np.isnan(want)
    d = np.where(both_nan, 0.0, np.abs(got - want))
    scale = np.abs(np.where(np.isnan(want), 0.0, want)).max(initial=0.0)
    worst = d.max(initial=0.0)
    return float(worst / scale) if scale > 0 else (0.0 if worst == 0 else float("inf"))


def _step_sides(impls: dict, start, lr, check_lr, rtol) -> dict:
    """Sides of a step kernel from implementations with the peers' protocol (or a reason
    string): each checked against the cpu backend over CHECK_STEPS steps (rounded up to its
    granule) at check_lr, then timed at lr."""
    start64 = [np.asarray(W, np.float64) for W in start]
    ref_cache: dict[int, list] = {}

    def reference(steps):
        if steps not in ref_cache:
            cpu = impls["cpu"]
            cpu.reset()
            cpu.run(steps, check_lr)
            ref_cache[steps] = cpu.factors()
        return ref_cache[steps]

    sides = {}
    for name, impl in impls.items():
        if isinstance(impl, str):
            sides[name] = impl
            continue
        try:
            steps = impl.granule * -(-CHECK_STEPS // impl.granule)
            impl.reset()
            impl.run(steps, check_lr)
            diff = 0.0 if name == "cpu" else rel_change_diff(impl.factors(), reference(steps),
                                                             start64)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            if name in ("cpu", "numpy"):
                raise
            sides[name] = f"error: {_first_line(exc)}"
            continue
        sides[name] = Side(run=lambda n, impl=impl: impl.run(n, lr), reset=impl.reset,
                           granule=impl.granule, check=diff, match=bool(diff <= rtol),
                           variant=getattr(impl, "name", name))
    return sides


def _call_sides(fns: dict, compare, tol) -> dict:
    """Sides of a kernel called once per unit: fns name -> fn() (or a reason string), each
    result compared with the cpu backend's by compare(got, want) <= tol."""
    want = fns["cpu"]()
    sides = {}
    for name, fn in fns.items():
        if isinstance(fn, str):
            sides[name] = fn
            continue
        try:
            diff = 0.0 if name == "cpu" else compare(fn(), want)
        except Exception as exc:
            if name in ("cpu", "numpy"):
                raise
            sides[name] = f"error: {_first_line(exc)}"
            continue
        sides[name] = Side(run=lambda n, fn=fn: _repeat(fn, n), check=diff,
                           match=bool(diff <= tol), variant=name)
    return sides


def _repeat(fn, n: int) -> None:
    """n calls of fn, each result dropped at once: keeping them would time fresh pages of
    memory (page faults) instead of the kernel."""
    for _ in range(n):
        fn()


def _peer(peers: Peers, name: str, make):
    """make(module) for an installed peer, else the reason it is not there."""
    lib = peers.lib(name)
    if lib is None:
        return peers.reason(name)
    try:
        return make(lib)
    except Exception as exc:
        return f"error: {_first_line(exc)}"


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One row: `build(peers)` gives its sides by name (or, for a side that cannot run, the
    reason); flops per unit (problem-step, matrix, tensor) where the kernel has a fixed count;
    targets: (kind, threshold) with kind "rate", "peak" (percent) or a peer (ratio)."""

    id: str
    kernel: str
    title: str
    unit: str
    batch: int
    dtype: str
    flops: int | None
    build: Callable[[Peers], dict]
    targets: tuple = ()
    peers: tuple = PEERS


def _dmf_case(name, d, B, dtype, std, lr, check_lr, targets=()):
    depth = 3

    def build(peers):
        if d == 2:
            problem = paper_2x2(batch=B)
        else:
            problem = random_low_rank_completion(d, d, 3, d * d // 2, batch=B, seed=0)
        rng = np.random.default_rng(0)
        start = [(std * rng.standard_normal((B, d, d))).astype(dtype) for _ in range(depth)]
        T, M = problem.targets, problem.masks
        m = peers.module
        impls = {"cpu": _IrDMF(problem, start, dtype, "cpu"),
                 "numpy": _IrDMF(problem, start, dtype, "numpy")}
        for mode in ("closed", "autograd"):
            impls[f"torch-{mode}"] = _peer(peers, "torch", lambda t, mode=mode: m.TorchDMF(
                T, M, start, dtype, mode=mode, device="cpu", torch=t))
        impls["jax"] = _peer(peers, "jax", lambda j: m.JaxDMF(T, M, start, dtype, device="cpu",
                                                              jax=j))
        return _step_sides(impls, start, lr, check_lr, STEP_RTOL[dtype])

    title = f"{'paper 2x2' if d == 2 else f'{d}x{d} rank-3 completion'}, depth {depth}, B={B}"
    return Case(name, "dmf_step", title, "problem-steps/s", B, dtype, dmf_flops(d, depth),
                build, targets)


def _svd_case(name, n, B, dtype, targets=()):
    def build(peers):
        X = np.random.default_rng(0).standard_normal((B, n, n)).astype(dtype)
        m = peers.module
        fns = {"cpu": lambda: svdvals(X), "numpy": lambda: svdvals(X, backend="numpy"),
               "torch": _peer(peers, "torch", lambda t: m.torch_svdvals(X, "cpu", torch=t)),
               "jax": _peer(peers, "jax", lambda j: m.jax_svdvals(X, "cpu", jax=j))}
        tol = 1e-10 if dtype == "float64" else 100 * n * float(np.finfo(np.float32).eps)

        def compare(got, want):  # relative to sigma_1, matrix by matrix
            got = np.asarray(got, np.float64)
            return float(np.max(np.abs(got - want).max(axis=1) / want[:, 0]))

        return _call_sides(fns, compare, tol)

    # the 2x2 closed form: 4 + 4 sums and squares, 2 sqrt, 2, the FMA determinant 6, a
    # division, the power-of-two scaling test about 8 (sqrt and division counted as 1 flop)
    return Case(name, "svdvals", f"{n}x{n} random normal, B={B}", "matrices/s", B, dtype,
                30 if n == 2 else None, build, targets)


def _cp_problem(order, dim, B, n):
    dims = (dim,) * order
    targets, orders = random_cp_tensor(dims, 1, batch=B, seed=0)
    return tensor_completion(targets, observe_first(orders, n, dims)), dims


def _cp_case(name, order, dim, R, B, n, dtype, optimizer, targets=()):
    lr, check_lr, beta, eps, scale = 1e-3, 1e-2, 0.99, 1e-6, 1e-2

    def build(peers):
        problem, dims = _cp_problem(order, dim, B, n)
        start = [U.copy() for U in CPFactorization.init(problem, rank=R, scale=scale, seed=0,
                                                        dtype=dtype).factors]
        T, M = problem.targets, problem.masks
        m = peers.module
        impls = {b: _IrCP(problem, start, dtype, b, optimizer, beta, eps)
                 for b in ("cpu", "numpy")}
        impls["torch"] = _peer(peers, "torch", lambda t: m.TorchCP(
            T, M, start, optimizer, beta, eps, dtype, device="cpu", torch=t))
        impls["jax"] = _peer(peers, "jax", lambda j: m.JaxCP(
            T, M, start, optimizer, beta, eps, dtype, device="cpu", jax=j))
        return _step_sides(impls, start, lr, check_lr, STEP_RTOL[dtype])

    return Case(name, "cp_step", f"order {order} dim {dim} R={R} B={B} n={n} {optimizer}",
                "problem-steps/s", B, dtype, cp_flops(order, R, n, (dim,) * order, optimizer),
                build, targets)


def _dmf_numpy_only(name, kernel, title, B, d, flops, call):
    """A case of a DMF kernel without peers: call(model) on cpu and numpy models."""
    def build(_peers):
        problem = (paper_2x2(batch=B) if d == 2 else
                   random_low_rank_completion(d, d, 3, d * d // 2, batch=B, seed=0))
        rng = np.random.default_rng(0)
        start = [0.3 * rng.standard_normal((B, d, d)) for _ in range(3)]
        models = {b: DeepFactorization(problem, start, backend=b) for b in ("cpu", "numpy")}
        return _call_sides({b: lambda f=f: call(f) for b, f in models.items()}, _dict_diff,
                           1e-8)

    return Case(name, kernel, title, "problems/s", B, "float64", flops, build, peers=())


def _dict_diff(got, want) -> float:
    if isinstance(want, dict):
        return max(rel_diff(got[k], want[k]) for k in want)
    return rel_diff(got, want)


def _cp_tensor_case(name, order, dim, R, B):
    def build(_peers):
        problem, _ = _cp_problem(order, dim, B, 200)
        start = CPFactorization.init(problem, rank=R, scale=0.3, seed=0).factors
        models = {b: CPFactorization(problem, start, backend=b) for b in ("cpu", "numpy")}
        return _call_sides({b: f.tensor for b, f in models.items()}, rel_diff, 1e-12)

    # every entry: R products of N factors ((N-1) R multiplies) and their sum (R adds)
    return Case(name, "cp_tensor", f"order {order} dim {dim} R={R} B={B}", "tensors/s", B,
                "float64", order * R * dim**order, build, peers=())


def _tensor_rank_case(name, B):
    def build(_peers):
        dims = (8, 8, 8)
        T = np.concatenate([random_cp_tensor(dims, 1 + b % 2, batch=1, seed=b)[0]
                            for b in range(B)])
        fns = {"cpu": lambda: tensor_rank(T), "numpy": lambda: tensor_rank(T, backend="numpy")}
        return _call_sides(fns, lambda got, want: float(np.mean(got != want)), 0.0)

    return Case(name, "tensor_rank", f"order 3 8x8x8 CP rank 1-2, B={B}", "tensors/s", B,
                "float64", None, build, peers=())


def cases() -> list[Case]:
    """Every case, in table order; the issue's targets on theirs."""
    return [
        _dmf_case("dmf_step-2x2-f64", 2, 4096, "float64", 0.3, 1e-3, 1e-2,
                  (("rate", 3e8), ("jax", 10.0))),
        _dmf_case("dmf_step-2x2-f32", 2, 4096, "float32", 0.3, 1e-3, 1e-2, (("rate", 6e8),)),
        _dmf_case("dmf_step-16x16-f64", 16, 1024, "float64", 0.125, 1e-4, 1e-3,
                  (("torch", 2.0), ("peak", 40.0))),
        _dmf_case("dmf_step-16x16-f32", 16, 1024, "float32", 0.125, 1e-4, 1e-3),
        _dmf_numpy_only("dmf_loss-16x16", "dmf_loss", "16x16 rank-3 completion, depth 3, "
                        "B=1024", 1024, 16, 2 * 2 * 16**3 + 3 * 16**2, lambda f: f.loss()),
        _dmf_numpy_only("dmf_measure-2x2", "dmf_measure", "paper 2x2, depth 3, B=4096, "
                        f"all {len(ALL_METRICS)} metrics", 4096, 2, None,
                        lambda f: f.measure(ALL_METRICS)),
        _svd_case("svdvals-2x2-f64", 2, 65536, "float64", (("rate", 1e8),)),
        _svd_case("svdvals-2x2-f32", 2, 65536, "float32"),
        _svd_case("svdvals-8x8-f64", 8, 8192, "float64"),
        _svd_case("svdvals-32x32-f64", 32, 1024, "float64"),
        _cp_case("cp_step-o3-rmsprop-f64", 3, 8, 64, 256, 200, "float64", "group_rmsprop",
                 (("jax", 5.0),)),
        _cp_case("cp_step-o3-gd-f64", 3, 8, 64, 256, 200, "float64", "gd"),
        _cp_case("cp_step-o3-rmsprop-f32", 3, 8, 64, 256, 200, "float32", "group_rmsprop"),
        _cp_tensor_case("cp_tensor-o3", 3, 8, 64, 256),
        _tensor_rank_case("tensor_rank-8x8x8", 8),
    ]


def select(names, all_cases: list[Case]) -> list[Case]:
    """The cases named (a case id or a kernel name each), in table order."""
    if not names:
        return all_cases
    known = {c.id for c in all_cases} | {c.kernel for c in all_cases}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"--only: expected case ids or kernel names from "
                         f"{sorted(known)}, got {bad}")
    return [c for c in all_cases if c.id in names or c.kernel in names]


# ----------------------------------------------------------------------------- timing


def _clock(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _size(side: Side, sample_s: float) -> tuple[int, float]:
    """(units per sample of about sample_s seconds, warm-up seconds): a warm-up call (thread
    start, page faults, compilation), then calls grown until one takes a quarter of the
    sample, then scaled to the sample."""
    g = side.granule

    def once(n):
        side.reset()
        return _clock(lambda: side.run(n))

    warm = once(g)
    n, t = g, once(g)
    while t < sample_s / 4 and n < MAX_UNITS:
        grow = min(100.0, max(2.0, sample_s / 2 / max(t, 1e-9)))
        n = min(MAX_UNITS, g * -(-int(n * grow) // g))
        t = once(n)
    n = min(MAX_UNITS, g * max(1, round(n * sample_s / max(t, 1e-9) / g)))
    return n, warm


def time_sides(sides: dict, batch: int, repeats: int, sample_s: float) -> dict:
    """{name: timing} of every Side: sized one by one, then `repeats` rounds in which they
    take turns, each sample from the start."""
    sized = {name: _size(s, sample_s) for name, s in sides.items()}
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, s in sides.items():
            s.reset()
            time.sleep(PAUSE_S)
            times[name].append(_clock(lambda s=s, n=sized[name][0]: s.run(n)))
    out = {}
    for name, (n, warm) in sized.items():
        med = statistics.median(times[name])
        out[name] = {"units": n, "median_s": med, "times_s": times[name], "warmup_s": warm,
                     "rate": batch * n / med}
    return out


# ----------------------------------------------------------------------------- one case


def run_case(case: Case, peers: Peers, repeats: int, sample_s: float, peak: dict) -> dict:
    """The case's row: every side's rate (or why it has none), ratios, % peak, targets."""
    built = case.build(peers)
    ready = {k: v for k, v in built.items() if isinstance(v, Side)}
    timed = time_sides(ready, case.batch, repeats, sample_s)
    sides = {}
    for name, v in built.items():
        if isinstance(v, Side):
            sides[name] = {**timed[name], "check": v.check, "match": v.match}
        else:
            sides[name] = {"skipped": v}
    row = {"id": case.id, "kernel": case.kernel, "title": case.title, "unit": case.unit,
           "batch": case.batch, "dtype": case.dtype, "flops_per_unit": case.flops,
           "sides": sides}
    # a peer's column: its fastest variant that matched (else its fastest, flagged)
    columns = {"cpu": sides["cpu"], "numpy": sides["numpy"]}
    for p in case.peers:
        variants = {k: s for k, s in sides.items() if k == p or k.startswith(p + "-")}
        timed_v = {k: s for k, s in variants.items() if "rate" in s}
        good = {k: s for k, s in timed_v.items() if s["match"]} or timed_v
        if good:
            best = max(good, key=lambda k: good[k]["rate"])
            columns[p] = {**good[best], "variant": best}
        else:
            columns[p] = {"skipped": next(iter(variants.values()))["skipped"]}
    row["columns"] = columns
    cpu_rate = sides["cpu"]["rate"]
    row["ratios"] = {k: cpu_rate / c["rate"] for k, c in columns.items()
                     if k != "cpu" and "rate" in c}
    pk = peak.get(case.dtype)
    row["pct_peak"] = (100.0 * case.flops * cpu_rate / pk) if case.flops and pk else None
    row["targets"] = [_judge(case, row, kind, thr) for kind, thr in case.targets]
    return row


def _judge(case: Case, row: dict, kind: str, threshold: float) -> dict:
    """met (True / False) or None with the reason there is nothing to judge."""
    why = None
    if kind == "rate":
        text = f">= {threshold:.0e} {case.unit}"
        value = row["sides"]["cpu"]["rate"]
    elif kind == "peak":
        text = f">= {threshold:.0f}% of the {case.dtype} FMA peak"
        value = row["pct_peak"]
        why = None if value is not None else "peak unknown: pass --peak-gflops"
    else:
        text = f">= {threshold:g}x {kind}"
        col = row["columns"][kind]
        value = row["ratios"].get(kind)
        if "skipped" in col:
            why = col["skipped"]
        elif not col["match"]:
            why, value = f"{kind} MISMATCH", None
    met = None if value is None else bool(value >= threshold)
    return {"case": case.id, "target": text, "kind": kind, "threshold": threshold,
            "value": value, "met": met, "why": why}


# ----------------------------------------------------------------------------- report


def _rate(col: dict) -> str:
    if "rate" not in col:
        return _short(col["skipped"])
    return f"{col['rate']:.2e}" + ("!" if not col["match"] else "")


def _short(reason: str) -> str:
    """A reason cut to fit a column ("torch: not installed" -> "not installed")."""
    if reason.startswith("peers: not found"):
        return "not found"
    return reason.split(": ", 1)[-1][:13]


def _status(t: dict) -> str:
    if t["met"] is None:
        return f"n/a ({t['why']})"
    return "met" if t["met"] else "MISSED"


def _value(t: dict) -> str:
    v = t["value"]
    if v is None:
        return "-"
    return {"rate": f"{v:.3g}", "peak": f"{v:.1f}%"}.get(t["kind"], f"{v:.1f}x")


def table(report: dict) -> str:
    rows = report["cases"]
    w_id = max([len(r["id"]) for r in rows] + [4])
    w_title = max([len(r["title"]) for r in rows] + [7])
    head = (f"{'case':{w_id}s}  {'problem':{w_title}s} {'dtype':7s} {'unit':16s}"
            f"{'cpu':>10s} {'%peak':>6s}")
    for k in ("numpy",) + PEERS:
        head += f" {k:>13s} {'cpu/' + k:>9s}"
    lines = [head + "  targets"]
    for r in rows:
        pct = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}"
        line = (f"{r['id']:{w_id}s}  {r['title']:{w_title}s} {r['dtype']:7s} {r['unit']:16s}"
                f"{_rate(r['columns']['cpu']):>10s} {pct:>6s}")
        for k in ("numpy",) + PEERS:
            col = r["columns"].get(k, {"skipped": "n/a"})
            ratio = r["ratios"].get(k)
            line += f" {_rate(col):>13s} {'-' if ratio is None else f'{ratio:.1f}x':>9s}"
        marks = [f"{t['target']}: {_status(t).split(' ')[0]}" for t in r["targets"]]
        lines.append(line + ("  " + "; ".join(marks) if marks else ""))
    return "\n".join(lines)


def notes(report: dict) -> list[str]:
    """What the table's short cells stand for: skipped sides, mismatches, variants."""
    out: dict[str, list[str]] = {}
    for r in report["cases"]:
        for name, s in r["sides"].items():
            if "skipped" in s:
                out.setdefault(f"{name}: {s['skipped']}", []).append(r["id"])
            elif not s["match"]:
                out.setdefault(f"{name}: MISMATCH with the cpu backend (marked !; nothing "
                               "judged against it)", []).append(r["id"])
    lines = []
    for text, ids in out.items():
        where = ("every case" if len(ids) == len(report["cases"]) else ", ".join(ids))
        lines.append(f"{text} [{where}]")
    return lines


def run(args) -> int:
    """`implicitreg bench` (args from the CLI's parser): print the table, write --json."""
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise ValueError(f"--json: expected a file in an existing directory, got {args.json}")
    quick = bool(args.quick)
    repeats = args.repeats or (3 if quick else 5)
    sample_s = args.sample_s or (0.1 if quick else 0.3)
    chosen = select(args.only, cases())
    info = build_info()
    peak = fma_peak(info, args.peak_gflops)
    peers = Peers(args.peers)
    print(f"implicitreg {info['version']} bench: {info['cpu_flags']}, {info['threads']} "
          f"threads; median of {repeats} samples of about {sample_s:g} s, after a warm-up")
    print(peak["formula"])
    print("peers: " + (str(peers.path) if peers.path else peers.missing), flush=True)
    report = {"benchmark": "implicitreg bench", "machine": _machine(), "build": info,
              "quick": quick, "repeats": repeats, "sample_s": sample_s, "peak": peak,
              "peers": str(peers.path) if peers.path else peers.missing, "cases": [],
              "errors": []}
    t_all = time.perf_counter()
    for case in chosen:
        t0 = time.perf_counter()
        try:
            row = run_case(case, peers, repeats, sample_s, peak)
        except Exception as exc:  # the cpu or numpy side failed: an error of this run
            report["errors"].append(f"{case.id}: {_first_line(exc)}")
            print(f"  {case.id}: ERROR {_first_line(exc)}", flush=True)
            continue
        report["cases"].append(row)
        print(f"  {case.id}: cpu {row['sides']['cpu']['rate']:.3g} {case.unit} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    report["versions"] = {"numpy": np.__version__, **peers.versions()}
    report["targets"] = [t for r in report["cases"] for t in r["targets"]]
    report["elapsed_s"] = time.perf_counter() - t_all
    if report["cases"]:
        print("\n" + table(report))
    print("\nrate: batch x steps (or calls) / median seconds; cpu/X: cpu rate / X rate; "
          "%peak: flops per unit (benchmarks/README.md) x rate / peak; torch: the faster of "
          "torch-closed and torch-autograd for dmf_step; ! = result differs from the cpu "
          "backend's")
    for line in notes(report):
        print(f"  note: {line}")
    if report["targets"]:
        print("\ntargets")
        for t in report["targets"]:
            print(f"  {_status(t):8s} {t['case']}: {t['target']} (got {_value(t)})")
    for e in report["errors"]:
        print(f"ERROR: {e}")
    print(f"total {report['elapsed_s']:.0f} s; versions: " + ", ".join(
        f"{k} {v}" for k, v in report["versions"].items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")
    return 1 if report["errors"] else 0


def _machine() -> dict:
    return {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(),
            "platform": sys.platform}
