"""implicitreg.svdvals (csrc/kernels/svdvals.h, csrc/cpu/svdvals.cpp) against LAPACK and exact
values: random, rank-deficient, graded and zero matrices, the 2x2 closed form at extreme
condition numbers and scales, PAPER.md §2.2's W(x), non-finite input, batch independence,
empty shapes and bad input."""

from __future__ import annotations

import threading
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest

import implicitreg as ir

EPS = {np.dtype(t): np.finfo(t).eps for t in (np.float64, np.float32)}


def _ulps_bound(m: int, n: int) -> float:
    """Allowed max |s - s_lapack| in units of eps * sigma_1 for an m x n matrix.

    A backward-stable SVD returns the exact singular values of X + dX, and by Weyl's
    inequality |s_i - s_i(X)| <= ||dX||_2 <= p(m, n) eps sigma_1. Each entry takes part in
    O(max(m, n)) rounded operations per sweep whose errors add up like a random walk, hence
    8 * sqrt(max(m, n)): the 8 covers the sweeps and the final column norms. Observed over
    10 seeds per size up to 64 x 64: at most 0.8 of this bound (50 ulps at 64 x 64 in
    float32). Beyond that the Jacobi kernel's error grows linearly (see the 256 x 256 test)."""
    return 8.0 * max(m, n) ** 0.5


def _lapack(X) -> np.ndarray:
    """LAPACK's singular values in float64 (float32 data is widened exactly first)."""
    return np.linalg.svd(np.asarray(X, dtype=np.float64), compute_uv=False)


def _err_ulps(s, ref, dtype) -> np.ndarray:
    """max_i |s_i - ref_i| / (eps(dtype) * ref_1), per matrix (0 for the zero matrix)."""
    s = np.asarray(s, dtype=np.float64)
    d = np.abs(s - ref).max(axis=-1)
    s1 = ref[..., 0]
    return np.where(s1 > 0, d / np.where(s1 > 0, s1, 1.0), d) / EPS[np.dtype(dtype)]


def _assert_sorted_nonnegative(s):
    s = np.asarray(s)
    assert (s >= 0).all()
    assert (np.diff(s, axis=-1) <= 0).all()


