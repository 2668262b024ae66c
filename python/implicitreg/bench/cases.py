"""The cases of `implicitreg bench`: every compiled kernel on the same inputs as the `numpy`
backend and, for the steps and svdvals, the PyTorch and JAX peers; and the flop counts that
give % of peak (the documentation's Performance page)."""

from __future__ import annotations

import functools

import numpy as np

from ..metrics import svd, svdvals, tensor_rank
from ..models import CPFactorization, DeepFactorization
from ..problems import (
    observe_first,
    paper_2x2,
    random_cp_tensor,
    random_low_rank_completion,
    tensor_completion,
)
from .harness import Case, Peers, Side, first_line, rel_change_diff, rel_diff, repeat, whole

ALL_METRICS = (
    "loss",
    "entry:0,0",
    "det",
    "svals",
    "fro",
    "nuc",
    "spectral",
    "schatten:0.5",
    "erank",
    "rank",
    "dist_rank:1",
    "balancedness",
)
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


# ----------------------------------------------------------------------------- sides


class _IrDMF:
    """A DeepFactorization with the peers' protocol (reset, run(steps, lr), factors)."""

    granule = 1

    def __init__(self, problem, start, dtype, backend):
        self.problem, self.start, self.dtype, self.backend = problem, start, dtype, backend
        self.reset()

    def reset(self):
        self.f = DeepFactorization(self.problem, self.start, backend=self.backend, dtype=self.dtype)

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
        self.f = CPFactorization(self.problem, self.start, backend=self.backend, dtype=self.dtype)

    def run(self, steps, lr):
        self.f.step(lr, steps, **self.opt)

    def factors(self):
        return [U.copy() for U in self.f.factors]


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

    sides: dict[str, Side | str] = {}
    for name, impl in impls.items():
        if isinstance(impl, str):
            sides[name] = impl
            continue
        try:
            steps = whole(CHECK_STEPS, impl.granule)
            impl.reset()
            impl.run(steps, check_lr)
            diff = (
                0.0 if name == "cpu" else rel_change_diff(impl.factors(), reference(steps), start64)
            )
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            if name in ("cpu", "numpy"):
                raise
            sides[name] = f"error: {first_line(exc)}"
            continue
        sides[name] = Side(
            run=functools.partial(impl.run, lr=lr),
            reset=impl.reset,
            granule=impl.granule,
            check=diff,
            match=bool(diff <= rtol),
            variant=getattr(impl, "name", name),
        )
    return sides


def _call_sides(fns: dict, compare, tol) -> dict:
    """Sides of a kernel called once per unit: fns name -> fn() (or a reason string), each
    result compared with the cpu backend's by compare(got, want) <= tol."""
    want = fns["cpu"]()
    sides: dict[str, Side | str] = {}
    for name, fn in fns.items():
        if isinstance(fn, str):
            sides[name] = fn
            continue
        try:
            diff = 0.0 if name == "cpu" else compare(fn(), want)
        except Exception as exc:
            if name in ("cpu", "numpy"):
                raise
            sides[name] = f"error: {first_line(exc)}"
            continue
        sides[name] = Side(
            run=functools.partial(repeat, fn), check=diff, match=bool(diff <= tol), variant=name
        )
    return sides


def _peer(peers: Peers, name: str, make):
    """make(module) for an installed peer, else the reason it is not there."""
    lib = peers.lib(name)
    if lib is None:
        return peers.reason(name)
    try:
        return make(lib)
    except Exception as exc:
        return f"error: {first_line(exc)}"


# ----------------------------------------------------------------------------- cases


def _dmf_case(name, d, B, dtype, std, lr, check_lr, targets=()):
    """DMF steps at depth 3 on d x d problems (the paper's 2x2, else rank-3 completion with
    half the entries observed), factors of entries N(0, std^2)."""
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
        impls = {
            "cpu": _IrDMF(problem, start, dtype, "cpu"),
            "numpy": _IrDMF(problem, start, dtype, "numpy"),
        }
        for mode in ("closed", "autograd"):
            impls[f"torch-{mode}"] = _peer(
                peers,
                "torch",
                lambda t, mode=mode: m.TorchDMF(
                    T, M, start, dtype, mode=mode, device="cpu", torch=t
                ),
            )
        impls["jax"] = _peer(
            peers, "jax", lambda j: m.JaxDMF(T, M, start, dtype, device="cpu", jax=j)
        )
        return _step_sides(impls, start, lr, check_lr, STEP_RTOL[dtype])

    title = f"{'paper 2x2' if d == 2 else f'{d}x{d} rank-3 completion'}, depth {depth}, B={B}"
    return Case(
        name, "dmf_step", title, "problem-steps/s", B, dtype, dmf_flops(d, depth), build, targets
    )


