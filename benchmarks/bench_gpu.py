"""implicitreg on one device against PyTorch, JAX and CuPy on the same device, side by side in
one run: the fused DMF step, the CP step and batched singular values.

    python benchmarks/bench_gpu.py [--device cuda|cpu] [--quick] [--repeats N] [--budget S]
                                   [--no-compile] [--only dmf|cp|svdvals ...] [--json out.json]

--device cuda (default) runs implicitreg's `cuda` backend, torch on "cuda", jax on its GPU and
CuPy; it exits with code 2 at once when implicitreg's cuda backend is not usable here.
--device cpu runs the same cases at small sizes on the `cpu` backend, torch and jax on the CPU
and numpy.linalg.svd in CuPy's place: it tests this script where there is no GPU; its figures
say nothing about the GPU targets. The PyTorch and JAX steps are those of peers.py.

DMF step (depth 3, float32 and float64): the paper's 2x2 completion problem
(ir.problems.paper_2x2, B = 2**20) and a random 16x16 completion problem (N(0, 1) targets, ~50%
of the entries observed, per problem; B = 2**14). implicitreg times `f.step(lr, steps)`; the
peers, from the same start, are a batched PyTorch step with autograd (torch.bmm forward,
.backward(), SGD under no_grad), a PyTorch step with closed-form gradients (bmm, no autograd),
the same step under torch.compile (float32 rows only, for its compile time; skipped with
--no-compile, when it fails, or once compiling took 60 s in all), and JAX (vmap
of a per-problem jax.grad step, jit, lax.scan of 50 steps per call).

CP step (float32 and float64, group_rmsprop, the paper's optimizer): order 3 dim 8 R = 64 with
200 observed entries and order 4 dim 8 R = 512 with 2000 observed (maximal R = prod(d) /
max(d); random rank-1 targets of norm 1, the first n entries of a random order observed, as
implicitreg.sweep builds "random_cp_completion"), B = 4096; init std 1e-2, lr 1e-3.
implicitreg times `c.step(lr, steps, optimizer="group_rmsprop")`; the peers are
peers.TorchCP (full tensor by einsum, autograd, the update in torch ops) and peers.JaxCP (the
same under jit + lax.scan of 10 steps per call).

Each side gets its own step count, sized so that one timed call takes about --target-s seconds
(0.3; 0.1 with --quick), and every timed call starts from the same start (the model's whole
state reset outside the clock), so each repeat does the same work. Rate = B * steps / median
seconds (problem-steps/s), after warm-up calls that absorb compilation. Seconds are read from
CUDA events on the GPU (--device cpu: the wall clock); the sizing, timing and loading of
peers.py are those of `implicitreg bench` (implicitreg.bench.harness). Before timing, every
side runs 20 steps (jax: whole scans, 50 for DMF) from the same start at a larger learning
rate, and its change of the factors must match implicitreg's over as many steps to 1e-10
(float64) or 1e-4 (float32) relative, max norm. A side that does not is flagged "!" (MISMATCH
in the notes) and left out of "best peer"; when it is the reference (DMF: torch-closed, the
same arithmetic; CP: torch; else the first peer that ran) the run fails.

Singular values (float32 and float64): random normal batches 2x2 (B = 2**20), 8x8 (B = 2**16),
32x32 (B = 2**14). `ir.svdvals(X)` on a device array against `cupy.linalg.svd(X,
compute_uv=False)` and `torch.linalg.svdvals(X)`, each synchronized before the clock stops.
Every side must match LAPACK (float64) on the first 2048 matrices to 1e-10 * sigma_1 (float64)
or 100 * n * eps * sigma_1 (float32) first: implicitreg failing fails the run, a peer failing
is flagged and left out of "best peer".

Ratio = implicitreg rate / the best peer's rate. Targets (cuda): DMF 2x2 depth 3 float32 at
least 1e11 problem-steps/s and at least 20x the best of PyTorch and JAX; DMF 16x16 depth 3
float32 at least 10x the best peer; cp_step at least 10x
the batched PyTorch step, every CP case; svdvals at least 5x the best of CuPy and PyTorch at
every size. Each prints "met" or "missed"; a missing peer is reported as "no peer". Peers still
waiting when --budget seconds (140; 60 with --quick) have passed are skipped, so the run stays
short (gpu_check.sh gives it 170 s); the DMF peers stop at 50% of it and the CP peers at 80%,
so that the later sections' peers keep theirs.

Exit code: 0 when every check passed (targets may be missed), 1 when a check failed, a case
raised or problems froze while timed, 2 when the device is not usable.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import implicitreg as ir
from implicitreg.bench import cp_flops, dmf_flops, harness  # flops as `implicitreg bench`
from implicitreg.bench.harness import (  # the timing and checks of `implicitreg bench`
    CudaEvents,
    Side,
    WallClock,
    machine,
    note_lines,
    ratio_text,
    rel_change_diff,
    repeat,
    time_alone,
    whole,
    write_json,
)

DEPTH = 3
CHECK_STEPS = 20
RTOL = {"float64": 1e-10, "float32": 1e-4}
SVD_REF_BATCH = 2048  # matrices checked against LAPACK
SVD_PROBE_BATCH = 4096  # a side is first timed on this many, to foresee a full call's time
SVD_MAX_CALL_S = 2.0  # a side slower than this per full batch is timed on fewer (marked *)
MAX_CALLS = 10_000  # svdvals calls per sample
DMF_TARGET_RATE, DMF_TARGET_RATIO, SVD_TARGET_RATIO = 1e11, 20.0, 5.0
DMF16_TARGET_RATIO = 10.0  # DMF 16x16 depth 3 float32 against the best peer
CP_TARGET_RATIO = 10.0  # cp_step against the batched PyTorch step on the same device
JAX_SCAN_STEPS = 50  # DMF steps per jitted lax.scan call; a run is a whole number of these
COMPILE_CAP_S = 60.0  # no more torch.compile sides once their warm-ups took this long
# The sections end at these shares of --budget (peers still waiting then are skipped), so
# that the later sections keep their time
DMF_SHARE, CP_SHARE = 0.5, 0.8

# Per device: (name, shape d, batch, init std, timing lr, check lr, max steps per call).
# The lr are small enough that no problem converges or diverges at any step count used here
# (tol is None, so nothing freezes either way); the check lr moves the factors enough for the
# change to be compared in float32. max steps bounds lr * steps for stability.
DMF_CASES = {
    "cuda": [
        ("2x2", 2, 2**20, 0.3, 1e-3, 1e-2, 200_000),
        ("16x16", 16, 2**14, 0.5 / 4, 1e-4, 1e-3, 1_000_000),
    ],
    "cpu": [
        ("2x2", 2, 4096, 0.3, 1e-3, 1e-2, 200_000),
        ("16x16", 16, 256, 0.5 / 4, 1e-4, 1e-3, 1_000_000),
    ],
}
# CP step, group_rmsprop (the paper's optimizer) with its beta and eps, init
# std and lr of bench_cp_step.py (nothing converges or diverges: every step is real work),
# maximal R = prod(d) / max(d), n observed entries as in the paper's grids. Per device:
# (order, dim, R, batch, n observed, max steps per call).
CP_OPTIMIZER, CP_BETA, CP_EPS = "group_rmsprop", 0.99, 1e-6
CP_STD, CP_LR, CP_LR_CHECK = 1e-2, 1e-3, 1e-2
CP_CASES = {
    "cuda": [(3, 8, 64, 4096, 200, 100_000), (4, 8, 512, 4096, 2000, 100_000)],
    "cpu": [(3, 8, 64, 64, 200, 100_000), (4, 8, 512, 4, 2000, 100_000)],
}
SVD_CASES = {
    "cuda": [(2, 2**20), (8, 2**16), (32, 2**14)],
    "cpu": [(2, 1024), (8, 1024), (32, 1024)],
}
DTYPES = ("float32", "float64")
SECTIONS = ("dmf", "cp", "svdvals")


def host(x) -> np.ndarray:
    """A host copy (never a view of live state) of a NumPy, CuPy, torch or jax array."""
    if hasattr(x, "detach"):  # torch, on any device
        return x.detach().cpu().numpy().copy()
    if hasattr(x, "__cuda_array_interface__") and hasattr(x, "get"):  # CuPy
        return x.get()
    return np.array(x)


# longer than the table cells of `implicitreg bench`: here errors are read in notes and logs
first_line = functools.partial(harness.first_line, limit=160)


# ----------------------------------------------------------------------------- the device


class Device:
    """Where every side runs: implicitreg's backend and array module (and how to wait for
    it), the torch device and the jax platform of the peers, and the timer of every side."""

    def __init__(self, kind, backend, xp, sync, torch_device, jax_platform, name, timer):
        self.kind, self.backend, self.xp, self.sync = kind, backend, xp, sync
        self.torch_device, self.jax_platform, self.name = torch_device, jax_platform, name
        self.timer = timer

    def put(self, a: np.ndarray):
        return self.xp.asarray(a)


def cuda_device() -> Device:
    import cupy

    try:
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # only a label
        name = f"cuda device ({first_line(exc)})"
    return Device(
        "cuda",
        "cuda",
        cupy,
        lambda: cupy.cuda.get_current_stream().synchronize(),
        "cuda",
        "gpu",
        name,
        CudaEvents(cupy),
    )


def cpu_device() -> Device:
    return Device(
        "cpu",
        "cpu",
        np,
        lambda: None,
        "cpu",
        "cpu",
        f"cpu ({os.cpu_count()} logical cores)",
        WallClock(),
    )


class Peers:
    """peers.py beside this script (`module`), and torch and jax loaded once through it;
    each is None with the reason it cannot run on `dev`."""

    def __init__(self, dev: Device, compile_torch: bool):
        loaded = harness.Peers(Path(__file__).parent)
        if loaded.module is None:
            raise RuntimeError(loaded.missing)
        self.module = loaded.module
        self.compile = compile_torch
        self.compile_spent = 0.0
        self.torch, reason = loaded.load("torch")
        self.torch_reason = reason and f"torch {reason}"
        if (
            self.torch is not None
            and dev.torch_device == "cuda"
            and not self.torch.cuda.is_available()
        ):
            self.torch, self.torch_reason = None, "torch sees no CUDA device"
        self.jax, reason = loaded.load("jax")
        self.jax_reason, self.jax_device = reason and f"jax {reason}", None
        if self.jax is not None:
            try:
                self.jax_device = self.jax.devices(dev.jax_platform)[0]
            except Exception as exc:  # no such platform: RuntimeError, by jax version
                self.jax_reason = f"jax has no {dev.jax_platform} device ({first_line(exc)})"
                self.jax = None
        self.on_cuda = dev.kind == "cuda"
        try:
            import cupy
        except ImportError:
            cupy = None
        self.versions = {
            "numpy": np.__version__,
            "torch": self.torch and self.torch.__version__,
            "jax": self.jax and self.jax.__version__,
            "cupy": cupy and cupy.__version__,
        }

    def release(self) -> None:
        """Hand the memory torch caches back to the device, so that the next side (jax,
        implicitreg) finds it free: the order-4 CP peers hold gigabytes."""
        if self.torch is not None and self.on_cuda:
            self.torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- sides
# A side holds B problems from one start: reset() restores the start (not timed),
# run(steps, lr) does `steps` steps and returns when the device is done, factors() gives
# host copies. granule: run() takes a whole multiple of it. The peers (peers.py) follow the
# same protocol.


class ImplicitregSide:
    """A DeepFactorization or CPFactorization; step_args are passed to every step() call."""

    name, granule = "implicitreg", 1

    def __init__(self, dev: Device, model, **step_args):
        self.dev, self.f, self.step_args = dev, model, step_args
        # the model's whole state, as its checkpoints keep it (factors, status, and the
        # group_rmsprop state of a CP model): reset() restores it in place, on the device
        self.start = {k: a.copy() for k, a in model._state().items()}

    def reset(self):
        for k, a in self.f._state().items():
            a[...] = self.start[k]
        self.f.steps_done = 0
        self.dev.sync()

    def run(self, steps, lr):
        self.f.step(lr, steps, **self.step_args)  # reads the status back: the device is done
        self.dev.sync()

    def factors(self):
        return [host(W) for W in self.f.factors]

    def all_running(self) -> bool:
        return bool((self.f.status == "running").all())


# ----------------------------------------------------------------------------- timing


def time_steps(side, batch, lr, timer, target_s, repeats, max_steps) -> dict:
    """A step side timed on its own at lr (`harness.time_alone`); its units are steps."""
    r = time_alone(
        Side(run=lambda n: side.run(n, lr), reset=side.reset, granule=side.granule),
        batch,
        repeats,
        target_s,
        timer,
        max_steps,
    )
    return {("steps" if k == "units" else k): v for k, v in r.items()}


def time_calls(fn, sync, timer, target_s, repeats) -> dict:
    """Median seconds of one fn() call, from samples of calls synchronized at their end."""
    r = time_alone(
        Side(run=lambda n: (repeat(fn, n), sync())), 1, repeats, target_s, timer, MAX_CALLS
    )
    n = r["units"]
    return {
        "calls": n,
        "median_s": r["median_s"] / n,
        "times_s": [t / n for t in r["times_s"]],
        "warmup_s": r["warmup_s"],
    }


class Clock:
    """The run's deadline: peers still waiting when it has passed are skipped. Each section
    ends at its share of it (DMF_SHARE, CP_SHARE, then all), so that the later sections'
    peers keep their time."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.share = 1.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over(self) -> bool:
        return self.elapsed() > self.share * self.budget_s

    def skipped(self) -> dict:
        return {
            "skipped": f"time budget ({self.share * self.budget_s:.0f} s of "
            f"{self.budget_s:.0f} s) spent"
        }