def _orthogonal(rng, n) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _svdvals_within(X, seconds=60.0, **kw):
    """svdvals in a worker thread (the core releases the GIL): fails instead of hanging."""
    out = {}

    def work():
        try:
            out["r"] = ir.svdvals(X, **kw)
        except BaseException as exc:  # re-raised in the test's thread
            out["e"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"svdvals did not return within {seconds} s"
    if "e" in out:
        raise out["e"]
    return out["r"]


# ------------------------------------------------------------------------------ random matrices

SHAPES = [
    (1, 1),
    (2, 2),
    (3, 3),
    (4, 4),
    (5, 3),
    (3, 7),
    (8, 8),
    (16, 16),
    (32, 32),
    (1, 9),
    (9, 1),
    (1, 40),
    (40, 1),
    (13, 6),
    (6, 13),
    (64, 64),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_random_matrices_match_lapack(shape, dtype):
    m, n = shape
    rng = np.random.default_rng(1000 + 37 * m + n)
    lead = (3, 5) if max(m, n) <= 16 else (2,)
    X = rng.standard_normal(lead + shape).astype(dtype)
    s, info = ir.svdvals(X, return_info=True)
    assert s.shape == lead + (min(m, n),)
    assert s.dtype == np.dtype(dtype)
    assert info.shape == lead and (info == "ok").all()
    _assert_sorted_nonnegative(s)
    err = _err_ulps(s, _lapack(X), dtype)
    assert err.max() <= _ulps_bound(m, n), f"{err.max():.1f} ulps * sigma_1"
    # one matrix alone: shape (k,), the same values as in the batch
    one = ir.svdvals(X[(1,) * len(lead)])
    assert one.shape == (min(m, n),)
    np.testing.assert_array_equal(one, s[(1,) * len(lead)])


def test_one_by_one_and_vectors_are_exact():
    x = np.array([[[-3.5]], [[0.0]], [[2.0**-60]]])
    np.testing.assert_array_equal(ir.svdvals(x)[:, 0], [3.5, 0.0, 2.0**-60])
    v = np.array([3.0, -4.0, 12.0])  # norm exactly 13
    assert ir.svdvals(v[None, :])[0] == 13.0
    assert ir.svdvals(v[:, None])[0] == 13.0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [128, 256])
def test_large_matrices_within_the_sqrt_bound(n, dtype):
    """Up to 256 x 256 the error stays within the same 8 sqrt(max(m, n)) ulps * sigma_1 as the
    small sizes: the rotations are applied as corrections to the old columns (Rutishauser's
    form), whose rounding does not drift the column norms up sweep after sweep, as
    c a_p - s a_q does (by about max(m, n) ulps at 256)."""
    rng = np.random.default_rng(n)
    X = rng.standard_normal((2 if n == 128 else 1, n, n)).astype(dtype)
    s = ir.svdvals(X)
    _assert_sorted_nonnegative(s)
    err = _err_ulps(s, _lapack(X), dtype)
    assert err.max() <= _ulps_bound(n, n), f"{err.max():.1f} ulps * sigma_1"
    # no systematic bias: about as many values above LAPACK's as below
    above = (s.astype(np.float64) > _lapack(X)).mean()
    assert 0.2 < above < 0.8, above


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_transpose_and_layout_do_not_change_the_values(dtype):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((6, 7, 4)).astype(dtype)
    s = ir.svdvals(X)
    # a non-contiguous view gives the values of its contiguous copy
    Xt = np.swapaxes(X, 1, 2)
    assert not Xt.flags.c_contiguous
    np.testing.assert_array_equal(ir.svdvals(Xt), ir.svdvals(np.ascontiguousarray(Xt)))
    # X^T has the same singular values (to rounding: Jacobi runs on the longer side)
    assert _err_ulps(ir.svdvals(Xt), _lapack(X), dtype).max() <= _ulps_bound(7, 4)
    assert _err_ulps(s, _lapack(X), dtype).max() <= _ulps_bound(7, 4)
    # nested lists are accepted
    np.testing.assert_array_equal(ir.svdvals(X[0].tolist()), ir.svdvals(X[0].astype(np.float64)))


# ----------------------------------------------------------------- structured matrices


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "m,n,r", [(6, 6, 2), (9, 5, 3), (4, 10, 1), (2, 2, 1), (3, 3, 2), (16, 16, 5), (7, 3, 0)]
)
def test_rank_deficient_products(m, n, r, dtype):
    rng = np.random.default_rng(m * 100 + n * 10 + r)
    X = (rng.standard_normal((5, m, r)) @ rng.standard_normal((5, r, n))).astype(dtype)
    s = ir.svdvals(X)
    _assert_sorted_nonnegative(s)
    ref = _lapack(X)
    err = _err_ulps(s, ref, dtype)
    assert err.max() <= _ulps_bound(m, n)
    # the trailing k - r values are zero to within the same absolute bound
    tail = s[:, r:].astype(np.float64) / np.where(ref[:, :1] > 0, ref[:, :1], 1.0)
    assert (tail <= _ulps_bound(m, n) * EPS[np.dtype(dtype)]).all()
    if r:
        assert (s[:, r - 1] > 1e-3 * s[:, 0]).all()  # the leading r values are not lost


@pytest.mark.parametrize("m,n", [(2, 2), (8, 8), (10, 6), (6, 10), (13, 13)])
def test_graded_matrices(m, n):
    """U diag(logspace(0, -12)) V^T: every value to within the absolute bound, in order."""
    rng = np.random.default_rng(m + 31 * n)
    k = min(m, n)
    sig = np.logspace(0, -12, k)
    X = np.stack(
        [_orthogonal(rng, m)[:, :k] @ np.diag(sig) @ _orthogonal(rng, n)[:, :k].T for _ in range(4)]
    )
    s = ir.svdvals(X)
    _assert_sorted_nonnegative(s)
    assert _err_ulps(s, _lapack(X), np.float64).max() <= _ulps_bound(m, n)
    # the values of the matrix as built (rounded entries move them by ~eps absolute)
    np.testing.assert_allclose(s, np.broadcast_to(sig, s.shape), rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(2, 2), (3, 3), (5, 3), (1, 4), (3, 7), (20, 20)])
