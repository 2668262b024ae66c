"""The cuda backend: the fused DMF and CP steps, singular values and metrics on the device, CuPy
in and CuPy out, fit/sweep/reproduce end to end, batches sized to the device's memory.

Every test runs three ways. "simulated" stands a NumPy-backed device array and the CPU core in
for CuPy and _cuda, so that everything above the kernels (state on the device, problem data
copied once, rows read back at log points, device arrays in and out) runs here, where there is
no GPU, and must reproduce the cpu backend bit for bit. "emulated" runs the CUDA kernels
themselves, compiled as C++ with every block's threads as real threads (_cuda_emulated), on
the same device arrays. "cuda" (mark gpu) runs them on a GPU. Both must agree with the cpu
backend to 1e-10 relative in float64 over 1000 steps (1e-4 in float32).
"""

from __future__ import annotations

import importlib
import os
import types

import numpy as np
import pytest

import implicitreg as ir
from conftest import check_svd, max_rel_diff, spectra
from implicitreg import _backend
from implicitreg._backend import _core
from implicitreg.cli import main
from implicitreg.sweep import DEFAULTS


class DeviceArray(np.ndarray):
    """A NumPy array that says it lives on a device, as a CuPy array does."""

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "version": 3,
            "data": (self.ctypes.data, not self.flags.writeable),
            "strides": None if self.flags.c_contiguous else self.strides,
        }

    def get(self) -> np.ndarray:
        return np.array(self)  # a plain host copy


def _on_device(fn):
    return lambda *a, **k: np.asarray(fn(*a, **k)).view(DeviceArray)


SIMULATED_XP = types.SimpleNamespace(
    **{
        name: _on_device(getattr(np, name))
        for name in (
            "asarray",
            "array",
            "empty",
            "zeros",
            "ones",
            "full",
            "ascontiguousarray",
            "where",
            "isnan",
            "isfinite",
            "broadcast_to",
            "maximum",
            "abs",
            "sqrt",
            "mean",
        )
    },
    linalg=types.SimpleNamespace(norm=_on_device(np.linalg.norm)),
    ndarray=DeviceArray,
)


# _cuda has _core's functions, on device arrays.
SIMULATED_CUDA = types.SimpleNamespace(
    **{k: getattr(_core, k) for k in dir(_core) if not k.startswith("_")},
    device_info=lambda: {
        "cuda_device_count": 1,
        "cuda_device_error": "",
        "cuda_devices": [{"name": "simulated", "compute_capability": 90, "total_memory": 2**34}],
    },
)


class Device:
    def __init__(self, name: str, xp, rtol: dict):
        self.name, self.xp, self.rtol = name, xp, rtol

    def put(self, a):
        return self.xp.asarray(a)

    def check(self, got, want, dtype="float64") -> None:
        """got (from cuda) equals want (from cpu): bit for bit when simulated."""
        got = [_backend.to_host(g) for g in got]
        if self.name == "simulated":
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
        else:
            assert max_rel_diff(got, want) <= self.rtol[dtype]


RTOL = {"float64": 1e-10, "float32": 1e-4}


def _emulated_module():
    """_cuda_emulated, or a skip that says how to build it. Where the environment expects it
    (IMPLICITREG_EXPECT_CUDA_EMULATION=1, as CI sets), its absence fails instead: a build that
    silently lost it must not pass by skipping every emulated test."""
    if os.environ.get("IMPLICITREG_EXPECT_CUDA_EMULATION", "") in ("", "0"):
        return pytest.importorskip(
            "implicitreg._cuda_emulated",
            reason="no CUDA emulation module: build with IMPLICITREG_CUDA_EMULATION=ON "
            "(off by default) to run the CUDA kernels on the CPU",
        )
    return importlib.import_module("implicitreg._cuda_emulated")