# ----------------------------------------------------------------------------- checks


def measure_sides(
    row, peers, clock, ir_side, peer_sides, start, lr, target_s, repeats, max_steps
) -> None:
    """Check and time implicitreg's side and then each peer into row["sides"]. implicitreg
    first runs CHECK_STEPS at row["check_lr"] from the start (no problem may freeze); each
    peer runs as many steps, rounded up to its granule, and its change of the factors is
    compared with implicitreg's over the same count. peer_sides: (name, make), make() giving
    the side, or (name, reason) for a peer that cannot run. A peer that raises, or is still
    waiting once the clock is over, is reported and skipped; "spent_s" is all the time a
    peer took (construction and compilation included)."""
    B, dtype, lr_check = row["batch"], row["dtype"], row["check_lr"]
    start64 = [np.asarray(S, np.float64) for S in start]
    refs = {}

    def reference(steps):
        if steps not in refs:
            ir_side.reset()
            ir_side.run(steps, lr_check)
            refs[steps] = ir_side.factors()
        return refs[steps]

    reference(CHECK_STEPS)
    if not ir_side.all_running():
        raise RuntimeError(f"{row['case']}: problems froze in the {CHECK_STEPS}-step check")
    timer = ir_side.dev.timer
    r = time_steps(ir_side, B, lr, timer, target_s, repeats, max_steps)
    r["all_running"] = ir_side.all_running()
    r["check_rel_diff"], r["match"] = 0.0, True
    row["sides"]["implicitreg"] = r

    for name, make in peer_sides:
        if isinstance(make, str):
            row["sides"][name] = {"skipped": make}
            continue
        if clock.over():
            row["sides"][name] = clock.skipped()
            continue
        t0 = time.perf_counter()
        try:
            side = make()
            check_steps = whole(CHECK_STEPS, side.granule)
            side.reset()
            side.run(check_steps, lr_check)
            got, ref = side.factors(), reference(check_steps)
            r = time_steps(side, B, lr, timer, target_s, repeats, max_steps)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            row["sides"][name] = {
                "skipped": f"error: {first_line(exc)}",
                "spent_s": time.perf_counter() - t0,
            }
            continue
        finally:
            side = None  # before release(): its tensors go back to torch's cache first
            peers.release()
        r["check_rel_diff"] = rel_change_diff(got, ref, start64)  # of the change
        r["check_factor_rel_diff"] = max(  # of the factors themselves
            float(
                np.abs(np.asarray(g, np.float64) - w).max(initial=0.0)
                / max(np.abs(w).max(initial=0.0), 1e-300)
            )
            for g, w in zip(got, ref, strict=True)
        )
        r["check_steps"] = check_steps
        r["match"] = bool(r["check_rel_diff"] <= RTOL[dtype])
        r["spent_s"] = time.perf_counter() - t0
        row["sides"][name] = r