def test_zero_matrices(shape, dtype):
    X = np.zeros((3,) + shape, dtype=dtype)
    s, info = ir.svdvals(X, return_info=True)
    np.testing.assert_array_equal(s, np.zeros((3, min(shape))))
    assert (info == "ok").all()
    # a zero matrix in a batch of non-zero ones stays exactly zero
    Y = np.random.default_rng(0).standard_normal((5,) + shape).astype(dtype)
    Y[2] = 0
    assert (ir.svdvals(Y)[2] == 0).all()


def test_diagonal_matrices_are_exact():
    d = np.array([0.5, 7.0, 2.0**-40, 3.0, 0.0])
    s = ir.svdvals(np.diag(d))
    np.testing.assert_array_equal(s, np.sort(np.abs(d))[::-1])
    np.testing.assert_array_equal(ir.svdvals(-np.diag(d)[:, :3]), [7.0, 0.5, 2.0**-40])


# -------------------------------------------------------------------- the 2x2 closed form


def _exact_2x2(M) -> tuple[Decimal, Decimal]:
    """(sigma_1, sigma_2) of the 2x2 float matrix M to ~50 digits: det exactly by Fraction,
    sigma_1 = (|(a + d, b - c)| + |(a - d, b + c)|) / 2 in 50-digit Decimal arithmetic
    (Decimal(float) is exact; sums of squares do not cancel), sigma_2 = |det| / sigma_1."""
    vals = [float(v) for v in np.asarray(M).ravel()]
    a, b, c, d = (Fraction(v) for v in vals)
    det = a * d - b * c
    with localcontext() as ctx:
        ctx.prec = 50
        A, B, C, D = (Decimal(v) for v in vals)
        s1 = (((A + D) ** 2 + (B - C) ** 2).sqrt() + ((A - D) ** 2 + (B + C) ** 2).sqrt()) / 2
        s2 = abs(Decimal(det.numerator) / Decimal(det.denominator)) / s1 if s1 else Decimal(0)
    return s1, s2


def _rel(x: float, ref: Decimal) -> float:
    with localcontext() as ctx:
        ctx.prec = 50
        return float(abs(Decimal(float(x)) - ref) / ref)


def _ill_conditioned_2x2(rng, ratio: float, count: int) -> np.ndarray:
    """R(theta) diag(1, 1/ratio) R(phi)^T with random angles and signs, rounded to float64."""
    out = []
    for _ in range(count):
        t, p = rng.uniform(0, 2 * np.pi, 2)
        R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        P = np.array([[np.cos(p), -np.sin(p)], [np.sin(p), np.cos(p)]])
        out.append(R @ np.diag([1.0, rng.choice([-1, 1]) / ratio]) @ P.T)
    return np.array(out)


