"""The fused GD step (csrc/cpu/dmf_step.cpp) against the NumPy reference (reference.py), the
gradient against finite differences, closed forms, and the freezing / divergence semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import implicitreg as ir
from conftest import (
    BACKENDS,
    CONVERGED,
    DIVERGED,
    RUNNING,
    TOL,
    assert_backends_agree,
    explicit_loss,
    explicit_product,
    max_rel_diff,
)

HYP = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- random cases


def build_case(seed, depth, m, n, widths, batch, kind, share, per_problem_lr):
    """A batch of random problems and starting factors, with an lr at which GD is stable.

    Targets have spectral norm ~<= 1 and every factor has spectral norm ~<= 1, so the loss
    curvature is about depth * lambda_max(A^T A) (1 for completion) and lr = 0.2 / that
    keeps GD far from the chaotic regime where rounding differences get amplified.
    share: (first array shared by the batch, second array shared) for targets/masks or A/y.
    """
    rng = np.random.default_rng(seed)
    b1 = 1 if share[0] else batch
    b2 = 1 if share[1] else batch
    bt = max(b1, b2)
    truth = rng.standard_normal((bt, m, n)) / (math.sqrt(m) + math.sqrt(n))
    if kind == "completion":
        masks = rng.random((b2, m, n)) < 0.6
        masks[:, rng.integers(m), rng.integers(n)] = True  # at least one observation
        targets = truth if b1 == bt else truth[:1]
        problem = ir.completion(targets, masks, batch=batch)
        curvature = 1.0
    else:
        K = int(rng.integers(1, 2 * m * n + 1))
        A = rng.standard_normal((b1, K, m, n))
        y = np.einsum("bkij,bij->bk", np.broadcast_to(A, (bt, K, m, n)), truth)[:b2]
        problem = ir.sensing(A, y, batch=batch)
        curvature = max(np.linalg.norm(a.reshape(K, -1), 2) ** 2 for a in A)
    dims = [n, *widths, m]
    factors = [
        rng.standard_normal((batch, dims[j], dims[j - 1]))
        / (math.sqrt(dims[j]) + math.sqrt(dims[j - 1]))
        for j in range(1, depth + 1)
    ]
    base = 0.2 / (depth * curvature)
    lr = base * rng.uniform(0.5, 1.0, size=batch) if per_problem_lr else base
    return problem, factors, lr


@st.composite
def cases(draw, max_steps=200):
    depth = draw(st.integers(1, 5))
    m = draw(st.integers(1, 12))
    n = draw(st.integers(1, 12))
    widths = draw(st.lists(st.integers(1, 12), min_size=depth - 1, max_size=depth - 1))
    batch = draw(st.one_of(st.sampled_from([1, 7, 8, 9, 16, 17]), st.integers(1, 20)))
    kind = draw(st.sampled_from(["completion", "sensing"]))
    share = (draw(st.booleans()), draw(st.booleans()))
    per_problem_lr = draw(st.booleans())
    steps = draw(st.integers(1, max_steps))
    seed = draw(st.integers(0, 2**32 - 1))
    problem, factors, lr = build_case(seed, depth, m, n, widths, batch, kind, share, per_problem_lr)
    return problem, factors, lr, steps


@HYP
@given(case=cases(max_steps=200))
def test_cpu_matches_numpy_float64(case):
    problem, factors, lr, steps = case
    f_cpu, _ = assert_backends_agree(problem, factors, lr, steps, dtype="float64")
    # the comparison is not vacuous: the factors moved far more than the tolerance
    assert max_rel_diff(f_cpu.factors, factors) > 1e3 * TOL[np.dtype("float64")]
    assert (f_cpu.status == RUNNING).all()


@HYP
@given(case=cases(max_steps=100))
def test_cpu_matches_numpy_float32(case):
    problem, factors, lr, steps = case
    f_cpu, _ = assert_backends_agree(problem, factors, lr, steps, dtype="float32")
    assert f_cpu.factors[0].dtype == np.float32
    # not vacuous: the factors moved by far more than float32 rounding (~6e-8)
    assert max_rel_diff(f_cpu.factors, factors) > 1e-5


@pytest.mark.parametrize(
    "dims",
    [
        [5, 12, 1, 7],  # wider then narrower (rank-1 bottleneck) hidden layers
        [12, 2, 2, 2, 2, 3],  # depth 5, narrow
        [1, 9, 1],  # vector problem with a wide hidden layer
        [7, 7, 7, 7],  # square, all widths equal: the compile-time-size kernel
        [9, 9, 9],  # square but between the compile-time sizes
        [16, 16, 16, 16],  # square 16 x 16: compile-time size too
        [4, 6],  # depth 1, rectangular
    ],
)
@pytest.mark.parametrize("kind", ["completion", "sensing"])
@pytest.mark.parametrize("batch", [1, 5, 8, 19])
def test_cpu_matches_numpy_shapes(dims, kind, batch, tol):
    problem, factors, lr = build_case(
        7,
        len(dims) - 1,
        dims[-1],
        dims[0],
        dims[1:-1],
        batch,
        kind,
        (False, batch % 2 == 1),
        batch != 5,
    )
    for dtype in ("float64", "float32"):
        f, _ = assert_backends_agree(problem, factors, lr, 60, dtype=dtype, rtol=tol[dtype])
        assert max_rel_diff(f.factors, factors) > 100 * tol[dtype]


@pytest.mark.parametrize(
    "kind, dims",
    [
        ("completion", [64, 64, 64]),  # ~37k values per problem
        # rows and columns off every tile size; 530 is more than one k block of the packed
        # product at every SIMD width (csrc/kernels/gemm.h)
        ("completion", [30, 530, 27]),
        ("completion", [45, 100, 37, 26]),
        ("sensing", [12, 12, 12, 12]),  # with 250 measurement matrices
    ],
)
def test_large_problems_one_per_pack(kind, dims):
    """Problems whose pack would not fit in L2, or wide enough for the packed product, run one
    per pack: same math, same answers."""
    batch = 3
    rng = np.random.default_rng(0)
    m, n = dims[-1], dims[0]
    if kind == "completion":
        problem = ir.completion(
            rng.standard_normal((batch, m, n)) / 16, rng.random((batch, m, n)) < 0.5
        )
        lr = 0.05
    else:
        A = rng.standard_normal((250, m, n))
        problem = ir.sensing(A, np.einsum("kij,bij->bk", A, rng.standard_normal((batch, m, n)) / 7))
        lr = 0.05 / np.linalg.norm(A.reshape(250, -1), 2) ** 2
    factors = [
        rng.standard_normal((batch, dims[j], dims[j - 1])) / (2 * math.sqrt(dims[j]))
        for j in range(1, len(dims))
    ]
    for dtype in ("float64", "float32"):
        f_cpu, _ = assert_backends_agree(problem, factors, lr, 20, dtype=dtype)
        assert max_rel_diff(f_cpu.factors, factors) > 1e-3
        alone = ir.DeepFactorization(
            _subproblem(problem, [1]), [W[1:2] for W in factors], dtype=dtype
        )
        alone.step(lr, 20)
        for a, b in zip(alone.factors, f_cpu.factors, strict=True):
            np.testing.assert_array_equal(a[0], b[1])


# --------------------------------------------------------------------------- loss, product


@HYP
@given(case=cases(max_steps=1))
def test_loss_and_product_match_definition(case):
    problem, factors, _, _ = case
    E = explicit_product(factors)
    loss = explicit_loss(problem, factors)
    for backend in BACKENDS:
        f = ir.DeepFactorization(problem, factors, backend=backend)
        assert max_rel_diff([f.product()], [E]) <= 1e-13
        np.testing.assert_allclose(f.loss(), loss, rtol=1e-12, atol=1e-14 * max(1, loss.max()))
        f32 = ir.DeepFactorization(problem, factors, backend=backend, dtype="float32")
        assert f32.loss().dtype == np.float32 and f32.product().dtype == np.float32
        np.testing.assert_allclose(f32.loss(), loss, rtol=1e-4, atol=1e-5 * max(1, loss.max()))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_product_and_loss_are_snapshots(backend, depth):
    """product() / loss() return new arrays: later steps do not change them, and writing
    into them does not change the model."""
    f = ir.DeepFactorization.init(
        ir.problems.paper_2x2(2), depth, scale=0.5, seed=1, backend=backend
    )
    E, loss = f.product(), f.loss()
    E0, loss0 = E.copy(), loss.copy()
    assert not any(np.shares_memory(E, W) for W in f.factors)
    f.step(0.1, 5)
    np.testing.assert_array_equal(E, E0)
    np.testing.assert_array_equal(loss, loss0)
    after = f.product().copy()
    f.product()[...] = 123.0
    np.testing.assert_array_equal(f.product(), after)


@pytest.mark.parametrize("lr", [0.05, [0.05], np.array(0.05), np.full(4, 0.05), [0.05] * 4, 1 / 20])
def test_lr_forms_are_equivalent(backend, lr):
    p, f, W0, _ = _freeze_setup(backend)
    ref = _run(p, W0, np.full(FREEZE_B, 0.05), 50, None, backend, idx=range(4))
    g = _run(p, W0, 0.05, 50, None, backend, idx=range(4))
    h = ir.DeepFactorization(_subproblem(p, range(4)), [W[:4] for W in W0], backend=backend)
    h.step(lr, 50)
    for a, b, c in zip(ref.factors, g.factors, h.factors, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_loss_at_zero_on_paper_2x2_is_exactly_one(backend, dtype):
    p = ir.problems.paper_2x2(batch=3)
    for depth in (1, 2, 3, 4):
        f = ir.DeepFactorization(p, [np.zeros((3, 2, 2))] * depth, backend=backend, dtype=dtype)
        assert (f.loss() == 1.0).all()
        assert (f.product() == 0.0).all()
        if depth >= 2:  # the origin is a critical point of every deep factorization
            f.step(0.1, 10)
            assert all((W == 0).all() for W in f.factors)
            assert (f.loss() == 1.0).all()


def test_depth1_closed_form(backend, dtype):
    """Depth 1 is plain least squares on the observed entries: with lr 1/2 each step halves
    the residual, so loss_t = 4^-t and E_t = (1 - 2^-t) * target there, exactly."""
    p = ir.problems.paper_2x2(batch=2)
    f = ir.DeepFactorization(p, [np.zeros((2, 2))], backend=backend, dtype=dtype)
    target = np.array([[0.0, 1.0], [1.0, 0.0]])
    for t in range(1, 8):
        f.step(0.5, 1)
        assert (f.loss() == 0.25**t).all()
        np.testing.assert_array_equal(f.product()[0], (1 - 0.5**t) * target)


# --------------------------------------------------------------------------- gradient


def _fd_gradient(problem, factors, h=1e-6):
    """Central finite differences of the explicit float64 loss, per entry of every factor."""
    grads = []
    for j, W in enumerate(factors):
        g = np.zeros_like(W)
        for idx in np.ndindex(*W.shape):
            plus = [F.copy() for F in factors]
            minus = [F.copy() for F in factors]
            plus[j][idx] += h
            minus[j][idx] -= h
            b = idx[0]
            g[idx] = (explicit_loss(problem, plus)[b] - explicit_loss(problem, minus)[b]) / (2 * h)
        grads.append(g)
    return grads


def _step_gradient(problem, factors, lr, backend):
    """The gradient the kernel used: (W_before - W_after) / lr after one float64 step."""
    f = ir.DeepFactorization(problem, factors, backend=backend)
    f.step(lr, 1)
    return [(W0 - W1) / lr for W0, W1 in zip(factors, f.factors, strict=True)]


def _formula_gradient(problem, factors):
    """dphi/dW_j = (W_N..W_{j+1})^T G (W_{j-1}..W_1)^T (PAPER.md section 1.3)."""
    E = explicit_product(factors)
    if problem.kind == "completion":
        G = np.where(problem.masks, E - problem.targets, 0.0)
    else:
        A = np.broadcast_to(problem.A, (E.shape[0],) + problem.A.shape[1:])
        G = np.einsum("bk,bkij->bij", np.einsum("bkij,bij->bk", A, E) - problem.y, A)
    out = []
    for j in range(len(factors)):
        left = explicit_product(factors[j + 1 :]) if j + 1 < len(factors) else None
        right = explicit_product(factors[:j]) if j > 0 else None
        g = G if left is None else np.swapaxes(left, 1, 2) @ G
        out.append(g if right is None else g @ np.swapaxes(right, 1, 2))
    return out


@pytest.mark.parametrize(
    "kind,dims",
    [
        ("completion", [3, 4]),
        ("completion", [2, 2, 2]),
        ("completion", [4, 1, 5, 3]),
        ("completion", [3, 5, 2, 4, 2]),
        ("sensing", [3, 2]),
        ("sensing", [2, 4, 3]),
        ("sensing", [4, 3, 3, 2, 1, 3]),
    ],
)
def test_gradient_matches_finite_differences(kind, dims, backend):
    batch = 3
    problem, factors, _ = build_case(
        11, len(dims) - 1, dims[-1], dims[0], dims[1:-1], batch, kind, (False, False), False
    )
    factors = [2 * W for W in factors]  # away from the origin: every gradient term matters
    g_step = _step_gradient(problem, factors, 0.1, backend)
    g_fd = _fd_gradient(problem, factors)
    g_formula = _formula_gradient(problem, factors)
    scale = max(np.abs(g).max() for g in g_fd)
    assert scale > 1e-3
    for gs, gf, gc in zip(g_step, g_fd, g_formula, strict=True):
        np.testing.assert_allclose(gs, gf, rtol=0, atol=1e-7 * scale)
        np.testing.assert_allclose(gs, gc, rtol=0, atol=1e-12 * scale)


def test_gradient_at_zero_depth1_is_minus_observed_target(backend):
    p = ir.problems.perturbed_2x2(-2.0, 0.5, 0.25)
    g = _step_gradient(p, [np.zeros((1, 2, 2))], 0.125, backend)[0][0]
    np.testing.assert_array_equal(g, [[0.0, 2.0], [-0.5, -0.25]])


# --------------------------------------------------------------------------- freezing

FREEZE_STEPS, FREEZE_TOL, FREEZE_B = 1200, 1e-8, 11


def _freeze_setup(backend, dtype="float64"):
    """11 rank-1 completions, depth 3; by step 1200 at tol 1e-8 some have converged (at
    different steps) and some still run."""
    p = ir.problems.random_low_rank_completion(5, 4, 1, 12, batch=FREEZE_B, seed=3)
    f = ir.DeepFactorization.init(
        p, 3, init="normal", scale=0.5, seed=1, backend=backend, dtype=dtype
    )
    lr = np.linspace(0.005, 0.03, FREEZE_B)
    return p, f, [W.copy() for W in f.factors], lr


def _subproblem(p, idx):
    idx = list(idx)
    if p.kind == "completion":
        return ir.completion(
            p.targets[idx] if p.targets.shape[0] > 1 else p.targets,
            p.masks[idx] if p.masks.shape[0] > 1 else p.masks,
            batch=len(idx),
        )
    return ir.sensing(
        p.A[idx] if p.A.shape[0] > 1 else p.A, p.y[idx] if p.y.shape[0] > 1 else p.y, batch=len(idx)
    )


def _run(p, factors, lr, steps, tol, backend, idx=None, dtype="float64"):
    idx = list(range(factors[0].shape[0])) if idx is None else list(idx)
    lr = np.broadcast_to(lr, (factors[0].shape[0],))[idx]
    f = ir.DeepFactorization(
        _subproblem(p, idx), [W[idx] for W in factors], backend=backend, dtype=dtype
    )
    f.step(lr, steps, tol)
    return f


@pytest.fixture(scope="module", params=BACKENDS)
def frozen_run(request):
    backend = request.param
    p, f, W0, lr = _freeze_setup(backend)
    f.step(lr, FREEZE_STEPS, FREEZE_TOL)
    conv = f.status == CONVERGED
    assert 2 <= conv.sum() <= FREEZE_B - 2, "the setup must freeze some problems, not all"
    assert (f.status[~conv] == RUNNING).all()
    assert len(set(f.frozen_at[conv])) >= 2
    return backend, p, f, W0, lr


def test_tol_freezes_at_first_step_below_tol(frozen_run):
    backend, p, f, W0, lr = frozen_run
    # step by step, no tol: the loss after every update
    g = ir.DeepFactorization(p, W0, backend=backend)
    t = g.fit(lr, FREEZE_STEPS, log=ir.every(1), metrics=("loss",), progress=False)
    np.testing.assert_array_equal(t.steps, np.arange(FREEZE_STEPS + 1))
    below = t["loss"] < FREEZE_TOL
    first = np.where(below.any(axis=0), below.argmax(axis=0), -1)
    np.testing.assert_array_equal(f.frozen_at, first)
    np.testing.assert_array_equal(f.status == CONVERGED, first >= 0)
    assert (f.loss()[first >= 0] < FREEZE_TOL).all()
    # a converged problem holds the iterate of step frozen_at: the same as frozen_at plain steps
    for b in np.flatnonzero(first >= 0):
        alone = _run(p, W0, lr, int(first[b]), None, backend, [b])
        assert alone.status[0] == RUNNING
        for a, w in zip(alone.factors, f.factors, strict=True):
            np.testing.assert_array_equal(a[0], w[b])


def test_running_problems_are_bit_identical_to_running_alone(frozen_run):
    backend, p, f, W0, lr = frozen_run
    for b in range(FREEZE_B):
        alone = _run(p, W0, lr, FREEZE_STEPS, FREEZE_TOL, backend, [b])
        assert alone.status[0] == f.status[b] and alone.frozen_at[0] == f.frozen_at[b]
        for a, w in zip(alone.factors, f.factors, strict=True):
            np.testing.assert_array_equal(a[0], w[b])


@pytest.mark.parametrize("order", ["reversed", "sub3", "sub9", "sub8_shifted", "tiled"])
def test_results_do_not_depend_on_batch_size_or_position(frozen_run, order):
    backend, p, f, W0, lr = frozen_run
    idx = {
        "reversed": range(FREEZE_B - 1, -1, -1),
        "sub3": [9, 2, 6],
        "sub9": [1, 3, 5, 7, 9, 10, 0, 2, 4],
        "sub8_shifted": range(3, 11),
        "tiled": list(range(FREEZE_B)) * 3,
    }[order]
    g = _run(p, W0, lr, FREEZE_STEPS, FREEZE_TOL, backend, idx)
    idx = list(idx)
    np.testing.assert_array_equal(g.status, f.status[idx])
    np.testing.assert_array_equal(g.frozen_at, f.frozen_at[idx])
    for a, w in zip(g.factors, f.factors, strict=True):
        np.testing.assert_array_equal(a, w[idx])


def test_frozen_problems_never_change(backend):
    p, f, _, lr = _freeze_setup(backend)
    f.step(lr, FREEZE_STEPS, FREEZE_TOL)
    conv = f.status == CONVERGED
    snap = [W.copy() for W in f.factors]
    frozen_at = f.frozen_at
    for tol in (None, 1e-30, FREEZE_TOL):
        f.step(lr, 150, tol)
        assert (f.status[conv] == CONVERGED).all()
        np.testing.assert_array_equal(f.frozen_at[conv], frozen_at[conv])
        for a, w in zip(f.factors, snap, strict=True):
            np.testing.assert_array_equal(a[conv], w[conv])
    # the others went on moving
    assert all(not np.array_equal(a[~conv], w[~conv]) for a, w in zip(f.factors, snap, strict=True))
    assert f.steps_done == FREEZE_STEPS + 450


def test_chunked_calls_equal_one_call(backend):
    p, f, W0, lr = _freeze_setup(backend)
    f.step(lr, FREEZE_STEPS, FREEZE_TOL)
    g = ir.DeepFactorization(p, W0, backend=backend)
    for chunk in (1, 0, 99, 333, 0, 500, 1, 266):
        g.step(lr, chunk, FREEZE_TOL)
    assert g.steps_done == f.steps_done == FREEZE_STEPS
    np.testing.assert_array_equal(g.status, f.status)
    np.testing.assert_array_equal(g.frozen_at, f.frozen_at)
    for a, w in zip(g.factors, f.factors, strict=True):
        np.testing.assert_array_equal(a, w)


def test_backends_agree_on_freezing(dtype):
    p, _, W0, lr = _freeze_setup("cpu", dtype)
    f_cpu, _ = assert_backends_agree(
        p,
        W0,
        lr,
        FREEZE_STEPS,
        tol=FREEZE_TOL,
        dtype=dtype,
        rtol=1e-12 if dtype == "float64" else 1e-4,
    )
    assert (f_cpu.status == CONVERGED).sum() >= 2


# --------------------------------------------------------------------------- divergence


def _diverge_setup():
    p = ir.problems.paper_2x2(batch=6)
    f = ir.DeepFactorization.init(p, 3, init="normal", scale=0.5, seed=4)
    lr = np.array([0.01, 0.02, 60.0, 0.03, 0.01, 0.02])  # problem 2: far too large
    return p, [W.copy() for W in f.factors], lr


@pytest.mark.parametrize("dtype_", ["float64", "float32"])
def test_divergence_freezes_only_the_diverging_problem(backend, dtype_):
    p, W0, lr = _diverge_setup()
    steps = 400
    f = _run(p, W0, lr, steps, None, backend, dtype=dtype_)
    assert f.status[2] == DIVERGED
    t = f.frozen_at[2]
    assert 0 < t < steps
    assert (f.status[[0, 1, 3, 4, 5]] == RUNNING).all()
    assert all(np.isfinite(W).all() for W in f.factors)
    # the diverged problem holds its last finite iterate: the one after frozen_at updates
    alone = _run(p, W0, lr, int(t), None, backend, [2], dtype=dtype_)
    for a, w in zip(alone.factors, f.factors, strict=True):
        np.testing.assert_array_equal(a[0], w[2])
    alone.step(lr[2], 1)  # ... and the next update is not finite
    assert alone.status[0] == DIVERGED and alone.frozen_at[0] == t
    # the others are bit for bit what they would be alone, or with a sane lr for problem 2
    sane = lr.copy()
    sane[2] = 0.01
    g = _run(p, W0, sane, steps, None, backend, dtype=dtype_)
    for b in (0, 1, 3, 4, 5):
        alone = _run(p, W0, lr, steps, None, backend, [b], dtype=dtype_)
        for a, w, s in zip(alone.factors, f.factors, g.factors, strict=True):
            np.testing.assert_array_equal(a[0], w[b])
            np.testing.assert_array_equal(s[b], w[b])


def test_backends_agree_on_divergence(dtype):
    p, W0, lr = _diverge_setup()
    f_cpu, f_np = (_run(p, W0, lr, 400, 1e-6, b, dtype=dtype) for b in BACKENDS)
    np.testing.assert_array_equal(f_cpu.status, f_np.status)
    np.testing.assert_array_equal(f_cpu.frozen_at, f_np.frozen_at)
    assert f_cpu.status[2] == DIVERGED
    # the last finite iterate of the diverged problem, on either backend
    rtol = 1e-9 if dtype == "float64" else 1e-3
    assert max_rel_diff([W[2] for W in f_cpu.factors], [W[2] for W in f_np.factors]) <= rtol


def test_non_finite_loss_with_finite_factors_diverges_at_once(backend, dtype):
    big = 1e200 if dtype == "float64" else 1e30  # the product overflows, the factors do not
    p = ir.problems.paper_2x2(batch=3)
    W = np.stack([np.eye(2), big * np.eye(2), 0.1 * np.eye(2)])
    f = ir.DeepFactorization(p, [W, W], backend=backend, dtype=dtype)
    before = [A.copy() for A in f.factors]
    f.step(0.01, 5)
    assert list(f.status) == [RUNNING, DIVERGED, RUNNING]
    np.testing.assert_array_equal(f.frozen_at, [-1, 0, -1])
    for a, w in zip(f.factors, before, strict=True):
        np.testing.assert_array_equal(a[1], w[1])
    assert not np.isfinite(f.loss()[1])


def test_non_finite_update_with_finite_loss_diverges(backend, dtype):
    """The other way to diverge: the loss is finite but the next iterate overflows; the
    problem keeps the iterate it had (frozen_at counts the updates it has had)."""
    big, huge_lr = (1e150, 1e160) if dtype == "float64" else (1e18, 1e25)
    p = ir.completion(np.array([[[1.0]], [[big]]]), np.ones((1, 1), dtype=bool))
    f = ir.DeepFactorization(p, [np.zeros((2, 1, 1))], backend=backend, dtype=dtype)
    f.step(0.1, 5)
    assert (f.status == RUNNING).all() and np.isfinite(f.loss()).all()
    before = [W.copy() for W in f.factors]
    f.step([0.1, huge_lr], 10)
    assert list(f.status) == [RUNNING, DIVERGED]
    np.testing.assert_array_equal(f.frozen_at, [-1, 5])
    for a, w in zip(f.factors, before, strict=True):
        np.testing.assert_array_equal(a[1], w[1])
    assert np.isfinite(f.loss()[1])
    assert f.steps_done == 15


# --------------------------------------------------------------------------- step(lr, 0)


def test_zero_steps_change_nothing(backend, dtype):
    p, f, _, lr = _freeze_setup(backend, dtype)
    f.step(lr, 10)
    before = [W.copy() for W in f.factors]
    f.step(lr, 0)
    f.step(lr, 0, 1e-30)
    assert f.steps_done == 10
    assert (f.status == RUNNING).all()
    for a, w in zip(f.factors, before, strict=True):
        np.testing.assert_array_equal(a, w)


def test_zero_steps_can_freeze(backend, dtype):
    """A problem already below tol is frozen by step(lr, 0), at the current step count."""
    p = ir.problems.paper_2x2(batch=2)
    solution = np.array([[3.0, 1.0], [1.0, 0.0]])  # loss exactly 0
    W1 = np.stack([np.eye(2), np.eye(2)])
    W2 = np.stack([solution, 0.5 * solution])
    f = ir.DeepFactorization(p, [W1, W2], backend=backend, dtype=dtype)
    f.step(0.01, 10)
    assert (f.status == RUNNING).all()
    np.testing.assert_array_equal(f.factors[1][0], solution)  # zero gradient at a solution
    before = [W.copy() for W in f.factors]
    f.step(0.01, 0, tol=1e-12)
    assert list(f.status) == [CONVERGED, RUNNING]
    np.testing.assert_array_equal(f.frozen_at, [10, -1])
    assert f.steps_done == 10
    for a, w in zip(f.factors, before, strict=True):
        np.testing.assert_array_equal(a, w)


def test_empty_batch_is_a_no_op(backend):
    p = ir.problems.paper_2x2(batch=0)
    f = ir.DeepFactorization.init(p, 3, backend=backend)
    f.step(0.1, 5, 1e-3)
    assert f.factors[0].shape == (0, 2, 2)
    assert f.loss().shape == (0,) and f.status.shape == (0,)


# --------------------------------------------------------------------------- float32


def test_float32_tracks_float64(backend):
    p, f64, W0, lr = _freeze_setup(backend)
    f32 = ir.DeepFactorization(p, W0, backend=backend, dtype="float32")
    f64.step(lr, 300)
    f32.step(lr, 300)
    assert f32.dtype == np.float32 and all(W.dtype == np.float32 for W in f32.factors)
    assert max_rel_diff(f32.factors, f64.factors) < 1e-4
    assert max_rel_diff(f32.factors, W0) > 1e-2


def test_step_cut_into_bounded_calls_is_bit_identical(monkeypatch):
    """step() cuts long runs into calls of bounded work (so Ctrl-C is honoured between them);
    the cut must not change any result, freezing stamps included."""
    from implicitreg import models

    p = ir.problems.paper_2x2(batch=11)
    lr = np.geomspace(1e-4, 0.2, 11)
    whole = ir.DeepFactorization.init(p, depth=3, scale=0.3, seed=4)
    cut = ir.DeepFactorization(p, whole.factors)
    whole.step(lr, 700, tol=1e-3)
    monkeypatch.setitem(models.base.WORK_PER_CALL, "cpu", 1)  # one step per kernel call
    cut.step(lr, 700, tol=1e-3)
    assert (whole.status == cut.status).all() and (whole.frozen_at == cut.frozen_at).all()
    assert "converged" in whole.status and "running" in whole.status
    for a, b in zip(whole.factors, cut.factors, strict=True):
        assert np.array_equal(a, b)
    assert whole.steps_done == cut.steps_done == 700


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_packs_in_registers_match_the_general_loop(dtype, depth):
    """A pack of small problems keeps its iterate in vector registers until a running problem
    is due to freeze, cross a threshold or diverge, and hands that step and the rest of the
    call to the general step loop; problems frozen before the call ride along unchanged. So a
    pack whose first problem freezes at the first step of a single call runs the general loop
    throughout, and the same problems in three calls, or alone, run mostly in registers. All
    give the same bits."""
    from implicitreg.models.crossings import Crossings

    n = 64 // np.dtype(dtype).itemsize - 1  # with one more problem: one full pack
    rng = np.random.default_rng(depth)
    targets = rng.standard_normal((n + 1, 2, 2))
    masks = np.ones((n + 1, 2, 2), bool)
    masks[:, 0, 1] = False
    masks[0] = False  # loss 0: frozen at the first step
    W0 = [0.5 * rng.standard_normal((n + 1, 2, 2)) for _ in range(depth)]
    lr = np.geomspace(1e-3, 0.3, n + 1)
    lr[-1] = 5.0  # diverges
    thresholds = np.array([1e-1, 1e-3])

    def run(idx, calls=3):
        f = ir.DeepFactorization(
            ir.completion(targets[idx], masks[idx]), [W[idx] for W in W0], dtype=dtype
        )
        cross = Crossings(thresholds, len(idx), [2] * (depth + 1), f.dtype)
        for _ in range(calls):
            f.step(lr[idx], 600 // calls, tol=1e-5, crossings=cross)
        return f, cross

    beside, cross_beside = run(np.arange(n + 1), calls=1)
    assert beside.status[0] == CONVERGED and beside.frozen_at[0] == 0
    assert {CONVERGED, DIVERGED, RUNNING} <= set(beside.status[1:]), beside.status
    assert (cross_beside.step[1:] >= 0).any() and (cross_beside.step[1:] < 0).any()
    # the same pack in three calls (from the second on, the frozen problem rides along in
    # registers), each problem alone (its pack's other lanes are padding copies), and the ones
    # that run throughout together
    running = np.flatnonzero(beside.status == RUNNING)
    everyone = np.arange(n + 1)
    for idx in [everyone] + [[b] for b in range(1, n + 1)] + [running]:
        alone, cross_alone = run(np.array(idx))
        np.testing.assert_array_equal(alone.status, beside.status[idx])
        np.testing.assert_array_equal(alone.frozen_at, beside.frozen_at[idx])
        np.testing.assert_array_equal(cross_alone.step, cross_beside.step[idx])
        mine, theirs = alone.factors + cross_alone.factors, beside.factors + cross_beside.factors
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, b[idx])