# ----------------------------------------------------------------------------- DMF cases


def dmf_problem(shape: str, d: int, batch: int):
    """(problem, host targets (Bt, d, d), host masks (Bm, d, d) bool)."""
    if shape == "2x2":
        p = ir.problems.paper_2x2(batch=batch)
    else:
        rng = np.random.default_rng(1)
        p = ir.completion(rng.standard_normal((batch, d, d)), rng.random((batch, d, d)) < 0.5)
    return p, p.targets, p.masks


def dmf_case(dev, peers, clock, case, dtype, target_s, repeats) -> dict:
    shape, d, B, std, lr, lr_check, max_steps = case
    problem, targets, masks = dmf_problem(shape, d, B)
    rng = np.random.default_rng(0)
    # one generator for the whole batch (ir's per-problem streams take seconds at B = 2**20)
    start = [(std * rng.standard_normal((B, d, d))).astype(dtype) for _ in range(DEPTH)]
    row = {
        "case": f"{shape} depth {DEPTH} B={B} {dtype}",
        "shape": shape,
        "batch": B,
        "depth": DEPTH,
        "dtype": dtype,
        "lr": lr,
        "check_lr": lr_check,
        "check_steps": CHECK_STEPS,
        "flops_per_step": dmf_flops(d, DEPTH),
        "sides": {},
    }
    ir_side = ImplicitregSide(
        dev, ir.DeepFactorization(problem, start, backend=dev.backend, dtype=dtype)
    )
    peer_sides = []
    for mode in ("autograd", "closed", "compiled"):
        name = "torch-compile" if mode == "compiled" else f"torch-{mode}"
        if peers.torch is None:
            peer_sides.append((name, peers.torch_reason))
        elif mode == "compiled" and not peers.compile:
            peer_sides.append((name, "--no-compile"))
        elif mode == "compiled" and dtype != "float32":
            peer_sides.append((name, "torch.compile on float32 rows only (compile time)"))
        elif mode == "compiled" and peers.compile_spent > COMPILE_CAP_S:
            peer_sides.append(
                (name, f"torch.compile took over {COMPILE_CAP_S:.0f} s in earlier cases")
            )
        else:
            peer_sides.append(
                (
                    name,
                    lambda mode=mode: peers.module.TorchDMF(
                        targets,
                        masks,
                        start,
                        dtype,
                        mode,
                        device=dev.torch_device,
                        torch=peers.torch,
                    ),
                )
            )
    peer_sides.append(
        (
            "jax",
            peers.jax_reason
            if peers.jax is None
            else lambda: peers.module.JaxDMF(
                targets,
                masks,
                start,
                dtype,
                device=peers.jax_device,
                scan_steps=JAX_SCAN_STEPS,
                jax=peers.jax,
            ),
        )
    )
    measure_sides(row, peers, clock, ir_side, peer_sides, start, lr, target_s, repeats, max_steps)
    # compiled in its check run: its whole time counts against the compile cap
    peers.compile_spent += row["sides"]["torch-compile"].get("spent_s", 0.0)
    return row


