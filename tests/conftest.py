"""Shared fixtures and helpers of the implicitreg test suite.

The numpy backend (implicitreg/reference.py) is the oracle: the compiled cpu backend must agree
with it to rounding (TOL below) whenever gradient descent is stable. Test modules import the
helpers below directly (`from conftest import ...`, tests/ is on sys.path under pytest's
default import mode); fixtures parametrize over backends and dtypes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

import implicitreg as ir

# CI replays the same examples on every run (HYPOTHESIS_PROFILE=ci in .ci/run), so a landing
# is never decided by a new random draw; local runs keep exploring.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The source tree around tests/ (README.md, benchmarks/): absent where a copy of tests/ runs
# against an installed wheel.
REPO = Path(__file__).resolve().parents[1]
needs_source_tree = pytest.mark.skipif(
    not (REPO / "benchmarks").is_dir() or not (REPO / "README.md").is_file(),
    reason="needs the source tree (README.md, benchmarks/), which the package does not install",
)

BACKENDS = ("cpu", "numpy")
DTYPES = ("float64", "float32")

# Max-norm relative agreement expected between the cpu and numpy backends after up to a few
# hundred stable GD steps (observed: ~1e-15 in float64; in float32 ~4e-7 with -march=native
# and up to ~3e-5 in a portable SSE2 build, on a factor that GD shrinks to 1e-4 of its start).
TOL = {np.dtype("float64"): 1e-12, np.dtype("float32"): 1e-4}

# Status names (models.STATUS_NAMES / Trajectory): a model's running problem reads
# "running", a trajectory's problem that was still running at the end reads "max_steps".
RUNNING, CONVERGED, DIVERGED = "running", "converged", "diverged"
TRAJ_RUNNING = "max_steps"


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(params=DTYPES)
def dtype(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tol():
    """{dtype: max-norm relative tolerance of cpu vs numpy}."""
    return {k.name: v for k, v in TOL.items()}


def spectra(rng, shape, count):
    """Matrices of `shape` with random, graded (1 to 1e-12), rank-deficient (rank 2) and
    repeated (three 1s, then 1e-3) singular values, `count` of each kind: the spectra that
    stress an SVD."""
    m, n = shape
    k = min(shape)
    kinds = [
        rng.uniform(0.1, 1.0, k),
        np.logspace(0, -12, k),
        np.r_[1.0, 0.5, np.zeros(max(k - 2, 0))],
        np.r_[np.ones(3), np.full(max(k - 3, 0), 1e-3)],
    ]
    out = []
    for s in kinds:
        for _ in range(count):
            U = np.linalg.qr(rng.standard_normal((m, k)))[0]
            V = np.linalg.qr(rng.standard_normal((n, k)))[0]
            out.append((U * s[:k]) @ V.T)
    return np.stack(out)


def check_svd(X, U, S, Vh):
    """The SVD's bounds against LAPACK: ||U^T U - I||, ||V^T V - I|| <= 10 n eps and
    ||U diag(S) Vh - X||, |S - LAPACK's| <= 10 n eps sigma_1 (spectral norms, per matrix)."""
    dtype = X.dtype
    n, k = max(X.shape[-2:]), min(X.shape[-2:])
    eps = np.finfo(dtype).eps
    assert U.dtype == S.dtype == Vh.dtype == dtype
    ref = np.linalg.svd(X.astype(np.float64), compute_uv=False)
    s1 = ref[:, :1]
    U, S, Vh = (a.astype(np.float64) for a in (U, S, Vh))
    eye = np.eye(k)
    assert np.linalg.norm(np.swapaxes(U, 1, 2) @ U - eye, 2, axis=(1, 2)).max() <= 10 * n * eps
    assert np.linalg.norm(Vh @ np.swapaxes(Vh, 1, 2) - eye, 2, axis=(1, 2)).max() <= 10 * n * eps
    rec = np.linalg.norm((U * S[:, None, :]) @ Vh - X, 2, axis=(1, 2))
    assert (rec <= 10 * n * eps * s1[:, 0]).all()
    assert (np.abs(S - ref) <= 10 * n * eps * s1).all()
    assert (np.diff(S, axis=1) <= 0).all()


def max_rel_diff(a_list, b_list) -> float:
    """max_j max|a_j - b_j| / max|b_j| over a list of arrays (0 when both are all zero)."""
    worst = 0.0
    for a, b in zip(a_list, b_list, strict=True):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        assert a.shape == b.shape
        d = np.abs(a - b).max(initial=0.0)
        s = np.abs(b).max(initial=0.0)
        worst = max(worst, d / s if s > 0 else d)
    return worst


def run_backends(problem, factors, lr, steps, tol=None, dtype="float64"):
    """The same start stepped on the cpu and on the numpy backend: (f_cpu, f_numpy)."""
    out = []
    for b in BACKENDS:
        f = ir.DeepFactorization(problem, [np.array(W) for W in factors], backend=b, dtype=dtype)
        f.step(lr, steps, tol)
        out.append(f)
    return tuple(out)


def assert_backends_agree(problem, factors, lr, steps, tol=None, dtype="float64", rtol=None):
    """Run both backends from `factors`; the factors and products must agree to rtol
    (default TOL[dtype]), status / frozen_at exactly. Returns (f_cpu, f_numpy)."""
    f_cpu, f_np = run_backends(problem, factors, lr, steps, tol, dtype)
    rtol = TOL[np.dtype(dtype)] if rtol is None else rtol
    assert f_cpu.dtype == f_np.dtype == np.dtype(dtype)
    err = max_rel_diff(f_cpu.factors, f_np.factors)
    assert err <= rtol, f"factors differ by {err:.3g} (max-norm relative) > {rtol:g}"
    assert max_rel_diff([f_cpu.product()], [f_np.product()]) <= rtol
    np.testing.assert_array_equal(f_cpu.status, f_np.status)
    np.testing.assert_array_equal(f_cpu.frozen_at, f_np.frozen_at)
    assert f_cpu.steps_done == f_np.steps_done == steps
    return f_cpu, f_np


def explicit_product(factors) -> np.ndarray:
    """E = W_N ... W_1 in float64, computed here independently of the package."""
    E = np.asarray(factors[0], dtype=np.float64)
    for W in factors[1:]:
        E = np.asarray(W, dtype=np.float64) @ E
    return E


def explicit_loss(problem, factors) -> np.ndarray:
    """(B,) 1/2 sum of squared residuals in float64, computed here from the definition."""
    E = explicit_product(factors)
    if problem.kind == "completion":
        r = np.where(problem.masks, E - problem.targets, 0.0)
        return 0.5 * (r**2).sum(axis=(1, 2))
    r = (
        np.einsum(
            "bkij,bij->bk", np.broadcast_to(problem.A, (E.shape[0],) + problem.A.shape[1:]), E
        )
        - problem.y
    )
    return 0.5 * (r**2).sum(axis=1)


# The paper's tensor-completion data (../shared/data, outside the repository).
ANCHOR_TC = Path(__file__).resolve().parents[2] / "shared" / "data" / "anchor_tc.npz"


@pytest.fixture(scope="module")
def anchor():
    """The arrays of anchor_tc.npz; the test skips, with the reason, where it is absent."""
    if not ANCHOR_TC.exists():
        pytest.skip(
            f"reference data {ANCHOR_TC} not present (the authors' tensors are kept "
            "outside the repository, in the shared data folder)"
        )
    with np.load(ANCHOR_TC) as z:
        return {k: z[k] for k in z.files}