@pytest.mark.parametrize("ratio", [1e2, 1e10, 1e12, 1e14])
def test_2x2_small_value_to_relative_accuracy(ratio):
    """The small singular value comes from |det| / sigma_1 with det by Kahan's FMA algorithm:
    relative error of a few ulps at any sigma_1 / sigma_2 (the difference of the two norms
    would lose everything at 1e14)."""
    X = _ill_conditioned_2x2(np.random.default_rng(int(np.log10(ratio))), ratio, 24)
    s = ir.svdvals(X)
    worst1 = worst2 = 0.0
    for b in range(len(X)):
        s1, s2 = _exact_2x2(X[b])
        assert float(s1 / s2) > 0.5 * ratio  # the rounded matrix is as ill-conditioned
        worst1 = max(worst1, _rel(s[b, 0], s1))
        worst2 = max(worst2, _rel(s[b, 1], s2))
    assert worst2 <= 1e-12
    # tighter: a few ulps (s1: 2 square roots; s2: det within 2 ulps, one division)
    assert worst1 <= 4 * EPS[np.dtype(np.float64)]
    assert worst2 <= 8 * EPS[np.dtype(np.float64)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_2x2_fibonacci_powers_exactly(dtype):
    """Q^k = [[F(k+1), F(k)], [F(k), F(k-1)]] (Q = [[1, 1], [1, 0]]) is symmetric with
    eigenvalues phi^k and (-1/phi)^k: singular values phi^k and phi^-k exactly, with integer
    entries that are exact in floating point (F(k+1) < 2^53, or 2^24 in float32), up to
    sigma_1 / sigma_2 = phi^(2k) ~ 1e32 (1e14 in float32)."""
    ks = range(1, 71) if dtype == "float64" else range(1, 34)
    fib = [0, 1]
    while len(fib) < max(ks) + 2:
        fib.append(fib[-1] + fib[-2])
    X = np.array([[[fib[k + 1], fib[k]], [fib[k], fib[k - 1]]] for k in ks], dtype=dtype)
    s = ir.svdvals(X)
    eps = EPS[np.dtype(dtype)]
    with localcontext() as ctx:
        ctx.prec = 50
        phi = (1 + Decimal(5).sqrt()) / 2
        for i, k in enumerate(ks):
            assert _rel(s[i, 0], phi**k) <= 4 * eps, k
            assert _rel(s[i, 1], phi**-k) <= 8 * eps, k
            if dtype == "float64" and k in (24, 33, 70):  # ratios 1e10, 6e13, 4e29
                assert _rel(s[i, 1], phi**-k) <= 1e-12


@pytest.mark.parametrize("x", [0.0, 0.5, -1.0, 3.0, 10.0, -10.0, 1e3, 1e6, -1e6, 1e8, 1e15])
def test_paper_solutions_w_of_x(x):
    """PAPER.md §2.2 / §7.1: W(x) = [[x, 1], [1, 0]] has sigma_1 = (sqrt(x^2 + 4) + |x|) / 2
    and sigma_2 = 2 / (sqrt(x^2 + 4) + |x|) = 1 / sigma_1."""
    W = np.array([[x, 1.0], [1.0, 0.0]])
    s = ir.svdvals(W)
    r = np.sqrt(x * x + 4)
    np.testing.assert_allclose(s[0], (r + abs(x)) / 2, rtol=1e-14)
    np.testing.assert_allclose(s[1], 2 / (r + abs(x)), rtol=1e-14)
    np.testing.assert_allclose(s[0] * s[1], 1.0, rtol=1e-14)  # |det| = 1
    if abs(x) < 1e7:
        np.testing.assert_allclose(s[0] ** 2 + s[1] ** 2, x * x + 2, rtol=1e-14)
    # and against the exact reference
    s1, s2 = _exact_2x2(W)
    assert _rel(s[0], s1) <= 4 * EPS[np.dtype(np.float64)]
    assert _rel(s[1], s2) <= 1e-15


def test_paper_solutions_as_a_batch():
    xs = np.array([0.0, 0.5, -1.0, 3.0, 10.0, 1e6])
    W = np.zeros((len(xs), 2, 2))
    W[:, 0, 0], W[:, 0, 1], W[:, 1, 0] = xs, 1.0, 1.0
    s = ir.svdvals(W)
    r = np.sqrt(xs**2 + 4)
    np.testing.assert_allclose(s[:, 0], (r + np.abs(xs)) / 2, rtol=1e-14)
    np.testing.assert_allclose(s[:, 1], 2 / (r + np.abs(xs)), rtol=1e-14)
    # §7.1 item 7: sigma_2(W(10)) = 0.09902
    assert abs(s[4, 1] - 0.09902) < 1e-5


M_FIXED = np.array([[0.3, -1.7], [2.9, 0.45]])
M_ILL = _ill_conditioned_2x2(np.random.default_rng(99), 1e9, 1)[0]


@pytest.mark.parametrize("M", [M_FIXED, M_ILL], ids=["well", "ill"])
@pytest.mark.parametrize("k", [-1000, -900, -300, -240, 240, 300, 900, 1000])
def test_2x2_scales_exactly_near_overflow_and_underflow(M, k):
    """s(2^k M) = 2^k s(M) bit for bit (the kernel rescales by powers of two), as long as
    the values stay normal numbers."""
    if k == -1000 and M is M_ILL:
        k = -960  # sigma_2 = 1e-9 * 2^-1000 would be subnormal
    s = ir.svdvals(M)
    sk = ir.svdvals(np.ldexp(M, k))
    np.testing.assert_array_equal(sk, np.ldexp(s, k))


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e250, 1e-250, 1.7e308 / 4])
def test_2x2_entries_near_overflow_and_underflow_exact_reference(scale):
    rng = np.random.default_rng(3)
    X = np.concatenate(
        [(M_FIXED * scale)[None], (M_ILL * scale)[None], _ill_conditioned_2x2(rng, 1e6, 4) * scale]
    )
    if scale < 1:  # keep sigma_2 normal
        X = X[[0, 2, 3, 4, 5]]
    s, info = ir.svdvals(X, return_info=True)
    assert (info == "ok").all() and np.isfinite(s).all()
    for b in range(len(X)):
        s1, s2 = _exact_2x2(X[b])
        assert _rel(s[b, 0], s1) <= 4 * EPS[np.dtype(np.float64)]
        assert _rel(s[b, 1], s2) <= 1e-14