# ----------------------------------------------------------------------------- CP cases


def cp_case(dev, peers, clock, case, dtype, target_s, repeats) -> dict:
    order, dim, R, B, n, max_steps = case
    dims = (dim,) * order
    # as implicitreg.sweep builds "random_cp_completion": rank-1 targets, Frobenius norm 1,
    # the first n entries of each problem's random order observed
    tensors, orders = ir.problems.random_cp_tensor(dims, 1, batch=B, seed=0)
    problem = ir.tensor_completion(tensors, ir.problems.observe_first(orders, n, dims))
    a = problem.arrays(np.float64)
    targets, masks = (a[k].reshape((-1,) + dims) for k in ("target", "mask"))
    rng = np.random.default_rng(0)
    # one generator for the whole batch (CPFactorization.init's per-problem streams are slow)
    start = [(CP_STD * rng.standard_normal((B, dim, R))).astype(dtype) for _ in dims]
    row = {
        "case": f"order {order} d={dim} R={R} B={B} {dtype}",
        "order": order,
        "dim": dim,
        "R": R,
        "n_observed": n,
        "batch": B,
        "dtype": dtype,
        "optimizer": CP_OPTIMIZER,
        "lr": CP_LR,
        "check_lr": CP_LR_CHECK,
        "check_steps": CHECK_STEPS,
        "flops_per_step": cp_flops(order, R, n, dims, CP_OPTIMIZER),
        "sides": {},
    }
    ir_side = ImplicitregSide(
        dev,
        ir.CPFactorization(problem, start, backend=dev.backend, dtype=dtype),
        optimizer=CP_OPTIMIZER,
        beta=CP_BETA,
        eps=CP_EPS,
    )
    opt = (CP_OPTIMIZER, CP_BETA, CP_EPS, dtype)
    peer_sides = [
        (
            "torch",
            peers.torch_reason
            if peers.torch is None
            else lambda: peers.module.TorchCP(
                targets, masks, start, *opt, device=dev.torch_device, torch=peers.torch
            ),
        ),
        (
            "jax",
            peers.jax_reason
            if peers.jax is None
            else lambda: peers.module.JaxCP(
                targets, masks, start, *opt, device=peers.jax_device, jax=peers.jax
            ),
        ),
    ]
    measure_sides(
        row, peers, clock, ir_side, peer_sides, start, CP_LR, target_s, repeats, max_steps
    )
    return row