def _svd_case(name, n, B, dtype, targets=()):
    def build(peers):
        X = np.random.default_rng(0).standard_normal((B, n, n)).astype(dtype)
        m = peers.module
        fns = {
            "cpu": lambda: svdvals(X),
            "numpy": lambda: svdvals(X, backend="numpy"),
            "torch": _peer(peers, "torch", lambda t: m.torch_svdvals(X, "cpu", torch=t)),
            "jax": _peer(peers, "jax", lambda j: m.jax_svdvals(X, "cpu", jax=j)),
        }
        tol = 1e-10 if dtype == "float64" else 100 * n * float(np.finfo(np.float32).eps)

        def compare(got, want):  # relative to sigma_1, matrix by matrix
            got = np.asarray(got, np.float64)
            return float(np.max(np.abs(got - want).max(axis=1) / want[:, 0]))

        return _call_sides(fns, compare, tol)

    # the 2x2 closed form: 4 + 4 sums and squares, 2 sqrt, 2, the FMA determinant 6, a
    # division, the power-of-two scaling test about 8 (sqrt and division counted as 1 flop)
    return Case(
        name,
        "svdvals",
        f"{n}x{n} random normal, B={B}",
        "matrices/s",
        B,
        dtype,
        30 if n == 2 else None,
        build,
        targets,
    )


def _svd_vectors_case(name, n, B, dtype, targets=()):
    def build(peers):
        X = np.random.default_rng(0).standard_normal((B, n, n)).astype(dtype)
        fns = {"cpu": lambda: svd(X), "numpy": lambda: svd(X, backend="numpy")}

        def compare(got, want):  # the values, and each side's own X = U diag(S) Vh
            U, S, Vh = (np.asarray(a, np.float64) for a in got)
            s1 = np.asarray(want[1], np.float64)[:, :1]
            rec = np.abs((U * S[:, None, :]) @ Vh - X).max(axis=(1, 2))[:, None]
            return float(np.max(np.maximum(np.abs(S - want[1]), rec) / s1))

        return _call_sides(fns, compare, 1e-12 * n)

    title = f"{n}x{n} random normal, B={B}"
    return Case(name, "svd", title, "matrices/s", B, dtype, None, build, targets, peers=())


def _cp_problem(order, dim, B, n):
    dims = (dim,) * order
    targets, orders = random_cp_tensor(dims, 1, batch=B, seed=0)
    return tensor_completion(targets, observe_first(orders, n, dims)), dims


def _cp_case(name, order, dim, R, B, n, dtype, optimizer, targets=()):
    lr, check_lr, beta, eps, scale = 1e-3, 1e-2, 0.99, 1e-6, 1e-2

    def build(peers):
        problem, dims = _cp_problem(order, dim, B, n)
        start = [
            U.copy()
            for U in CPFactorization.init(problem, rank=R, scale=scale, seed=0, dtype=dtype).factors
        ]
        T, M = problem.targets, problem.masks
        m = peers.module
        impls = {b: _IrCP(problem, start, dtype, b, optimizer, beta, eps) for b in ("cpu", "numpy")}
        impls["torch"] = _peer(
            peers,
            "torch",
            lambda t: m.TorchCP(T, M, start, optimizer, beta, eps, dtype, device="cpu", torch=t),
        )
        impls["jax"] = _peer(
            peers,
            "jax",
            lambda j: m.JaxCP(T, M, start, optimizer, beta, eps, dtype, device="cpu", jax=j),
        )
        return _step_sides(impls, start, lr, check_lr, STEP_RTOL[dtype])

    return Case(
        name,
        "cp_step",
        f"order {order} dim {dim} R={R} B={B} n={n} {optimizer}",
        "problem-steps/s",
        B,
        dtype,
        cp_flops(order, R, n, (dim,) * order, optimizer),
        build,
        targets,
    )