@pytest.mark.parametrize("shape", [(3, 3), (5, 4), (4, 7)])
@pytest.mark.parametrize("k", [-900, -200, 200, 900])
def test_jacobi_scales_exactly(shape, k):
    M = np.random.default_rng(7).standard_normal((2,) + shape)
    np.testing.assert_array_equal(ir.svdvals(np.ldexp(M, k)), np.ldexp(ir.svdvals(M), k))


@pytest.mark.parametrize("k", [-100, -40, 40, 100])
def test_2x2_float32_scales_exactly(k):
    M = M_FIXED.astype(np.float32)
    sk = ir.svdvals(np.ldexp(M, k).astype(np.float32))
    assert sk.dtype == np.float32
    np.testing.assert_array_equal(sk, np.ldexp(ir.svdvals(M), k).astype(np.float32))


# --------------------------------------------------------------------------- non-finite input


def _finite_batch(shape, dtype, count=7, seed=11):
    return np.random.default_rng(seed).standard_normal((count,) + shape).astype(dtype)


POSITIONS = [(0, 0), (0, 1), (1, 0), (1, 1)]
BAD_VALUES = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("value", BAD_VALUES, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("pos", POSITIONS, ids=lambda p: f"at{p[0]}{p[1]}")
@pytest.mark.parametrize("shape", [(2, 2), (5, 5), (3, 6)], ids=["2x2", "5x5", "3x6"])
def test_non_finite_matrix_gets_nan_alone(shape, pos, value, dtype):
    X = _finite_batch(shape, dtype)
    alone = [ir.svdvals(X[b]) for b in range(len(X))]
    X[3][pos] = value
    s = _svdvals_within(X)
    assert np.isnan(s[3]).all()
    for b in range(len(X)):
        if b != 3:
            np.testing.assert_array_equal(s[b], alone[b])  # bit for bit
    # backend="numpy" (LAPACK) marks the same matrix
    assert np.isnan(ir.svdvals(X, backend="numpy")[3]).all()


def _info_case(shape, pos, value):
    return pytest.param(shape, pos, value, id=f"{shape[0]}x{shape[1]}-at{pos[0]}{pos[1]}-{value}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "shape,pos,value",
    [_info_case(s, p, v) for s in [(2, 2), (5, 5)] for p in POSITIONS for v in BAD_VALUES],
)
def test_non_finite_matrix_info(shape, pos, value, dtype):
    X = _finite_batch(shape, dtype)
    X[3][pos] = value
    s, info = _svdvals_within(X, return_info=True)
    assert np.isnan(s[3]).all()
    assert info[3] == "non_finite"
    assert (np.delete(info, 3) == "ok").all()


def test_numpy_backend_info_for_non_finite():
    X = _finite_batch((2, 2), np.float64)
    X[1, 1, 1] = np.nan
    s, info = ir.svdvals(X, backend="numpy", return_info=True)
    assert list(info) == ["ok", "non_finite"] + ["ok"] * 5
    assert np.isnan(s[1]).all() and np.isfinite(np.delete(s, 1, axis=0)).all()


@pytest.mark.parametrize("shape", [(2, 2), (5, 5), (40, 30)])
def test_all_non_finite_batch_returns(shape):
    X = np.full((9,) + shape, np.nan)
    X[4] = np.inf
    s, info = _svdvals_within(X, return_info=True)
    assert np.isnan(s).all()
    assert s.shape == (9, min(shape))
    if shape != (2, 2):
        assert (info == "non_finite").all()


def test_huge_finite_entries_are_not_non_finite():
    """Entries near the largest float are scaled down, not reported as non-finite."""
    M = np.random.default_rng(2).standard_normal((2, 4, 4)) / 8
    big = M * 1e307
    s, info = ir.svdvals(big, return_info=True)
    assert (info == "ok").all()
    np.testing.assert_array_equal(s, ir.svdvals(np.ldexp(big, -600)) * 2.0**600)


# --------------------------------------------------------------------- batch independence


def _mixed_batch(shape, dtype, count=37):
    """Random matrices with a few hard cases mixed in: graded, rank-deficient, zero, tiny,
    huge and non-finite, so that lanes packed together need different numbers of sweeps."""
    rng = np.random.default_rng(count + shape[0] * 7 + shape[1])
    m, n = shape
    X = rng.standard_normal((count, m, n))
    k = min(m, n)
    X[5] = (
        _orthogonal(rng, m)[:, :k] @ np.diag(np.logspace(0, -14, k)) @ _orthogonal(rng, n)[:, :k].T
    )
    X[9] = rng.standard_normal((m, 1)) @ rng.standard_normal((1, n))
    X[12] = 0.0
    X[20] *= 1e-200 if dtype == "float64" else 1e-30
    X[21] *= 1e200 if dtype == "float64" else 1e30
    X[25, 0, 0] = np.nan
    X[30] = np.eye(m, n)
    return X.astype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "shape",
    [(2, 2), (3, 3), (5, 3), (3, 7), (8, 8), (16, 16), (24, 9)],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
def test_values_do_not_depend_on_batch_size_or_position(shape, dtype):
    X = _mixed_batch(shape, dtype)
    s = ir.svdvals(X)
    for b in range(len(X)):
        np.testing.assert_array_equal(ir.svdvals(X[b]), s[b], err_msg=f"matrix {b}")
    np.testing.assert_array_equal(ir.svdvals(X[::-1]), s[::-1])
    np.testing.assert_array_equal(ir.svdvals(X[5:16]), s[5:16])
    perm = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_array_equal(ir.svdvals(X[perm]), s[perm])
    # leading batch dims are only a reshape
    np.testing.assert_array_equal(
        ir.svdvals(X[:36].reshape((4, 9) + shape)), s[:36].reshape(4, 9, -1)
    )


# ------------------------------------------------------------- numpy backend and shapes


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(2, 2), (5, 3), (3, 8)])
def test_numpy_backend_is_lapack(shape, dtype):
    X = np.random.default_rng(4).standard_normal((2, 3) + shape).astype(dtype)
    s, info = ir.svdvals(X, backend="numpy", return_info=True)
    assert s.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(s, np.linalg.svd(X, compute_uv=False))
    assert (info == "ok").all() and info.shape == (2, 3)
    # and the cpu backend agrees with it to the bound
    assert _err_ulps(ir.svdvals(X), _lapack(X), dtype).max() <= _ulps_bound(*shape)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize(
    "shape,expected",
    [((0, 3, 3), (0, 3)), ((0, 2, 2), (0, 2)), ((2, 0, 4, 4), (2, 0, 4)), ((0, 5, 2), (0, 2))],
)
def test_empty_batches(backend, shape, expected):
    s, info = ir.svdvals(np.zeros(shape), backend=backend, return_info=True)
    assert s.shape == expected and s.dtype == np.float64
    assert info.shape == expected[:-1]
    assert ir.svdvals(np.zeros(shape, np.float32), backend=backend).dtype == np.float32


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize(
    "shape,expected",
    [((4, 0, 3), (4, 0)), ((0, 3), (0,)), ((3, 0), (0,)), ((2, 5, 3, 0), (2, 5, 0))],
)
def test_matrices_with_no_rows_or_columns(backend, shape, expected):
    s, info = ir.svdvals(np.zeros(shape), backend=backend, return_info=True)
    assert s.shape == expected
    assert info.shape == shape[:-2] and (info == "ok").all()


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.int8])
def test_integer_input_gives_float64(dtype):
    X = np.random.default_rng(6).integers(0, 100, size=(3, 4, 5)).astype(dtype)
    s = ir.svdvals(X)
    assert s.dtype == np.float64
    np.testing.assert_array_equal(s, ir.svdvals(X.astype(np.float64)))
    assert ir.svdvals(X, backend="numpy").dtype == np.float64


