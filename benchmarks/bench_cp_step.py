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

When torch is importable, a batched PyTorch step (full tensor by einsum, masked mean squared
error per problem, autograd, the same gd / GroupRMSprop update with per-problem state in
torch ops, CPU tensors, float64) runs on the float64 rows; when jax is importable, the same
step under jax.jit + lax.scan (CPU device, x64 enabled, compiled in the warm-up). Before
timing, each checks that its loss after a few steps matches the cpu backend's to 1e-8
relative (printed; MISMATCH otherwise). Their columns are cpu / torch and cpu / jax.

Targets missed are marked MISSED; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import implicitreg as ir

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine, ratio_text, write_json  # noqa: E402

LR, SCALE, BETA, EPS = 1e-3, 1e-2, 0.99, 1e-6
CHECK_STEPS, CHECK_RTOL = 5, 1e-8
CASES = [  # (order, dim, R, batch, n observed, dtype, optimizer, target cpu/numpy)
    (3, 8, 64, 256, 200, "float64", "group_rmsprop", 20.0),
    (3, 8, 64, 256, 200, "float64", "gd", None),
    (3, 8, 64, 256, 200, "float32", "group_rmsprop", None),
    (3, 8, 64, 256, 511, "float64", "group_rmsprop", None),
    (4, 8, 512, 32, 2000, "float64", "group_rmsprop", None),
]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _jax():
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    return jax


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


def size_steps(make, run, sample_s: float, probe: int, compiles: bool = False) -> int:
    """Steps for a sample of about sample_s seconds: estimated from the second of two
    `probe`-step calls (the first pays for thread start, page faults, compilation), then
    corrected by up to two trial samples (each run twice when every new step count compiles
    anew, as jax's static step count does)."""
    def sample(steps):
        dt = float("inf")
        for _ in range(2 if compiles else 1):
            state = make()
            t0 = time.perf_counter()
            run(state, steps)
            dt = min(dt, time.perf_counter() - t0)
        return dt

    sample(probe)
    steps = max(1, round(sample_s * probe / max(sample(probe), 1e-9)))
    for _ in range(2):
        dt = sample(steps)
        if 0.6 * sample_s <= dt <= 1.6 * sample_s:
            break
        steps = max(1, round(steps * sample_s / max(dt, 1e-9)))
    return min(steps, 100_000)


def build(order, dim, batch, n):
    dims = (dim,) * order
    targets, orders = ir.problems.random_cp_tensor(dims, 1, batch=batch, seed=0)
    return ir.tensor_completion(targets, ir.problems.observe_first(orders, n, dims))


def _einsum_spec(order: int) -> str:
    letters = "ijklmn"[:order]
    return ",".join(f"b{c}r" for c in letters) + "->b" + letters


class TorchCP:
    """The batched step in PyTorch: factors (B, d, R) leaves, autograd, update in torch ops."""

    def __init__(self, torch, problem, start, optimizer):
        self.torch, self.start, self.rmsprop = torch, start, optimizer == "group_rmsprop"
        a = problem.arrays(np.float64)
        shape = (-1,) + problem.dims
        self.target = torch.from_numpy(a["target"].reshape(shape).copy())
        self.mask = torch.from_numpy(a["mask"].reshape(shape).astype(np.float64))
        self.n_obs = self.mask.sum(dim=tuple(range(1, problem.order + 1))).clamp_min(1.0)
        self.spec, self.axes = _einsum_spec(problem.order), tuple(range(1, problem.order + 1))
        self.batch = problem.batch

    def make(self):
        torch = self.torch
        return {"U": [torch.tensor(U, requires_grad=True) for U in self.start],
                "v": torch.zeros(self.batch, dtype=torch.float64), "t": 0}

    def losses(self, U):
        res = (self.torch.einsum(self.spec, *U) - self.target) * self.mask
        return (res * res).sum(dim=self.axes) / self.n_obs

    def run(self, state, steps: int):
        torch, U, v = self.torch, state["U"], state["v"]
        for _ in range(steps):
            grads = torch.autograd.grad(self.losses(U).sum(), U)
            with torch.no_grad():
                if self.rmsprop:
                    sq = sum((g * g).sum(dim=(1, 2)) for g in grads)
                    v.mul_(BETA).add_(sq, alpha=1.0 - BETA)
                    state["t"] += 1
                    step = (LR / (torch.sqrt(v / (1.0 - BETA ** state["t"])) + EPS))[:, None, None]
                else:
                    step = LR
                for u, g in zip(U, grads, strict=True):
                    u.sub_(step * g)
        return state

    def loss_after(self, steps: int) -> np.ndarray:
        state = self.run(self.make(), steps)
        with self.torch.no_grad():
            return self.losses(state["U"]).numpy()