# ----------------------------------------------------------------------------- svdvals


def svd_case(dev, peers, clock, n, B, dtype, target_s, repeats) -> dict:
    X = np.random.default_rng(0).standard_normal((B, n, n)).astype(dtype)
    k = min(B, SVD_REF_BATCH)
    ref = np.linalg.svd(X[:k].astype(np.float64), compute_uv=False)
    tol = RTOL["float64"] if dtype == "float64" else 100 * n * float(np.finfo(np.float32).eps)
    row = {
        "case": f"{n}x{n} B={B} {dtype}",
        "n": n,
        "batch": B,
        "dtype": dtype,
        "check_tol": tol,
        "sides": {},
    }
    Xd = dev.put(X)

    def check(s) -> float:
        s = np.asarray(host(s)[:k], dtype=np.float64)
        return float(np.max(np.abs(s - ref).max(axis=1) / ref[:, 0]))

    def add(name, on, sync, is_peer=True):
        """Check and time fn = on(b), svdvals of the first b matrices: b = B, unless a probe
        at SVD_PROBE_BATCH says one call of B would take over SVD_MAX_CALL_S (a per-matrix
        loop somewhere): then the largest power-of-two multiple of the probe under that."""
        if is_peer and clock.over():
            row["sides"][name] = clock.skipped()
            return
        try:
            b = min(B, SVD_PROBE_BATCH)
            fn = on(b)
            dev.timer.time(lambda: (fn(), sync()))  # first: handles, workspaces, compiling
            t = min(dev.timer.time(lambda: (fn(), sync())) for _ in range(2))
            if t * B / b > SVD_MAX_CALL_S:
                b = min(B, b * 2 ** max(0, math.floor(math.log2(SVD_MAX_CALL_S / max(t, 1e-9)))))
            else:
                b = B
            fn = on(b)
            err = check(fn())
            r = time_calls(fn, sync, dev.timer, target_s, repeats)
        except Exception as exc:
            if not is_peer:
                raise
            row["sides"][name] = {"skipped": f"error: {first_line(exc)}"}
            return
        r["batch"] = b
        r["rate"] = b / r["median_s"]
        r["check_rel_err"] = err
        r["match"] = bool(err <= tol)
        row["sides"][name] = r

    add("implicitreg", lambda b: lambda: ir.svdvals(Xd[:b]), dev.sync, is_peer=False)
    if dev.kind == "cuda":
        add("cupy", lambda b: lambda: dev.xp.linalg.svd(Xd[:b], compute_uv=False), dev.sync)
    else:  # CuPy's place on the cpu: LAPACK through numpy
        add("numpy", lambda b: lambda: np.linalg.svd(X[:b], compute_uv=False), lambda: None)
    if peers.torch is None:
        row["sides"]["torch"] = {"skipped": peers.torch_reason}
    else:  # the function waits for its result: nothing left to synchronize
        add(
            "torch",
            lambda b: peers.module.torch_svdvals(X[:b], dev.torch_device, peers.torch),
            lambda: None,
        )
        peers.release()
    return row