@pytest.fixture(params=["simulated", "emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def dev(request, monkeypatch) -> Device:
    if request.param == "cuda":
        reason = ir.backends()["cuda"]["reason"]
        if reason is not None:
            pytest.skip(f"no cuda backend here: {reason}")
        import cupy

        return Device("cuda", cupy, RTOL)
    if request.param == "emulated":
        monkeypatch.setattr(_backend, "_cuda", _emulated_module())
    else:
        monkeypatch.setattr(_backend, "_cuda", SIMULATED_CUDA)
    monkeypatch.setattr(_backend, "cuda_reason", lambda: None)
    monkeypatch.setattr(_backend, "_cupy", lambda: SIMULATED_XP)
    monkeypatch.setattr(_backend, "device_memory", lambda: 2**34)  # as the emulated device
    return Device(request.param, SIMULATED_XP, RTOL)


# Shapes that take each CUDA path: one problem per thread (square <= 2 up to depth 6, <= 4 up
# to depth 4), one per
# block in shared memory, one per block in global memory (48x48 depth 3 in float64 is more
# than a block's shared memory), non-square layers, and sensing.
CASES = {
    "2x2-d3": dict(m=2, n=2, depth=3),
    "4x4-d4": dict(m=4, n=4, depth=4),
    "1x1-d2": dict(m=1, n=1, depth=2),
    "2x2-d5": dict(m=2, n=2, depth=5),
    "2x2-d6": dict(m=2, n=2, depth=6),
    "5x5-d3": dict(m=5, n=5, depth=3),
    "3x6-d2-w4": dict(m=3, n=6, depth=2, widths=[4]),
    "5x4-d1": dict(m=5, n=4, depth=1),
    "16x16-d3": dict(m=16, n=16, depth=3),
    "48x48-d3": dict(m=48, n=48, depth=3, batch=3),
    # research scale, the block path with its matrices in global memory; not emulated (each
    # block's 256 threads as host threads: minutes), where 48x48 covers the same path
    "100x100-d3": dict(m=100, n=100, depth=3, batch=3, scale=0.1, emulated=False),
    "sensing-3x3": dict(m=3, n=3, depth=3, sensing=9, lr=(5e-4, 2e-3)),
    "sensing-5x6-block": dict(m=5, n=6, depth=3, sensing=40, lr=(2e-4, 1e-3)),
}
# Steps of the agreement test: 1000 on a device; the emulation runs every block's threads as
# host threads, so it checks fewer steps on fewer problems.
STEPS = {"simulated": 1000, "emulated": 40, "cuda": 1000}


def _problem(case: dict, batch: int, seed: int = 0):
    m, n = case["m"], case["n"]
    if case.get("sensing"):
        return ir.problems.random_sensing(m, n, 1, case["sensing"], batch=batch, seed=seed)
    rng = np.random.default_rng(seed)
    targets = rng.standard_normal((batch, m, n))
    masks = rng.random((batch, m, n)) < 0.6
    return ir.completion(targets, masks)


def _pair(case: dict, dtype: str, scale=0.5, batch=None, backend="cuda"):
    """The same start on cpu and on cuda (or backend)."""
    batch = batch or case.get("batch", 9)
    scale = case.get("scale", scale)
    p = _problem(case, batch)
    cpu = ir.DeepFactorization.init(
        p,
        depth=case["depth"],
        widths=case.get("widths"),
        scale=scale,
        scale_by="factor",
        seed=1,
        dtype=dtype,
    )
    return cpu, ir.DeepFactorization(p, cpu.factors, backend=backend, dtype=dtype)


STEP_TOL = 1e-7  # the agreement test's convergence tolerance


def assert_same_freezing(got, want, dtype: str, tol: float = STEP_TOL) -> None:
    """got and want froze the same problems, with the same status, at the same step.

    The one exception, in float32 only: a problem that converged may freeze one step apart
    when its loss at that step lies within rounding of tol (within 5%). Near tol the residuals
    are differences of nearly equal float32 numbers, so the loss carries a relative error
    (~1e-3) larger than one step's change; float64 has no such exception."""
    got_status, want_status = np.asarray(got.status), np.asarray(want.status)
    assert got_status.tolist() == want_status.tolist()
    got_at, want_at = np.asarray(got.frozen_at), np.asarray(want.frozen_at)
    apart = np.flatnonzero(got_at != want_at)
    if dtype != "float32" or apart.size == 0:
        np.testing.assert_array_equal(got_at, want_at)
        return
    loss = _backend.to_host(want.loss()).astype(np.float64)
    for j in apart:
        assert want_status[j] == "converged" and abs(int(got_at[j]) - int(want_at[j])) == 1, (
            f"problem {j}: {got_status[j]} at {got_at[j]}, want {want_status[j]} at {want_at[j]}"
        )
        assert abs(loss[j] - tol) <= 0.05 * tol, f"problem {j}: loss {loss[j]:.3e} vs tol {tol}"


def _dmf_lr(case: dict, batch: int) -> np.ndarray:
    return np.geomspace(*case.get("lr", (2e-3, 2e-2)), batch)  # stable GD


def _skip_unemulated(dev, case: dict) -> None:
    if dev.name == "emulated" and not case.get("emulated", True):
        pytest.skip("too large for the emulation; the 48x48 case runs the same path there")


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_step_matches_cpu_over_1000_steps(dev, case, dtype):
    _skip_unemulated(dev, CASES[case])
    cpu, gpu = _pair(CASES[case], dtype, batch=3 if dev.name == "emulated" else None)
    lr = _dmf_lr(CASES[case], cpu.batch)
    cpu.step(lr, STEPS[dev.name], tol=STEP_TOL)
    gpu.step(lr, STEPS[dev.name], tol=STEP_TOL)
    assert all(isinstance(W, dev.xp.ndarray) for W in gpu.factors)  # the state stays there
    dev.check(gpu.factors, cpu.factors, dtype)
    assert_same_freezing(gpu, cpu, dtype)


# Each CUDA path with the unfused optimizers: a thread per problem (2x2), a block in shared
# memory (5x5, sensing), a block in global memory (48x48, 100x100).
OPTIMIZER_CASES = ["2x2-d3", "5x5-d3", "sensing-5x6-block", "48x48-d3", "100x100-d3"]
OPTIMIZER_STEPS = {"simulated": 300, "emulated": 12, "cuda": 300}


def _moments(f) -> list:
    return [_backend.to_host(a) for a in (f._m or []) + (f._s or [])]


@pytest.mark.parametrize("optimizer", ["group_rmsprop", "adam"])
@pytest.mark.parametrize("case", OPTIMIZER_CASES)
def test_step_optimizers_match_cpu(dev, case, optimizer, dtype):
    """group_rmsprop and adam: factors, running means, counts and moments as on cpu (300
    steps on a device: adam near a fit is as chaotic as group_rmsprop past ~800)."""
    _skip_unemulated(dev, CASES[case])
    large = CASES[case]["m"] >= 48
    batch = 2 if dev.name == "emulated" else (3 if large else 9)
    cpu, gpu = _pair(CASES[case], dtype, batch=batch)
    lr = 0.1 * _dmf_lr(CASES[case], cpu.batch)
    steps = OPTIMIZER_STEPS[dev.name] // (4 if large else 1)
    for f in (cpu, gpu):
        f.step(lr, steps, tol=STEP_TOL, optimizer=optimizer)
    dev.check(gpu.factors + [gpu._v] + _moments(gpu), cpu.factors + [cpu._v] + _moments(cpu), dtype)
    assert _backend.to_host(gpu._t).tolist() == cpu._t.tolist()
    assert_same_freezing(gpu, cpu, dtype)


@pytest.mark.parametrize("optimizer", ["group_rmsprop", "adam"])
def test_optimizer_divergence_keeps_the_state_like_cpu(dev, optimizer):
    for case in ("2x2-d3", "5x5-d3"):
        cpu, gpu = _pair(CASES[case], "float64", scale=1.0, batch=3)
        lr = np.array([1e-3, 1e150, 2e-3])
        for f in (cpu, gpu):
            f.step(lr, 20 if dev.name == "emulated" else 100, optimizer=optimizer)
        assert cpu.status.tolist() == gpu.status.tolist() == ["running", "diverged", "running"]
        assert (gpu.frozen_at == cpu.frozen_at).all()
        dev.check(gpu.factors + [gpu._v] + _moments(gpu), cpu.factors + [cpu._v] + _moments(cpu))
        assert _backend.to_host(gpu._t).tolist() == cpu._t.tolist()


def test_divergence_and_tolerance_freeze_like_cpu(dev):
    cpu, gpu = _pair(CASES["2x2-d3"], "float64", scale=1.0)
    lr = np.full(cpu.batch, 1e-2)
    lr[::3] = 50.0  # these blow up
    for f in (cpu, gpu):
        f.step(lr, 400, tol=1e-3)
    assert "diverged" in cpu.status
    assert (gpu.status == cpu.status).all() and (gpu.frozen_at == cpu.frozen_at).all()
    dev.check(gpu.factors, cpu.factors)
    assert np.isfinite(np.concatenate([_backend.to_host(W).ravel() for W in gpu.factors])).all()


@pytest.mark.parametrize("case", ["2x2-d3", "5x5-d3"])
def test_fit_logs_metrics_and_crossings_like_cpu(dev, case):
    cpu, gpu = _pair(CASES[case], "float64")
    metrics = (
        "loss",
        "erank",
        "svals",
        "fro",
        "nuc",
        "schatten:0.5",
        "rank",
        "dist_rank:1",
        "balancedness",
        "det",
        "entry:0,1",
    )
    steps = STEPS[dev.name] * 5 if dev.name == "emulated" else 1000
    kw = dict(
        lr=1e-2,
        max_steps=steps,
        log=ir.every(steps // 10),
        metrics=metrics,
        thresholds=(1.0, 0.3, 0.1),
        progress=False,
    )
    t_cpu, t_gpu = cpu.fit(**kw), gpu.fit(**kw)
    assert t_gpu.steps.tolist() == t_cpu.steps.tolist()
    for name in metrics:
        assert isinstance(t_gpu[name], np.ndarray)  # logs come back to the host
        dev.check([t_gpu[name]], [t_cpu[name]])
    np.testing.assert_array_equal(t_gpu.crossings["step"], t_cpu.crossings["step"])
    dev.check([np.nan_to_num(t_gpu.crossings["erank"])], [np.nan_to_num(t_cpu.crossings["erank"])])


def test_product_loss_and_measure_come_from_the_device(dev):
    cpu, gpu = _pair(CASES["3x6-d2-w4"], "float64")
    assert isinstance(gpu.product(), dev.xp.ndarray) and isinstance(gpu.loss(), dev.xp.ndarray)
    dev.check([gpu.product(), gpu.loss()], [cpu.product(), cpu.loss()])
    dev.check([gpu.measure(("loss", "svals"))["svals"]], [cpu.measure(("loss", "svals"))["svals"]])


def test_device_factors_in_and_save_load_round_trip(dev, tmp_path):
    cpu, _ = _pair(CASES["2x2-d3"], "float64")
    gpu = ir.DeepFactorization(cpu.problem, [dev.put(W) for W in cpu.factors], backend="cuda")
    gpu.step(1e-2, 50)
    gpu.save(tmp_path / "m.npz")
    back = ir.DeepFactorization.load(tmp_path / "m.npz")
    assert back.backend == "cuda" and back.steps_done == 50
    dev.check(back.factors, [_backend.to_host(W) for W in gpu.factors])
    on_cpu = ir.DeepFactorization.load(tmp_path / "m.npz", backend="cpu")
    assert all(type(W) is np.ndarray for W in on_cpu.factors)


def test_fit_checkpoint_resumes_on_the_device(dev, tmp_path):
    _, whole = _pair(CASES["2x2-d3"], "float64")
    _, cut = _pair(CASES["2x2-d3"], "float64")
    kw = dict(
        lr=1e-2,
        max_steps=600,
        log=ir.every(100),
        metrics=("loss", "erank"),
        thresholds=(0.5, 0.1),
        progress=False,
    )
    t_whole = whole.fit(**kw)
    path = tmp_path / "fit.ckpt"
    calls = {"n": 0}

    def stop_after_three(_):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cut.fit(**{**kw, "progress": stop_after_three}, checkpoint=path, checkpoint_every=0)
    _, again = _pair(CASES["2x2-d3"], "float64")
    t_again = again.fit(**kw, checkpoint=path, checkpoint_every=0)
    np.testing.assert_array_equal(t_again["loss"], t_whole["loss"])
    np.testing.assert_array_equal(t_again.crossings["step"], t_whole.crossings["step"])


@pytest.mark.parametrize("shape", [(2, 2), (3, 5), (8, 8), (12, 12), (32, 32), (40, 33)])
def test_svdvals_device_in_device_out(dev, shape, dtype):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40,) + shape).astype(dtype)
    X[0] = 0.0
    X[1, 0, 0] = np.nan
    X[2] *= 1e200 if dtype == "float64" else 1e30
    s, info = ir.svdvals(dev.put(X), return_info=True)
    assert isinstance(s, dev.xp.ndarray)
    want, want_info = ir.svdvals(X, backend="cpu", return_info=True)
    assert info.tolist() == want_info.tolist()
    if dev.name == "simulated":
        np.testing.assert_array_equal(_backend.to_host(s), want)
    else:
        ref = np.linalg.svd(X[3:].astype(np.float64), compute_uv=False)
        got = _backend.to_host(s)[3:]
        scale = ref[:, :1]
        eps = {"float64": 1e-13, "float32": 1e-5}[dtype]
        assert (np.abs(got - ref) <= eps * max(shape) * scale).all()
        assert np.isnan(_backend.to_host(s)[1]).all() and (_backend.to_host(s)[0] == 0).all()


@pytest.mark.parametrize("shape", [(9, 9), (17, 5), (5, 17), (24, 24), (32, 32), (31, 32)])
def test_svdvals_hard_spectra_against_lapack(dev, shape, dtype):
    """The sizes of the warp-per-matrix kernel: within 10 n eps sigma_1 of LAPACK on spectra
    that stress a Jacobi solver (graded, rank-deficient, repeated)."""
    X = spectra(np.random.default_rng(11), shape, 3).astype(dtype)
    s, info = ir.svdvals(dev.put(X), return_info=True)
    got = _backend.to_host(s)
    assert (_backend.to_host(info) == "ok").all()
    ref = np.linalg.svd(X.astype(np.float64), compute_uv=False)
    eps = np.finfo(dtype).eps
    assert (np.abs(got - ref) <= 10 * max(shape) * eps * ref[:, :1]).all()
    assert (np.diff(got, axis=1) <= 0).all()  # descending


@pytest.mark.parametrize("shape", [(6, 4), (3, 5), (8, 8), (12, 31), (32, 32), (40, 33)])
def test_svd_device_in_device_out(dev, shape, dtype):
    """The device's factors meet the bounds against LAPACK on hard spectra (repeated and
    graded singular values: U and Vh are not unique, so they are not compared with the cpu
    backend's, except bit for bit when simulated); its values agree with cpu's."""
    X = spectra(np.random.default_rng(4), shape, 2).astype(dtype)
    U, S, Vh, info = ir.svd(dev.put(X), return_info=True)
    assert all(isinstance(a, dev.xp.ndarray) for a in (U, S, Vh))
    U, S, Vh = (_backend.to_host(a) for a in (U, S, Vh))
    check_svd(X, U, S, Vh)
    assert (info == "ok").all()
    want = ir.svd(X, backend="cpu")
    if dev.name == "simulated":
        dev.check([U, S, Vh], list(want))
    else:
        dev.check([S], [want[1]], dtype)


def test_svd_device_zero_and_non_finite(dev):
    X = np.zeros((3, 5, 4))
    X[1, 2, 3] = np.inf
    X[2, :, 1] = 1.0
    U, S, Vh, info = ir.svd(dev.put(X), return_info=True)
    U, S, Vh = (_backend.to_host(a) for a in (U, S, Vh))
    assert list(info) == ["ok", "non_finite", "ok"]
    assert np.isnan(U[1]).all() and np.isnan(S[1]).all() and np.isnan(Vh[1]).all()
    check_svd(X[[0, 2]], U[[0, 2]], S[[0, 2]], Vh[[0, 2]])  # zero columns completed


def test_metrics_on_device_arrays(dev):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((30, 4, 3))
    Xd = dev.put(X)
    for fn, kw in [
        (ir.metrics.effective_rank, {}),
        (ir.metrics.schatten, {"p": 0.5}),
        (ir.metrics.nuclear, {}),
        (ir.metrics.frobenius, {}),
        (ir.metrics.spectral, {}),
        (ir.metrics.rank, {}),
        (ir.metrics.dist_to_rank, {"r": 1}),
    ]:
        got = fn(Xd, **kw)
        assert isinstance(got, dev.xp.ndarray), fn.__name__
        dev.check([got], [fn(X, **kw)])
    W = [rng.standard_normal((5, 3, 3)) for _ in range(3)]
    got = ir.metrics.balancedness([dev.put(w) for w in W])
    assert isinstance(got, dev.xp.ndarray)
    dev.check([got], [ir.metrics.balancedness(W)])


def test_numpy_in_with_backend_cuda_gives_numpy_out(dev):
    X = np.random.default_rng(0).standard_normal((6, 3, 3))
    s = ir.svdvals(X, backend="cuda")
    assert type(s) is np.ndarray
    dev.check([s], [ir.svdvals(X)])
    assert type(ir.metrics.effective_rank(X, backend="cuda")) is np.ndarray


def test_device_array_on_a_host_backend_is_refused(dev):
    with pytest.raises(TypeError, match="backend 'cuda'"):
        ir.svdvals(dev.put(np.eye(2)[None]), backend="cpu")


def test_sweep_and_reproduce_on_cuda(dev, tmp_path):
    base = {
        "problem": "paper_2x2",
        "depth": 3,
        "lr": 5e-2,
        "scale": 0.3,
        "max_steps": 2000,
        "tol": 1e-3,
        "metrics": ("loss", "erank", "entry:0,0"),
        "thresholds": (1e-2,),
    }
    grid = {"depth": [2, 3]}
    on_cpu = ir.sweep(base, grid, seeds=4, backend="cpu")
    on_gpu = ir.sweep(base, grid, seeds=4, backend="cuda")
    for name in ("steps", "loss", "erank", "entry:0,0@1e-2"):
        dev.check([on_gpu.columns[name]], [on_cpu.columns[name]])
    assert (
        main(
            [
                "run",
                "--depths",
                "2",
                "3",
                "--seeds",
                "2",
                "--lrs",
                "6e-3",
                "--scales",
                "1e-3",
                "--max-steps",
                "100000",
                "--backend",
                "cuda",
                "--quiet",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert ir.load_sweep(tmp_path / "run").meta["backend"] == "cuda"


# ---- CP tensor factorization -----------------------------------------------------------------

# (dims, R, optimizer, mask density): orders 2 to 6; fewer components than a warp, several per
# thread (R > 256), and a problem too large for a block's shared memory (its gradient in
# global scratch: 48 * 1024 float64 entries are more than 227 KiB).
CP_CASES = {
    "o2-R5-gd": ((4, 5), 5, "gd", 0.6),
    "o3-R64-rms": ((8, 8, 8), 64, "group_rmsprop", 0.1),
    "o4-R33-gd": ((3, 4, 2, 3), 33, "gd", 0.5),
    "o5-R16-rms": ((2, 3, 2, 2, 3), 16, "group_rmsprop", 0.5),
    "o6-R300-rms": ((2, 2, 2, 2, 2, 2), 300, "group_rmsprop", 0.2),
    "o3-d16-R1024-global": ((16, 16, 16), 1024, "gd", 0.004),
    # tensors too large for the dense path (one unfolding per block): the observed entries
    "o4-sparse-gd": ((16, 16, 16, 2), 8, "gd", 0.02),
    "o4-sparse-rms": ((16, 16, 4, 8), 6, "group_rmsprop", 0.02),
    "o3-R64-adam": ((8, 8, 8), 64, "adam", 0.1),
    "o4-sparse-adam": ((16, 16, 4, 8), 6, "adam", 0.02),
    # the per-entry kernel of orders 5 and 6 (orders 2 and 3 always fit the dense path), one
    # group of threads (R >= 256: no copies of the gradient), and the gradient in global
    # memory (too large for shared memory)
    "o5-sparse-gd": ((6, 6, 6, 6, 6), 3, "gd", 0.02),
    "o6-sparse-rms": ((5, 5, 4, 4, 4, 4), 4, "group_rmsprop", 0.02),
    "o4-sparse-R256-rms": ((16, 16, 3, 8), 256, "group_rmsprop", 0.03),
    "o4-sparse-R600-global": ((16, 16, 16, 2), 600, "gd", 0.01),
}
CP_STEPS = {"simulated": 1000, "emulated": 6, "cuda": 1000}
# group_rmsprop and adam runs stop at 600 steps: past ~800 the RMSprop scale has decayed near
# zero loss, the step grows and the runs turn chaotic (two summation orders part by 1e-4 by
# step 1000).
# test_cp_long_rmsprop_run_parts_no_more_than_the_oracle_does checks such a long run.
CP_RMS_STEPS = 600


def _cp_steps(device: str, case: str) -> int:
    if case.endswith("global"):
        return min(CP_STEPS[device], 2)
    if CP_CASES[case][2] != "gd":
        return min(CP_STEPS[device], CP_RMS_STEPS)
    return CP_STEPS[device]


def _cp_pair(dims, R, dtype, density, batch, scale=0.5, seed=0, backend="cuda"):
    rng = np.random.default_rng(seed)
    targets = rng.standard_normal((batch,) + dims) / np.sqrt(R)
    masks = rng.random((batch,) + dims) < density
    masks.reshape(batch, -1)[:, 0] = True  # every problem observes something
    q = ir.tensor_completion(targets, masks)
    cpu = ir.CPFactorization.init(q, rank=R, scale=scale, seed=1, dtype=dtype)
    return cpu, ir.CPFactorization(q, cpu.factors, backend=backend, dtype=dtype)


@pytest.mark.parametrize("case", list(CP_CASES), ids=list(CP_CASES))
def test_cp_step_matches_cpu(dev, case, dtype):
    dims, R, optimizer, density = CP_CASES[case]
    steps = _cp_steps(dev.name, case)
    cpu, gpu = _cp_pair(dims, R, dtype, density, batch=2 if dev.name == "emulated" else 6)
    lr = np.geomspace(1e-3, 1e-2, cpu.batch)
    for f in (cpu, gpu):
        f.step(lr, steps, optimizer=optimizer)
    assert all(isinstance(U, dev.xp.ndarray) for U in gpu.factors)  # the state stays there
    dev.check(gpu.factors, cpu.factors, dtype)
    dev.check(
        [gpu._step_loss, gpu._v] + _moments(gpu), [cpu._step_loss, cpu._v] + _moments(cpu), dtype
    )
    assert_same_freezing(gpu, cpu, dtype)
    assert _backend.to_host(gpu._t).tolist() == cpu._t.tolist()


def test_cp_long_rmsprop_run_parts_no_more_than_the_oracle_does(dev):
    """1000 group_rmsprop steps, into the chaotic stretch: the device may part from the cpu
    backend by as much as the numpy oracle does (another summation order, measured here),
    times 10, and no more."""
    if dev.name == "emulated":
        pytest.skip("the emulated kernels run 1000 steps of this case too slowly")
    dims, R, optimizer, density = CP_CASES["o5-R16-rms"]
    cpu, gpu = _cp_pair(dims, R, "float64", density, batch=6)
    oracle = ir.CPFactorization(cpu.problem, cpu.factors, backend="numpy")
    lr = np.geomspace(1e-3, 1e-2, cpu.batch)
    for f in (cpu, gpu, oracle):
        f.step(lr, 1000, optimizer=optimizer)
    parted = max_rel_diff(oracle.factors, cpu.factors)
    assert parted > RTOL["float64"]  # still chaotic by then: else this test checks nothing new
    if dev.name == "simulated":
        dev.check(gpu.factors, cpu.factors)
    else:
        got = max_rel_diff([_backend.to_host(U) for U in gpu.factors], cpu.factors)
        assert got <= 10 * parted, f"device parts by {got:.1e}, the oracle by {parted:.1e}"
    assert_same_freezing(gpu, cpu, "float64")


def test_cp_divergence_and_tolerance_freeze_like_cpu(dev):
    cpu, gpu = _cp_pair((3, 3, 3), 8, "float64", 0.5, batch=6, scale=1.0)
    lr = np.full(cpu.batch, 5e-2)
    lr[::3] = 1e6  # these blow up
    steps = 20 if dev.name == "emulated" else 300
    for f in (cpu, gpu):
        f.step(lr, steps, tol=1e-3, optimizer="gd")
    assert "diverged" in cpu.status
    assert (gpu.status == cpu.status).all() and (gpu.frozen_at == cpu.frozen_at).all()
    dev.check(gpu.factors, cpu.factors)
    assert np.isfinite(np.concatenate([_backend.to_host(U).ravel() for U in gpu.factors])).all()
    for f in (cpu, gpu):  # a frozen problem is skipped: nothing changes, not even its loss
        f.step(lr, 5, tol=1e-3, optimizer="gd")
    assert (gpu.status == cpu.status).all()


def test_cp_fit_tensor_measure_and_save_on_the_device(dev, tmp_path):
    cpu, gpu = _cp_pair((3, 4, 3), 6, "float64", 0.5, batch=4)
    steps = 20 if dev.name == "emulated" else 400
    kw = dict(
        lr=1e-2,
        max_steps=steps,
        tol=1e-6,
        patience=1,
        check_every=steps // 4,
        log=ir.every(steps // 4),
        metrics=("loss", "recon_error", "norm", "component_norms"),
        progress=False,
    )
    t_cpu, t_gpu = cpu.fit(**kw), gpu.fit(**kw)
    assert t_gpu.steps.tolist() == t_cpu.steps.tolist()
    for name in kw["metrics"]:
        assert type(t_gpu[name]) is np.ndarray  # logs come back to the host
        dev.check([t_gpu[name]], [t_cpu[name]])
    assert isinstance(gpu.tensor(), dev.xp.ndarray) and gpu.tensor().shape == (4, 3, 4, 3)
    dev.check([gpu.tensor()], [cpu.tensor()])
    gpu.save(tmp_path / "cp.npz")
    back = ir.CPFactorization.load(tmp_path / "cp.npz")
    assert back.backend == "cuda" and back.steps_done == gpu.steps_done
    dev.check(back.factors, [_backend.to_host(U) for U in gpu.factors])


def test_tensor_rank_on_cuda_runs_the_cpu_kernel_with_one_copy_each_way(dev, monkeypatch):
    rng = np.random.default_rng(5)
    T = np.stack(
        [np.einsum("ir,jr,kr->ijk", *rng.standard_normal((3, 4, r))) for r in (1, 2, 3, 1, 2)]
    )
    want = ir.tensor_rank(T, restarts=2)
    copies = []
    to_host = _backend.to_host
    monkeypatch.setattr(_backend, "to_host", lambda x: copies.append(x) or to_host(x))
    got = ir.tensor_rank(dev.put(T), restarts=2)  # backend None: cuda for a device array
    assert isinstance(got, dev.xp.ndarray)
    assert len(copies) == 1  # the whole batch, once
    np.testing.assert_array_equal(_backend.to_host(got), want)
    host = ir.tensor_rank(T, restarts=2, backend="cuda")
    assert type(host) is np.ndarray and host.tolist() == want.tolist()


def test_tensor_completion_sweep_on_cuda_matches_cpu(dev, tmp_path):
    base = {
        "model": "cp",
        "problem": "random_cp_completion",
        "order": 3,
        "dim": 3,
        "target_rank": 1,
        "n_obs": 12,
        "components": 4,
        "lr": 1e-2,
        "scale": 0.3,
        "optimizer": "gd",
        "max_steps": 30 if dev.name == "emulated" else 600,
        "log": "every:10",
        "metrics": ("loss", "recon_error"),
        "rank_restarts": 1,
        "thresholds": (),
    }
    on_cpu = ir.sweep(base, {"lr": [1e-2, 2e-2]}, seeds=2, backend="cpu", progress=False)
    on_gpu = ir.sweep(base, {"lr": [1e-2, 2e-2]}, seeds=2, backend="cuda", progress=False)
    for name in ("steps", "loss", "recon_error"):
        dev.check([on_gpu.columns[name]], [on_cpu.columns[name]])
    assert on_gpu.columns["tensor_rank"].tolist() == on_cpu.columns["tensor_rank"].tolist()


# ---- failures on the device ----------------------------------------------------------------


@pytest.mark.parametrize("model", ["dmf", "cp"])
def test_a_fault_at_the_status_readback_leaves_the_step_count(dev, model):
    """A device fault surfaces at the first sync after a launch, the status readback: the
    model's step count has not moved then, so it still matches its last good state."""
    if dev.name != "simulated":
        pytest.skip("the fault is simulated on the simulated device's status array")

    class Faulty(DeviceArray):
        def __ne__(self, other):
            raise RuntimeError("an illegal memory access was encountered")

    if model == "dmf":
        _, gpu = _pair(CASES["2x2-d3"], "float64")
    else:
        _, gpu = _cp_pair((3, 4, 3), 6, "float64", 0.5, batch=2)
    gpu._status = gpu._status.view(Faulty)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        gpu.step(1e-2, 10)
    assert gpu.steps_done == 0


def test_scratch_refused_for_memory_is_retried_once_after_freeing_cupys_pool(dev, monkeypatch):
    """The kernels' scratch comes from the driver, outside CuPy's pool: a call refused for
    memory frees the pool's unused blocks and runs again, once; refused again, it raises and
    has changed nothing."""
    if dev.name != "emulated":
        pytest.skip("the emulated allocator fails on demand")
    freed = []
    monkeypatch.setattr(_backend, "free_device_pool", lambda: freed.append(True))
    cpu, gpu = _cp_pair((3, 4, 3), 6, "float64", 0.5, batch=2)
    _backend._cuda.fail_allocations(1)
    for f in (cpu, gpu):
        f.step(1e-2, 3)
    assert freed == [True]
    dev.check(gpu.factors, cpu.factors)
    before = [_backend.to_host(U).copy() for U in gpu.factors]
    _backend._cuda.fail_allocations(2)
    try:
        with pytest.raises(RuntimeError, match="^out of device memory"):
            gpu.step(1e-2, 3)
    finally:
        _backend._cuda.fail_allocations(0)
    assert freed == [True, True] and gpu.steps_done == 3
    for U, W in zip(gpu.factors, before, strict=True):
        np.testing.assert_array_equal(_backend.to_host(U), W)


# ---- the device cases are well posed ----------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_dmf_device_cases_are_well_posed(case, dtype):
    """The numpy oracle against the cpu backend, at the device's step count and tolerances:
    two summation orders that part by more than the device tolerance fail here, not on a GPU."""
    cpu, oracle = _pair(CASES[case], dtype, backend="numpy")
    lr = _dmf_lr(CASES[case], cpu.batch)
    for f in (cpu, oracle):
        f.step(lr, STEPS["cuda"], tol=STEP_TOL)
    assert max_rel_diff(oracle.factors, cpu.factors) <= RTOL[dtype]
    assert_same_freezing(oracle, cpu, dtype)


@pytest.mark.parametrize("case", list(CP_CASES), ids=list(CP_CASES))
def test_cp_device_cases_are_well_posed(case, dtype):
    dims, R, optimizer, density = CP_CASES[case]
    cpu, oracle = _cp_pair(dims, R, dtype, density, batch=6, backend="numpy")
    lr = np.geomspace(1e-3, 1e-2, cpu.batch)
    for f in (cpu, oracle):
        f.step(lr, _cp_steps("cuda", case), optimizer=optimizer)
    assert max_rel_diff(oracle.factors, cpu.factors) <= RTOL[dtype]
    assert_same_freezing(oracle, cpu, dtype)


# ---- batches sized to the device's memory ---------------------------------------------------

PLAN = importlib.import_module("implicitreg.sweep.plan")


def _device_need(base: dict) -> int:
    """The device bytes sweep plans for one problem of base."""
    return PLAN.dry_run({**DEFAULTS, **base}, "cuda")[1]


def test_sweep_cuts_batches_to_the_free_device_memory(dev, monkeypatch, tmp_path):
    base = {
        "problem": "paper_2x2",
        "depth": 3,
        "scale": 0.3,
        "max_steps": 300,
        "log": 100,
        "metrics": ("loss", "erank"),
        "thresholds": (1e-2,),
    }
    grid = {"lr": [2e-2, 3e-2, 5e-2]}
    on_cpu = ir.sweep(base, grid, seeds=8, backend="cpu", progress=False)
    per = _device_need(base)
    # room for 5 problems: each config's 8 seeds are cut into 5 + 3
    monkeypatch.setattr(_backend, "device_memory", lambda: int(5.5 * per / 0.8))
    cut = ir.sweep(base, grid, seeds=8, backend="cuda", progress=False, out=tmp_path / "cut")
    assert [t["problems"] for t in cut.meta["timings"]] == [5, 3] * 3
    # room for 16: two configs of 8 seeds per batch
    monkeypatch.setattr(_backend, "device_memory", lambda: int(16.5 * per / 0.8))
    two = ir.sweep(base, grid, seeds=8, backend="cuda", progress=False)
    assert [t["problems"] for t in two.meta["timings"]] == [16, 8]
    for res in (cut, two):  # the same rows, in the same order, with the same values
        for name in ("lr", "seed", "status", "steps"):
            np.testing.assert_array_equal(res.columns[name], on_cpu.columns[name])
        for name in ("loss", "erank", "erank@1e-2"):
            dev.check([res.columns[name]], [on_cpu.columns[name]])
    # resumed with more memory, the directory keeps the batches it was started with
    monkeypatch.setattr(_backend, "device_memory", lambda: 2**34)
    again = ir.sweep(
        base, grid, seeds=8, backend="cuda", progress=False, out=tmp_path / "cut", resume=True
    )
    assert len(again.trajectories) == 6
    np.testing.assert_array_equal(again.columns["loss"], cut.columns["loss"])


def test_cp_sweep_cut_by_seeds_matches_one_batch(dev, monkeypatch):
    base = {
        "model": "cp",
        "problem": "random_cp_completion",
        "order": 3,
        "dim": 3,
        "target_rank": 1,
        "n_obs": 12,
        "components": 4,
        "lr": 1e-2,
        "scale": 0.3,
        "max_steps": 20,
        "log": 10,
        "metrics": ("loss",),
        "thresholds": (),
    }
    whole = ir.sweep(base, seeds=5, backend="cuda", progress=False)
    monkeypatch.setattr(_backend, "device_memory", lambda: int(2.5 * _device_need(base) / 0.8))
    cut = ir.sweep(base, seeds=5, backend="cuda", progress=False)
    assert [t["problems"] for t in cut.meta["timings"]] == [2, 2, 1]
    assert cut.columns["seed"].tolist() == list(range(5))
    dev.check([cut.columns["loss"]], [whole.columns["loss"]])


def test_a_problem_too_large_for_the_device_is_refused_naming_what_fits(dev, monkeypatch):
    base = {"problem": "paper_2x2", "max_steps": 10}
    monkeypatch.setattr(_backend, "device_memory", lambda: 100)
    with pytest.raises(ValueError, match="^seeds: one problem .* largest batch that fits is 0"):
        ir.sweep(base, seeds=4, backend="cuda", progress=False)
    # a model larger than the device is refused before anything is allocated there
    monkeypatch.setattr(_backend, "device_memory", lambda: 2**26)
    p = ir.problems.paper_2x2(batch=10**6)
    # three 2x2 float64 factors, status, frozen_at and the optimizers' running mean and count
    fits = 2**26 // (3 * 4 * 8 + 9 + 16)
    with pytest.raises(
        ValueError,
        match=r"^factors: .* free on the device; the largest batch "
        f"that fits is {fits} problems",
    ):
        ir.DeepFactorization(p, [np.eye(2)] * 3, backend="cuda")


@pytest.mark.parametrize(
    "name,column", [("paper-2x2", "entry:0,0@1e-2"), ("tensor-completion", "recon_error")]
)
def test_reproduce_on_cuda_matches_cpu(dev, tmp_path, name, column):
    if dev.name == "emulated":
        pytest.skip(
            "the emulated kernels run this many steps too slowly; the kernels are "
            "checked against the cpu backend above"
        )
    res = {}
    for backend in ("cuda", "cpu"):
        out = tmp_path / backend
        assert (
            main(
                [
                    "reproduce",
                    name,
                    "--quick",
                    "--seeds",
                    "2",
                    "--backend",
                    backend,
                    "--no-plot",
                    "--quiet",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        res[backend] = ir.load_sweep(out)
    assert res["cuda"].meta["backend"] == "cuda" and len(res["cuda"].columns["seed"]) > 0
    dev.check([res["cuda"].columns[column]], [res["cpu"].columns[column]])


@pytest.mark.gpu
def test_reproduce_paper_2x2_on_a_gpu(tmp_path):
    reason = ir.backends()["cuda"]["reason"]
    if reason is not None:
        pytest.skip(f"no cuda backend here: {reason}")
    assert (
        main(
            [
                "reproduce",
                "paper-2x2",
                "--quick",
                "--backend",
                "cuda",
                "--no-plot",
                "--out",
                str(tmp_path / "rep"),
            ]
        )
        == 0
    )
    res = ir.load_sweep(tmp_path / "rep")
    # PAPER.md §3.1: balanced depth 3 at loss 1e-4 sits near 1/sqrt(2 * 1e-4) = 70.7
    w = np.abs(res.columns["entry:0,0@1e-4"][res.rows(depth=3, init="balanced")])
    assert np.nanmedian(w) == pytest.approx(70.7, rel=0.03)


@pytest.mark.gpu
def test_reproduce_tensor_completion_on_a_gpu_agrees_with_the_cpu(tmp_path):
    reason = ir.backends()["cuda"]["reason"]
    if reason is not None:
        pytest.skip(f"no cuda backend here: {reason}")
    runs = {}
    for backend in ("cuda", "cpu"):
        out = tmp_path / backend
        assert (
            main(
                [
                    "reproduce",
                    "tensor-completion",
                    "--quick",
                    "--seeds",
                    "64",
                    "--backend",
                    backend,
                    "--no-plot",
                    "--quiet",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        runs[backend] = ir.load_sweep(out)
    gpu, cpu = runs["cuda"], runs["cpu"]
    np.testing.assert_array_equal(gpu.columns["seed"], cpu.columns["seed"])
    configs = zip(cpu.columns["n_obs"], cpu.columns["target_rank"], strict=True)
    for n_obs, rank in sorted(set(configs)):
        rows = cpu.rows(n_obs=n_obs, target_rank=rank)
        # the same problems from the same starts: per config, the median error and the share
        # of solutions of the target's rank agree (single runs may part ways over many steps)
        g, c = gpu.columns["recon_error"][rows], cpu.columns["recon_error"][rows]
        assert np.median(g) == pytest.approx(np.median(c), rel=0.05, abs=1e-3)
        share = [np.mean(r.columns["tensor_rank"][rows] == rank) for r in (gpu, cpu)]
        assert abs(share[0] - share[1]) <= 0.1