class JaxCP:
    """The batched step in JAX: jax.jit of lax.scan over steps (static), jax.grad."""

    def __init__(self, jax, problem, start, optimizer):
        self.jax = jax
        jnp = jax.numpy
        cpu = jax.devices("cpu")[0]
        a = problem.arrays(np.float64)
        shape = (-1,) + problem.dims
        target = jax.device_put(a["target"].reshape(shape), cpu)
        mask = jax.device_put(a["mask"].reshape(shape).astype(np.float64), cpu)
        axes = tuple(range(1, problem.order + 1))
        n_obs = jnp.maximum(mask.sum(axis=axes), 1.0)
        spec, rmsprop, B = _einsum_spec(problem.order), optimizer == "group_rmsprop", problem.batch
        self.start = [jax.device_put(U, cpu) for U in start]

        def losses(U):
            res = (jnp.einsum(spec, *U) - target) * mask
            return (res * res).sum(axis=axes) / n_obs

        def body(carry, _):
            U, v, t = carry
            grads = jax.grad(lambda U: losses(U).sum())(U)
            if rmsprop:
                sq = sum((g * g).sum(axis=(1, 2)) for g in grads)
                v = BETA * v + (1.0 - BETA) * sq
                t = t + 1.0
                step = LR / (jnp.sqrt(v / (1.0 - jnp.power(BETA, t))) + EPS)
            else:
                step = jnp.full((B,), LR)
            U = [u - step[:, None, None] * g for u, g in zip(U, grads, strict=True)]
            return (U, v, t), None

        @functools.partial(jax.jit, static_argnums=1)
        def run(U, steps):
            carry = (U, jnp.zeros(B, dtype=jnp.float64), jnp.zeros((), dtype=jnp.float64))
            (U, _, _), _ = jax.lax.scan(body, carry, None, length=steps)
            return U

        self.losses, self._run = jax.jit(losses), run

    def make(self):
        return self.start  # immutable arrays: every run starts from the same factors

    def run(self, U, steps: int):
        return self.jax.block_until_ready(self._run(U, steps))

    def loss_after(self, steps: int) -> np.ndarray:
        return np.asarray(self.losses(self.run(self.make(), steps)))


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def run_case(case, repeats, sample_s, torch, jax) -> dict:
    order, dim, R, B, n, dtype, optimizer, target = case
    name = f"order {order} d={dim} R={R} B={B} n={n} {dtype} {optimizer}"
    problem = build(order, dim, B, n)
    start = [U.copy() for U in ir.CPFactorization.init(problem, rank=R, scale=SCALE, seed=0,
                                                       dtype=dtype).factors]
    row = {"case": name, "order": order, "dim": dim, "R": R, "batch": B, "n": n,
           "dtype": dtype, "optimizer": optimizer, "target": target}

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
    for name_x, lib, cls in (("torch", torch, TorchCP), ("jax", jax, JaxCP)):
        row[f"{name_x}_problem_steps_per_s"] = None
        if lib is None or dtype != "float64":
            continue
        impl = cls(lib, problem, start, optimizer)
        row["checks"][name_x] = rel_diff(impl.loss_after(CHECK_STEPS), ref_loss)
        variants[name_x] = (impl.make, impl.run,
                            size_steps(impl.make, impl.run, sample_s, 2, name_x == "jax"))
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
    torch, jax = _torch(), _jax()
    versions = {"numpy": np.__version__, "torch": torch and torch.__version__,
                "jax": jax and jax.__version__}
    info = ir.build_info()
    print(f"implicitreg {ir.__version__}, {info['cpu_flags']}, {info['threads']} threads; "
          f"median of {repeats}, samples of about {sample_s} s; lr {LR}, init std {SCALE}, "
          f"tol None; " + ", ".join(f"{k} {v or '-'}" for k, v in versions.items()))
    if torch is None or jax is None:
        print("(" + " and ".join(k for k, v in (("torch", torch), ("jax", jax)) if v is None)
              + " not importable: those columns are '-')")
    print(f"\n{'case (problem-steps/s)':52s} {'cpu':>10s} {'numpy':>10s} {'ratio':>7s} "
          f"{'target':>6s} {'torch':>10s} {'cpu/torch':>9s} {'jax':>10s} {'cpu/jax':>8s}")
    rows = []
    for case in CASES:
        row = run_case(case, repeats, sample_s, torch, jax)
        rows.append(row)
        t = row["target"]
        frozen = row["cpu_frozen"] + row["numpy_frozen"]
        print(f"{row['case']:52s} {_r(row['cpu_problem_steps_per_s']):>10s} "
              f"{_r(row['numpy_problem_steps_per_s']):>10s} {ratio_text(row['numpy_ratio']):>7s} "
              f"{(f'{t:.0f}x' if t else '-'):>6s} {_r(row['torch_problem_steps_per_s']):>10s} "
              f"{ratio_text(row['torch_ratio']):>9s} {_r(row['jax_problem_steps_per_s']):>10s} "
              f"{ratio_text(row['jax_ratio']):>8s}{'' if row['met'] else '  MISSED'}"
              f"{f'  ({frozen} problems froze)' if frozen else ''}")

    print(f"\nsteps per sample and median sample seconds; loss after {CHECK_STEPS} steps against "
          f"the cpu backend's (max relative difference over problems, must be <= {CHECK_RTOL:g} "
          "for torch/jax)")
    for row in rows:
        parts = [f"{k} {row[f'{k}_steps']} steps {row[f'{k}_s']:.2f} s"
                 for k in ("cpu", "numpy", "torch", "jax") if f"{k}_steps" in row]
        checks = []
        for k, d in row["checks"].items():
            if k == "numpy":  # the reference backend: shown, not judged (float32 rows too)
                checks.append(f"numpy {d:.1e}")
                continue
            row[f"{k}_loss_ok"] = bool(d <= CHECK_RTOL)
            checks.append(f"{k} {d:.1e} {'ok' if d <= CHECK_RTOL else 'MISMATCH'}")
        print(f"  {row['case']:52s} " + "; ".join(parts) + " | check: " + ", ".join(checks))

    write_json(args.json, {"benchmark": "cp_step", "machine": machine(), "build": info,
                           "versions": versions, "repeats": repeats, "quick": args.quick,
                           "lr": LR, "init_std": SCALE, "beta": BETA, "eps": EPS,
                           "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