def test_return_info_shapes():
    X = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    s, info = ir.svdvals(X, return_info=True)
    assert s.shape == (2, 3, 4) and info.shape == (2, 3)
    s1, info1 = ir.svdvals(X[0, 0], return_info=True)
    assert s1.shape == (4,) and info1.shape == () and info1 == "ok"
    np.testing.assert_array_equal(ir.svdvals(X), s)


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("X", [np.zeros(3), np.float64(1.0), [1.0, 2.0]], ids=["1d", "0d", "list"])
def test_not_a_matrix_is_refused(X):
    with pytest.raises(ValueError, match=r"^X: expected matrices of shape \(\.\.\., m, n\)"):
        ir.svdvals(X)


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64, np.bool_, np.str_, object])
def test_bad_dtypes_are_refused(dtype):
    X = np.ones((2, 2)).astype(dtype)
    with pytest.raises(TypeError, match=r"^X: expected real numbers"):
        ir.svdvals(X)


@pytest.mark.parametrize("backend", ["gpu", "CPU", "lapack"])
def test_unknown_backend_is_refused(backend):
    with pytest.raises(ValueError, match=r"^backend: expected one of"):
        ir.svdvals(np.eye(3), backend=backend)


def test_no_backend_means_cpu_for_host_arrays():
    X = np.random.default_rng(0).standard_normal((5, 3, 4))
    np.testing.assert_array_equal(ir.svdvals(X, backend=None), ir.svdvals(X, backend="cpu"))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_sweep_cap_is_reported(dtype):
    X = np.random.default_rng(9).standard_normal((16, 8, 8)).astype(dtype)
    s, info = ir.svdvals(X, max_sweeps=2, return_info=True)
    assert (info == "not_converged").all()
    _assert_sorted_nonnegative(s)  # the last iterate, still usable
    with pytest.warns(RuntimeWarning, match="16 matrices did not converge within 2 Jacobi"):
        ir.svdvals(X, max_sweeps=2)
    s, info = ir.svdvals(X, return_info=True)  # the default cap is far above what is needed
    assert (info == "ok").all()
    with pytest.raises(ValueError, match="max_sweeps"):
        ir.svdvals(X, max_sweeps=0)