# ----------------------------------------------------------------------------- report


def reference_side(row) -> str:
    """The side whose disagreement with implicitreg fails the run: LAPACK's values are the
    reference of svdvals (checked on implicitreg itself); for the DMF step the closed-form
    torch step (the same arithmetic), else the first peer that ran."""
    if "n" in row:
        return "implicitreg"
    for name in ("torch-closed", "torch", "jax", "torch-autograd", "torch-compile"):
        if "rate" in row["sides"].get(name, {}):
            return name
    return "implicitreg"


def best_peer(row) -> tuple[str | None, float | None]:
    rates = {
        k: v["rate"]
        for k, v in row["sides"].items()
        if k != "implicitreg" and "rate" in v and v.get("match", False)
    }
    if not rates:
        return None, None
    name = max(rates, key=rates.get)
    return name, rates[name]


def finish_row(row) -> None:
    own = row["sides"].get("implicitreg", {})
    name, rate = best_peer(row)
    row["best_peer"], row["best_peer_rate"] = name, rate
    row["ratio"] = own["rate"] / rate if rate and "rate" in own else None


def cell(side: dict, width: int, batch: int) -> str:
    """A rate; "!" when its check failed, "*" when timed on fewer than the row's batch."""
    if "rate" not in side:
        return f"{'skip':>{width}s}"
    mark = "!" if not side.get("match", True) else "*" if side.get("batch", batch) < batch else ""
    return f"{side['rate']:{width - 1}.2e}{mark or ' '}"


def print_table(title, rows, cols, extra=None) -> None:
    w = 15
    head = f"{title:30s}" + "".join(f"{c:>{w}s}" for c in cols)
    head += f"{'best peer':>16s}{'ratio':>9s}"
    if extra:
        head += f"{extra:>12s}"
    print("\n" + head)
    for row in rows:
        line = f"{row['case']:30s}" + "".join(
            cell(row["sides"].get(c, {}), w, row["batch"]) for c in cols
        )
        line += f"{row['best_peer'] or '-':>16s}{ratio_text(row['ratio']):>9s}"
        if extra:
            own = row["sides"].get("implicitreg", {})
            gf = own.get("rate", 0) * row.get("flops_per_step", 0) / 1e9
            line += f"{gf:12.1f}"
        print(line)
    notes = {}
    for row in rows:
        for name, side in row["sides"].items():
            if "skipped" in side:
                notes.setdefault(f"{name}: {side['skipped']}", []).append(row["case"])
            elif side.get("batch", row["batch"]) < row["batch"]:
                notes.setdefault(
                    f"{name}: * timed on B={side['batch']} (a call of the whole "
                    f"batch would take over {SVD_MAX_CALL_S:g} s)",
                    [],
                ).append(row["case"])
            if "rate" in side and not side.get("match", True):
                err = side.get("check_rel_diff", side.get("check_rel_err"))
                notes.setdefault(f"{name}: MISMATCH ({err:.1e} relative)", []).append(row["case"])
    for line in note_lines(notes, len(rows)):
        print(f"  note: {line}")