def _dmf_numpy_only(name, kernel, title, B, d, flops, call):
    """A case of a DMF kernel without peers: call(model) on cpu and numpy models."""

    def build(_peers):
        problem = (
            paper_2x2(batch=B)
            if d == 2
            else random_low_rank_completion(d, d, 3, d * d // 2, batch=B, seed=0)
        )
        rng = np.random.default_rng(0)
        start = [0.3 * rng.standard_normal((B, d, d)) for _ in range(3)]
        models = {b: DeepFactorization(problem, start, backend=b) for b in ("cpu", "numpy")}
        return _call_sides({b: lambda f=f: call(f) for b, f in models.items()}, _dict_diff, 1e-8)

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
    return Case(
        name,
        "cp_tensor",
        f"order {order} dim {dim} R={R} B={B}",
        "tensors/s",
        B,
        "float64",
        order * R * dim**order,
        build,
        peers=(),
    )


def _tensor_rank_case(name, B):
    def build(_peers):
        dims = (8, 8, 8)
        T = np.concatenate(
            [random_cp_tensor(dims, 1 + b % 2, batch=1, seed=b)[0] for b in range(B)]
        )
        fns = {"cpu": lambda: tensor_rank(T), "numpy": lambda: tensor_rank(T, backend="numpy")}
        return _call_sides(fns, lambda got, want: float(np.mean(got != want)), 0.0)

    return Case(
        name,
        "tensor_rank",
        f"order 3 8x8x8 CP rank 1-2, B={B}",
        "tensors/s",
        B,
        "float64",
        None,
        build,
        peers=(),
    )


def cases() -> list[Case]:
    """Every case, in table order, with its targets."""
    return [
        _dmf_case(
            "dmf_step-2x2-f64", 2, 4096, "float64", 0.3, 1e-3, 1e-2, (("peak", 50.0), ("jax", 10.0))
        ),
        _dmf_case(
            "dmf_step-2x2-f32", 2, 4096, "float32", 0.3, 1e-3, 1e-2, (("peak", 50.0), ("jax", 10.0))
        ),
        _dmf_case(
            "dmf_step-16x16-f64",
            16,
            1024,
            "float64",
            0.125,
            1e-4,
            1e-3,
            (("torch", 2.0), ("peak", 60.0)),
        ),
        _dmf_case("dmf_step-16x16-f32", 16, 1024, "float32", 0.125, 1e-4, 1e-3),
        # research sizes, the batch sized to about 1 Gflop per step (100x100: 0.77)
        _dmf_case("dmf_step-64x64-f64", 64, 317, "float64", 0.1, 1e-4, 1e-3, (("numpy", 2.0),)),
        _dmf_case(
            "dmf_step-100x100-f64",
            100,
            64,
            "float64",
            0.08,
            1e-4,
            1e-3,
            (("numpy", 2.0), ("peak", 50.0)),
        ),
        _dmf_case("dmf_step-128x128-f64", 128, 40, "float64", 0.07, 1e-4, 1e-3, (("numpy", 2.0),)),
        _dmf_numpy_only(
            "dmf_loss-16x16",
            "dmf_loss",
            "16x16 rank-3 completion, depth 3, B=1024",
            1024,
            16,
            2 * 2 * 16**3 + 3 * 16**2,
            lambda f: f.loss(),
        ),
        _dmf_numpy_only(
            "dmf_measure-2x2",
            "dmf_measure",
            f"paper 2x2, depth 3, B=4096, all {len(ALL_METRICS)} metrics",
            4096,
            2,
            None,
            lambda f: f.measure(ALL_METRICS),
        ),
        _svd_case("svdvals-2x2-f64", 2, 65536, "float64", (("rate", 1e8),)),
        _svd_case("svdvals-2x2-f32", 2, 65536, "float32"),
        _svd_case("svdvals-8x8-f64", 8, 8192, "float64", (("numpy", 12.0),)),
        _svd_case("svdvals-32x32-f64", 32, 1024, "float64", (("numpy", 5.0),)),
        _svd_vectors_case("svd-8x8-f64", 8, 8192, "float64", (("numpy", 5.0),)),
        _svd_vectors_case("svd-32x32-f64", 32, 1024, "float64", (("numpy", 2.0),)),
        _cp_case(
            "cp_step-o3-rmsprop-f64",
            3,
            8,
            64,
            256,
            200,
            "float64",
            "group_rmsprop",
            (("jax", 10.0),),
        ),
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
        raise ValueError(
            f"--only: expected case ids or kernel names from {sorted(known)}, got {bad}"
        )
    return [c for c in all_cases if c.id in names or c.kernel in names]