def _structured(n):
    rng = np.random.default_rng(n)
    return {
        "shift": np.eye(n, k=1),  # zero diagonal after bidiagonalization
        "jordan": np.eye(n) + np.eye(n, k=1),
        "reversal": np.eye(n)[::-1],
        "ones": np.ones((n, n)),
        "hilbert": 1 / (np.arange(n)[:, None] + np.arange(n) + 1),
        "half zero diagonal": np.diag(np.r_[np.zeros(n // 2), np.arange(n - n // 2.0)]),
        "rank 1": np.outer(np.arange(n), np.arange(n) + 1.0),
        "graded rows": np.diag(np.logspace(0, -12, n)) @ rng.standard_normal((n, n)),
    }


@pytest.mark.parametrize("n", [6, 16, 33])  # Jacobi (< 12 columns) and the bidiagonal path
def test_structured_matrices(n):
    for name, X in _structured(n).items():
        s, info = ir.svdvals(X, return_info=True)
        assert info == "ok", name
        err = _err_ulps(s[None], _lapack(X[None]), np.float64)
        assert err.max() <= _ulps_bound(n, n), (name, err.max())


@pytest.mark.parametrize("shape", [(3, 3), (5, 3), (8, 8), (16, 16), (32, 32), (20, 70)])
def test_float32_is_computed_in_float64(shape):
    """Sizes other than 2x2 are reduced in float64 whatever the input: float32 values are
    the exact ones rounded, to within an ulp of sigma_1."""
    X = np.random.default_rng(sum(shape)).standard_normal((8,) + shape).astype(np.float32)
    err = _err_ulps(ir.svdvals(X), _lapack(X), np.float32)
    assert err.max() <= 1.0, err.max()