def targets(dmf_rows, cp_rows, svd_rows) -> list[dict]:
    """The issue's targets: {name (short), target (in words), value, threshold, met}; met is
    None where there is nothing to compare with."""
    out = []

    def add(name, text, value, threshold, **extra):
        out.append(
            {
                "name": name,
                "target": text,
                "value": value,
                "threshold": threshold,
                "met": None if value is None else bool(value >= threshold),
                **extra,
            }
        )

    for row in dmf_rows:
        if row["shape"] == "2x2" and row["dtype"] == "float32":
            short = f"DMF {row['shape']} {row['dtype']}"
            add(
                f"{short} rate",
                f"DMF {row['case']}: >= {DMF_TARGET_RATE:.0e} problem-steps/s",
                row["sides"].get("implicitreg", {}).get("rate"),
                DMF_TARGET_RATE,
            )
            add(
                f"{short} vs peers",
                f"DMF {row['case']}: >= {DMF_TARGET_RATIO:.0f}x the best of PyTorch and JAX",
                row["ratio"],
                DMF_TARGET_RATIO,
                best_peer=row["best_peer"],
            )
        elif row["shape"] == "16x16" and row["dtype"] == "float32":
            add(
                f"DMF {row['shape']} {row['dtype']} vs peers",
                f"DMF {row['case']}: >= {DMF16_TARGET_RATIO:.0f}x the best of PyTorch and JAX",
                row["ratio"],
                DMF16_TARGET_RATIO,
                best_peer=row["best_peer"],
            )
    for row in cp_rows:
        own, torch = (row["sides"].get(k, {}) for k in ("implicitreg", "torch"))
        ok = "rate" in own and "rate" in torch and torch["match"]
        add(
            f"cp_step order {row['order']} {row['dtype']} vs torch",
            f"cp_step {row['case']}: >= {CP_TARGET_RATIO:.0f}x PyTorch batched",
            own["rate"] / torch["rate"] if ok else None,
            CP_TARGET_RATIO,
            peer="torch",
        )
    for row in svd_rows:
        if row["n"] <= 32:
            add(
                f"svdvals {row['n']}x{row['n']} {row['dtype']}",
                f"svdvals {row['case']}: >= {SVD_TARGET_RATIO:.0f}x the best of CuPy and PyTorch",
                row["ratio"],
                SVD_TARGET_RATIO,
                best_peer=row["best_peer"],
            )
    return out


def run_all(dev: Device, peers: Peers, args) -> tuple[dict, bool]:
    """Every case on `dev`; (report, every check passed)."""
    clock = Clock(args.budget)
    repeats, target_s = args.repeats, args.target_s
    print(
        f"implicitreg {ir.__version__} on {dev.name} (backend {dev.backend}); median of "
        f"{repeats}, calls of about {target_s} s; "
        + ", ".join(f"{k} {v or '-'}" for k, v in peers.versions.items())
    )
    ok = True
    errors = []
    done = {"dmf": [], "cp": [], "svdvals": []}

    def run_cases(cases, run, label, section):
        """The rows of run(case, dtype) for every case and dtype; a case that raises is
        reported in errors and left out. The rows so far are written to --json after each
        one, so that a run stopped by a time limit keeps what it measured."""
        rows = done[section]
        for case in cases:
            for dtype in DTYPES:
                try:
                    row = run(case, dtype)
                except Exception as exc:
                    traceback.print_exc()
                    errors.append(f"{label(case)} {dtype}: {first_line(exc)}")
                    continue
                finish_row(row)
                rows.append(row)
                print(f"  done {row['case']} ({clock.elapsed():.0f} s)", flush=True)
                write_json(
                    args.json,
                    {
                        "benchmark": "gpu",
                        "device": dev.kind,
                        "partial": True,
                        "errors": errors,
                        **done,
                    },
                    quiet=True,
                )
        return rows

    def cases(section, table):
        return table[dev.kind] if section in args.only else []

    clock.share = DMF_SHARE
    dmf_rows = run_cases(
        cases("dmf", DMF_CASES),
        lambda case, dtype: dmf_case(dev, peers, clock, case, dtype, target_s, repeats),
        lambda case: f"DMF {case[0]}",
        "dmf",
    )
    print_table(
        "DMF step (problem-steps/s)",
        dmf_rows,
        ["implicitreg", "torch-autograd", "torch-closed", "torch-compile", "jax"],
        extra="ir Gflop/s",
    )
    clock.share = CP_SHARE
    cp_rows = run_cases(
        cases("cp", CP_CASES),
        lambda case, dtype: cp_case(dev, peers, clock, case, dtype, target_s, repeats),
        lambda case: f"CP order {case[0]}",
        "cp",
    )
    print_table(
        f"CP step, {CP_OPTIMIZER} (problem-steps/s)",
        cp_rows,
        ["implicitreg", "torch", "jax"],
        extra="ir Gflop/s",
    )
    clock.share = 1.0
    svd_rows = run_cases(
        cases("svdvals", SVD_CASES),
        lambda case, dtype: svd_case(dev, peers, clock, case[0], case[1], dtype, target_s, repeats),
        lambda case: f"svdvals {case[0]}x{case[0]}",
        "svdvals",
    )
    ok = ok and not errors
    peer = "cupy" if dev.kind == "cuda" else "numpy"
    print_table("svdvals (matrices/s)", svd_rows, ["implicitreg", peer, "torch"])

    for row in dmf_rows + cp_rows:
        own = row["sides"]["implicitreg"]
        if not own.get("all_running", True):
            errors.append(
                f"{'CP' if 'order' in row else 'DMF'} {row['case']}: problems froze while timed"
            )
            ok = False
    warnings = []
    for row in dmf_rows + cp_rows + svd_rows:
        ref = reference_side(row)
        for name, side in row["sides"].items():
            if "rate" in side and not side["match"]:
                if name == ref:
                    errors.append(
                        f"{row['case']}: implicitreg and {name} disagree "
                        f"({side.get('check_rel_diff', side.get('check_rel_err')):.1e}"
                        " relative)"
                    )
                    ok = False
                else:
                    warnings.append(
                        f"{row['case']}: {name} disagrees with implicitreg and "
                        "the reference; left out of best peer"
                    )
    tg = targets(dmf_rows, cp_rows, svd_rows)
    print(
        "\nTargets"
        + (
            ""
            if dev.kind == "cuda"
            else " (set for --device cuda; on the cpu they only test this script)"
        )
    )
    for t in tg:
        status = {True: "met", False: "missed", None: "no peer"}[t["met"]]
        v = t["value"]
        vtext = "-" if v is None else (f"{v:.3g}" if t["threshold"] > 100 else f"{v:.1f}x")
        print(f"  {status:8s} {t['target']} (got {vtext})")
    for w in warnings:
        print(f"WARNING: {w}")
    for e in errors:
        print(f"ERROR: {e}")
    print(f"total {clock.elapsed():.0f} s")
    report = {
        "benchmark": "gpu",
        "device": dev.kind,
        "device_name": dev.name,
        "machine": machine(),
        "build": ir.build_info(),
        "versions": peers.versions,
        "quick": args.quick,
        "repeats": repeats,
        "target_s": target_s,
        "budget_s": args.budget,
        "dmf": dmf_rows,
        "cp": cp_rows,
        "svdvals": svd_rows,
        "targets": tg,
        "errors": errors,
        "warnings": warnings,
        "checks_passed": ok,
        "elapsed_s": clock.elapsed(),
    }
    return report, ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter calls")
    ap.add_argument("--repeats", type=int, help="timed calls per median (default 5; 3 quick)")
    ap.add_argument("--target-s", type=float, help="seconds per timed call (0.3; 0.1 quick)")
    ap.add_argument(
        "--budget", type=float, help="seconds after which peers are skipped (140; 60 quick)"
    )
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile side")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="these sections only (default: all)",
    )
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    args.repeats = max(1, args.repeats or (3 if args.quick else 5))
    args.target_s = args.target_s or (0.1 if args.quick else 0.3)
    args.budget = args.budget or (60.0 if args.quick else 140.0)
    if args.device == "cuda":
        cuda = ir.backends()["cuda"]
        if not cuda["available"]:
            print(
                f"bench_gpu: implicitreg's cuda backend is not usable here: {cuda['reason']}\n"
                "  (run on a machine with an NVIDIA GPU and implicitreg built with CUDA, or "
                "use --device cpu to test this script)",
                file=sys.stderr,
            )
            write_json(
                args.json,
                {
                    "benchmark": "gpu",
                    "device": "cuda",
                    "machine": machine(),
                    "error": f"cuda backend not usable: {cuda['reason']}",
                },
            )
            return 2
        dev = cuda_device()
    else:
        dev = cpu_device()
    peers = Peers(dev, compile_torch=not args.no_compile)
    report, ok = run_all(dev, peers, args)
    write_json(args.json, report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
