"""implicitreg.metrics (PAPER.md §5): norms, effective and numerical rank, distance to rank r
and balancedness, against NumPy's SVD and norms, the closed forms of §2.2 / §7.1, algebraic
facts (§2.4), and as fit() metrics on both backends."""

from __future__ import annotations

import re
from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import implicitreg as ir
from implicitreg import metrics as M

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------- NumPy references


def np_svals(X) -> np.ndarray:
    return np.linalg.svd(np.asarray(X, dtype=np.float64), compute_uv=False)


def np_erank(s) -> np.ndarray:
    """exp(-sum p_i ln p_i), p_i = s_i / sum s over the non-zero s_i; 0 for s = 0."""
    s = np.asarray(s, dtype=np.float64)
    total = s.sum(axis=-1, keepdims=True)
    p = s / np.where(total > 0, total, 1.0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.where(total[..., 0] > 0, np.exp(-plogp.sum(axis=-1)), 0.0)


def np_dist_to_rank(X, r) -> np.ndarray:
    """||X - X_r||_F with X_r the truncated SVD of rank r (Eckart-Young's minimiser)."""
    X = np.asarray(X, dtype=np.float64)
    U, S, Vt = np.linalg.svd(X, full_matrices=False)
    Xr = (U[..., :, :r] * S[..., None, :r]) @ Vt[..., :r, :]
    return np.linalg.norm(X - Xr, "fro", axis=(-2, -1))


def np_balancedness(factors) -> np.ndarray:
    """max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F, in float64, per problem."""
    W = [np.asarray(f, dtype=np.float64) for f in factors]
    out = np.zeros(W[0].shape[0])
    for a, b in zip(W[:-1], W[1:], strict=False):
        D = np.swapaxes(b, 1, 2) @ b - a @ np.swapaxes(a, 1, 2)
        out = np.maximum(out, np.linalg.norm(D, "fro", axis=(1, 2)))
    return out


def w_of_x(xs) -> np.ndarray:
    """PAPER.md §2.1: the solutions W(x) = [[x, 1], [1, 0]] of the canonical problem."""
    xs = np.atleast_1d(np.asarray(xs, dtype=np.float64))
    W = np.zeros(xs.shape + (2, 2))
    W[..., 0, 0], W[..., 0, 1], W[..., 1, 0] = xs, 1.0, 1.0
    return W


def w_svals(xs) -> tuple[np.ndarray, np.ndarray]:
    """§2.2: sigma_1 = (sqrt(x^2 + 4) + |x|) / 2, sigma_2 = 2 / (sqrt(x^2 + 4) + |x|)."""
    xs = np.asarray(xs, dtype=np.float64)
    r = np.sqrt(xs * xs + 4) + np.abs(xs)
    return r / 2, 2 / r


# name, metric (called with X= or svals=), reference from (X, LAPACK singular values)
METRICS = [
    ("fro", M.frobenius, lambda X, s: np.linalg.norm(X, "fro", axis=(-2, -1))),
    ("nuc", M.nuclear, lambda X, s: np.linalg.norm(X, "nuc", axis=(-2, -1))),
    ("spectral", M.spectral, lambda X, s: np.linalg.norm(X, 2, axis=(-2, -1))),
    *[
        (f"schatten{p}", partial(M.schatten, p=p), lambda X, s, p=p: (s**p).sum(-1) ** (1 / p))
        for p in (0.25, 0.5, 1, 1.5, 2, 3, 10)
    ],
    ("erank", M.effective_rank, lambda X, s: np_erank(s)),
    *[
        (f"dist{r}", partial(M.dist_to_rank, r=r), lambda X, s, r=r: np_dist_to_rank(X, r))
        for r in (0, 1, 2, 3, 7)
    ],
]


def _random(shape, lead=(3, 4), seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(lead + shape).astype(dtype)


# ------------------------------------------------------------------ against NumPy


@pytest.mark.parametrize(
    "shape", [(2, 2), (4, 4), (5, 3), (3, 6), (1, 5), (9, 9)], ids=lambda s: f"{s[0]}x{s[1]}"
)
@pytest.mark.parametrize("name,metric,ref", METRICS, ids=[c[0] for c in METRICS])
def test_metric_matches_numpy(name, metric, ref, shape):
    X = _random(shape, seed=shape[0] * 10 + shape[1])
    s = np_svals(X)
    expected = ref(X, s)
    # absolute slack for the metrics of the small singular values, which LAPACK (and the
    # Jacobi kernel) give to within a few ulps of sigma_1 only
    atol = 1e-12 * s[..., :1].max() if name.startswith("dist") else 0.0
    got = metric(X=X)
    assert got.shape == X.shape[:-2] and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=atol)
    got_np = metric(X=X, backend="numpy")
    np.testing.assert_allclose(got_np, expected, rtol=1e-12, atol=atol)
    # svals= gives the same values as X= (the same formula on LAPACK's singular values)
    from_s = metric(svals=s)
    assert from_s.shape == X.shape[:-2]
    np.testing.assert_allclose(from_s, got, rtol=1e-12, atol=atol)
    np.testing.assert_allclose(from_s, metric(svals=s, backend="numpy"), rtol=1e-13, atol=atol)
    # one matrix alone: a 0-d result
    one = metric(X=X[1, 2])
    assert np.ndim(one) == 0
    assert one == got[1, 2]


@pytest.mark.parametrize("name,metric,ref", METRICS[:4], ids=[c[0] for c in METRICS[:4]])
def test_float32_matrices(name, metric, ref):
    X = _random((6, 4), seed=3, dtype=np.float32)
    got = metric(X=X)
    assert got.dtype == np.float64
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(got, ref(X64, np_svals(X64)), rtol=30 * EPS32)
    # float32 singular values given directly
    np.testing.assert_allclose(metric(svals=ir.svdvals(X)), got, rtol=1e-15)


def test_frobenius_equals_entrywise_norm():
    X = _random((7, 5), seed=8)
    np.testing.assert_allclose(M.frobenius(X), np.sqrt((X**2).sum(axis=(-2, -1))), rtol=1e-14)


# ---------------------------------------------------------------- PAPER.md closed forms


def test_effective_rank_closed_forms():
    """§7.1 item 6."""
    assert abs(M.effective_rank(np.diag([1.0, 1.0])) - 2.0) <= 2 * EPS64
    assert M.effective_rank(np.diag([1.0, 0.0])) == 1.0
    e = M.effective_rank(np.diag([3.0, 1.0]))
    assert abs(e - 1.7548) < 1e-4
    exact = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert abs(e - exact) <= 1e-14 * exact
    assert abs(M.effective_rank(svals=[3.0, 1.0]) - exact) <= 1e-14 * exact
    # k equal non-zero values: erank = k, whatever zeros follow
    assert abs(M.effective_rank(svals=[2.0, 2.0, 2.0, 0.0, 0.0]) - 3.0) <= 4 * EPS64


def test_norms_of_w_at_ten():
    """§7.1 item 7: W(10)."""
    W = w_of_x(10.0)[0]
    fro, nuc, spec = M.frobenius(W), M.nuclear(W), M.spectral(W)
    assert abs(fro - 10.0995) < 1e-4 and abs(fro - np.sqrt(102)) <= 1e-14 * fro
    assert abs(nuc - 10.1980) < 1e-4 and abs(nuc - np.sqrt(104)) <= 1e-14 * nuc
    assert abs(spec - 10.0990) < 1e-4 and abs(spec - (np.sqrt(104) + 10) / 2) <= 1e-14 * spec
    s2 = M.dist_to_rank(W, 1)  # D(W, M_1) = sigma_2 for a 2x2 matrix
    assert abs(s2 - 0.09902) < 1e-5 and abs(s2 - 2 / (np.sqrt(104) + 10)) <= 1e-14 * s2
    e = M.effective_rank(W)
    s1, s2x = w_svals(10.0)
    p1, p2 = s1 / (s1 + s2x), s2x / (s1 + s2x)
    assert abs(e - 1.0562) < 1e-4
    assert abs(e - np.exp(-(p1 * np.log(p1) + p2 * np.log(p2)))) <= 1e-14 * e
    assert M.rank(W) == 2


XS = np.arange(-80, 81) / 20  # -4 ... 4 in steps of 0.05, with x = 0 exactly at index 80


@pytest.mark.parametrize("p", [0.25, 0.5, 1.0, 2.0])
def test_schatten_minimised_at_zero_over_the_solutions(p):
    """§2.2 / §7.1 item 7: over S, Schatten-p is minimised at x = 0 with value 2^(1/p)
    (AM-GM, since sigma_1 sigma_2 = 1), and grows with |x|."""
    v = M.schatten(w_of_x(XS), p)
    assert v.shape == XS.shape
    assert int(np.argmin(v)) == 80
    assert abs(v[80] - 2 ** (1 / p)) <= 1e-14 * v[80]
    s1, s2 = w_svals(XS)
    np.testing.assert_allclose(v, (s1**p + s2**p) ** (1 / p), rtol=1e-13)
    assert (np.diff(v[80:]) > 0).all() and (np.diff(v[:81]) < 0).all()
    np.testing.assert_allclose(v, v[::-1], rtol=1e-14)  # even in x


def test_norms_minimised_at_zero_over_the_solutions():
    W = w_of_x(XS)
    for metric, minimum in ((M.frobenius, np.sqrt(2)), (M.nuclear, 2.0), (M.spectral, 1.0)):
        v = metric(W)
        assert int(np.argmin(v)) == 80
        assert abs(v[80] - minimum) <= 2e-16 * minimum * 4
        assert (np.diff(v[80:]) > 0).all()
    np.testing.assert_allclose(M.frobenius(W), np.sqrt(XS**2 + 2), rtol=1e-14)
    np.testing.assert_allclose(M.nuclear(W), np.sqrt(XS**2 + 4), rtol=1e-14)


def test_every_norm_of_w_is_at_least_abs_x():
    """§2.4: every Schatten (quasi-)norm is >= sigma_1 >= |w11| = |x|."""
    xs = np.r_[XS, -1e3, 1e3, 1e6, -1e6, 1e9, 1e15]
    W = w_of_x(xs)
    values = [M.frobenius(W), M.nuclear(W), M.spectral(W)]
    values += [M.schatten(W, p) for p in (0.25, 0.5, 1, 2, 4, 100)]
    for v in values:
        assert (v >= np.abs(xs)).all()
    # and the spectral norm is sigma_1 of §2.2
    np.testing.assert_allclose(values[2], w_svals(xs)[0], rtol=1e-15)


def test_rank_view_of_the_solutions():
    """§2.2: rank 2 everywhere, but D(W(x), M_1) = sigma_2 -> 0 and erank -> 1 as |x| grows."""
    xs = np.array([0.0, 1.0, 10.0, 1e3, 1e6])
    W = w_of_x(xs)
    np.testing.assert_array_equal(M.rank(W), 2)
    d = M.dist_to_rank(W, 1)
    np.testing.assert_allclose(d, w_svals(xs)[1], rtol=1e-14)
    assert (np.diff(d) < 0).all()
    e = M.effective_rank(W)
    assert e[0] == pytest.approx(2.0, abs=1e-15)
    assert (np.diff(e) < 0).all() and (e > 1).all()
    s1, s2 = w_svals(xs)
    np.testing.assert_allclose(e, np_erank(np.stack([s1, s2], axis=-1)), rtol=1e-14)
    assert e[-1] - 1 < 1e-10


# --------------------------------------------------------------------- Schatten family


def test_schatten_one_and_two_are_nuclear_and_frobenius():
    X = _random((5, 4), seed=2)
    np.testing.assert_allclose(M.schatten(X, 1), M.nuclear(X), rtol=1e-14)
    np.testing.assert_allclose(M.schatten(X, 2), M.frobenius(X), rtol=1e-14)
    np.testing.assert_allclose(M.schatten(X, 1.0, backend="numpy"), M.nuclear(X), rtol=1e-14)


def test_schatten_approaches_spectral_for_large_p():
    X = _random((6, 6), seed=4)
    spec = M.spectral(X)
    k = 6
    prev = None
    for p in (1, 2, 10, 50, 200, 1000, 1e5):
        v = M.schatten(X, p)
        assert (v >= spec * (1 - 1e-15)).all()
        assert (v <= spec * k ** (1 / p) * (1 + 1e-14)).all()
        if prev is not None:
            assert (v <= prev * (1 + 1e-14)).all()  # non-increasing in p
        prev = v
    np.testing.assert_allclose(M.schatten(X, 1e5), spec, rtol=2e-5)


def test_schatten_quasi_norms():
    rng = np.random.default_rng(9)
    A, B = rng.standard_normal((2, 20, 4, 3))
    for p in (0.1, 0.25, 0.5, 0.9):
        sa = M.schatten(A, p)
        np.testing.assert_allclose(sa, (np_svals(A) ** p).sum(-1) ** (1 / p), rtol=1e-12)
        assert (sa >= M.nuclear(A) * (1 - 1e-14)).all()  # S_p >= S_1 for p < 1
        # Rotfel'd: ||A + B||_p^p <= ||A||_p^p + ||B||_p^p for 0 < p <= 1
        lhs = M.schatten(A + B, p) ** p
        assert (lhs <= (sa**p + M.schatten(B, p) ** p) * (1 + 1e-12)).all()
        # absolutely homogeneous
        np.testing.assert_allclose(M.schatten(-3.5 * A, p), 3.5 * sa, rtol=1e-13)
    # a zero singular value adds nothing, for any p
    assert M.schatten(svals=[4.0, 0.0], p=0.3) == pytest.approx(4.0, rel=1e-15)


def test_sums_of_powers_do_not_overflow_or_underflow():
    """The core scales by the largest term: values far outside sqrt(float64 range)."""
    huge = np.array([1e200, 1e200, 1e199])
    assert M.frobenius(svals=huge) == pytest.approx(1e200 * np.sqrt(2.01), rel=1e-15)
    assert M.schatten(svals=huge, p=3) == pytest.approx(1e200 * 2.001 ** (1 / 3), rel=1e-15)
    assert M.dist_to_rank(svals=huge, r=1) == pytest.approx(1e200 * np.sqrt(1.01), rel=1e-15)
    assert M.schatten(svals=[1e3, 5e2], p=200) == pytest.approx(1e3, rel=1e-15)
    assert M.frobenius(svals=[1e-200, 1e-201]) == pytest.approx(1e-200 * np.sqrt(1.01), rel=1e-15)
    assert M.frobenius(np.diag([1e200, 1e200, 1.0])) == pytest.approx(np.sqrt(2) * 1e200, rel=1e-15)


def test_numpy_backend_sums_of_powers_do_not_overflow_or_underflow():
    huge = np.array([1e200, 1e200, 1e199])
    for metric in (M.frobenius, partial(M.schatten, p=3), partial(M.dist_to_rank, r=1)):
        np.testing.assert_allclose(
            metric(svals=huge, backend="numpy"), metric(svals=huge), rtol=1e-14
        )
    np.testing.assert_allclose(
        M.frobenius(svals=[1e-200, 1e-201], backend="numpy"),
        M.frobenius(svals=[1e-200, 1e-201]),
        rtol=1e-14,
    )


# ------------------------------------------------------------------------------------ rank


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4), (2, 2)])
def test_rank_default_tolerance(shape, dtype):
    """tol = sigma_1 * max(m, n) * eps(dtype): a last value of 0.8 tol is dropped, 1.25 tol
    counted; for 5 x 3 that separates max(m, n) = 5 from min(m, n) = 3."""
    m, n = shape
    k = min(m, n)
    eps = np.finfo(dtype).eps
    sigma1 = 4.0
    tol = sigma1 * max(m, n) * eps
    X = np.zeros((4, m, n), dtype=dtype)
    for b, last in enumerate([0.8 * tol, 1.25 * tol, 0.0, 1.0]):
        d = np.r_[sigma1, np.full(k - 2, 1.0), last].astype(dtype)
        X[b, np.arange(k), np.arange(k)] = d  # diagonal: the singular values are exact
    assert ir.svdvals(X)[1, -1] == dtype(1.25 * tol)
    r = M.rank(X)
    assert r.dtype == np.int64
    np.testing.assert_array_equal(r, [k - 1, k, k - 1, k])
    np.testing.assert_array_equal(M.rank(X, backend="numpy"), [k - 1, k, k - 1, k])
    # svals=: k stands for max(m, n)
    s = ir.svdvals(X)
    ks = np.r_[sigma1, np.full(k - 2, 1.0)]
    tol_k = sigma1 * k * eps
    s_edge = np.array([np.r_[ks, 0.8 * tol_k], np.r_[ks, 1.25 * tol_k]], dtype=dtype)
    np.testing.assert_array_equal(M.rank(svals=s_edge), [k - 1, k])
    # the matrices' own values: 0.8 * (max(m, n) eps sigma_1) is above k eps sigma_1 when
    # m != n, so svals= counts it where X= does not
    np.testing.assert_array_equal(M.rank(svals=s), [k - 1 if m == n else k, k, k - 1, k])


def test_rank_explicit_tolerance():
    X = _random((6, 4), lead=(20,), seed=12)
    s = np_svals(X)
    for tol in (0.0, 0.3, 1.0, 2.5, 100.0):
        expected = (s > tol).sum(-1)
        np.testing.assert_array_equal(M.rank(X, tol=tol), expected)
        np.testing.assert_array_equal(M.rank(X, tol), expected)
        np.testing.assert_array_equal(M.rank(svals=s, tol=tol), expected)
        np.testing.assert_array_equal(M.rank(X, tol=tol, backend="numpy"), expected)
    assert 0 < M.rank(X, tol=1.0).sum() < 80  # the tolerances above do cut


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "m,n,r", [(6, 6, 2), (9, 5, 3), (4, 10, 1), (2, 2, 1), (12, 12, 11), (5, 5, 0), (3, 3, 3)]
)
def test_rank_of_products(m, n, r, dtype):
    rng = np.random.default_rng(m + n + r)
    X = (rng.standard_normal((6, m, r)) @ rng.standard_normal((6, r, n))).astype(dtype)
    got = M.rank(X)
    np.testing.assert_array_equal(got, r)
    np.testing.assert_array_equal(got, np.linalg.matrix_rank(X))
    np.testing.assert_array_equal(M.rank(X, backend="numpy"), r)


def test_rank_of_a_non_finite_matrix_is_minus_one():
    X = _random((4, 4), lead=(5,), seed=1)
    X[2, 1, 3] = np.nan
    X[4, 0, 0] = np.inf
    np.testing.assert_array_equal(M.rank(X), [4, 4, -1, 4, -1])
    np.testing.assert_array_equal(M.rank(X, backend="numpy"), [4, 4, -1, 4, -1])
    assert np.isnan(M.frobenius(X)[[2, 4]]).all()
    assert np.isfinite(M.frobenius(X)[[0, 1, 3]]).all()
    Y = np.array([[np.nan, 1.0], [1.0, 1.0]])
    assert M.rank(Y) == -1 and np.isnan(M.effective_rank(Y)) and np.isnan(M.nuclear(Y))


def test_zero_matrices():
    Z = np.zeros((3, 4, 5))
    np.testing.assert_array_equal(M.effective_rank(Z), 0.0)
    np.testing.assert_array_equal(M.rank(Z), 0)
    for metric in (
        M.frobenius,
        M.nuclear,
        M.spectral,
        partial(M.schatten, p=0.5),
        partial(M.dist_to_rank, r=0),
    ):
        np.testing.assert_array_equal(metric(Z), 0.0)
        np.testing.assert_array_equal(metric(Z, backend="numpy"), 0.0)
    assert M.effective_rank(svals=[0.0, 0.0]) == 0.0


matrices = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False),
)


@HYP
@given(X=matrices, low=st.integers(0, 6))
def test_effective_rank_between_one_and_rank(X, low):
    # optionally force a low rank: keep `low` singular values
    U, S, Vt = np.linalg.svd(X, full_matrices=False)
    if low < S.size:
        X = (U[:, :low] * S[:low]) @ Vt[:low]
    e, r = M.effective_rank(X), M.rank(X)
    k = min(X.shape)
    if not X.any():
        assert e == 0.0 and r == 0
        return
    assert 0 <= r <= k
    # singular values below the rank tolerance (<= k eps sigma_1 each) add at most
    # k * (k eps) * ln(1 / (k eps)) ~ 1e-12 to the entropy
    assert 1.0 - 1e-15 <= e <= max(r, 1) + 1e-9
    assert e <= k + 1e-12
    assert abs(e - np_erank(np_svals(X))) <= 1e-9


# ---------------------------------------------------------------------------- dist_to_rank


@pytest.mark.parametrize("shape", [(5, 5), (7, 3), (3, 8), (2, 2), (1, 4)])
def test_dist_to_rank_is_eckart_young(shape):
    X = _random(shape, lead=(10,), seed=shape[0] + 5 * shape[1])
    k = min(shape)
    fro = M.frobenius(X)
    prev = fro
    for r in range(k + 3):
        d = M.dist_to_rank(X, r)
        s1 = np_svals(X)[:, 0]
        np.testing.assert_allclose(d, np_dist_to_rank(X, r), rtol=1e-12, atol=1e-12 * s1.max())
        np.testing.assert_allclose(
            M.dist_to_rank(X, r, backend="numpy"), d, rtol=1e-12, atol=1e-12 * s1.max()
        )
        if r == 0:
            np.testing.assert_array_equal(d, fro)
        if r >= k:
            np.testing.assert_array_equal(d, 0.0)
        assert (d <= prev).all()
        prev = d
    np.testing.assert_array_equal(M.dist_to_rank(svals=np_svals(X), r=k + 5), 0.0)


def test_dist_to_rank_of_a_graded_matrix():
    rng = np.random.default_rng(21)
    sig = np.logspace(0, -9, 6)
    U = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    V = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    X = U @ np.diag(sig) @ V.T
    for r in range(6):
        expected = np.sqrt((sig[r:] ** 2).sum())
        np.testing.assert_allclose(M.dist_to_rank(X, r), expected, rtol=0, atol=1e-14)
        assert M.dist_to_rank(svals=sig, r=r) == pytest.approx(expected, rel=1e-15)


# ---------------------------------------------------------------------------- balancedness


def _squared_norm(factors) -> np.ndarray:
    return np.max([np.linalg.norm(W, "fro", axis=(1, 2)) ** 2 for W in factors], axis=0)


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize(
    "problem,widths",
    [
        (ir.problems.paper_2x2(5), None),
        (ir.problems.random_low_rank_completion(4, 6, 2, 12, batch=3), None),
        (ir.problems.random_low_rank_completion(4, 6, 2, 12, batch=3), 5),
        (ir.problems.random_sensing(3, 2, 1, 4, batch=2), 7),
    ],
    ids=["2x2", "4x6", "4x6-wide", "3x2-wide"],
)
def test_balanced_init_is_balanced(problem, widths, depth):
    f = ir.DeepFactorization.init(
        problem, depth, widths=widths, init="balanced", scale=1.0, scale_by="product", seed=depth
    )
    b = M.balancedness(f.factors)
    assert b.shape == (problem.batch,) and b.dtype == np.float64
    assert (b <= 1e-12 * _squared_norm(f.factors)).all()
    np.testing.assert_allclose(
        M.balancedness(f.factors, backend="numpy"),
        b,
        rtol=0,
        atol=1e-12 * _squared_norm(f.factors).max(),
    )
    # the same scale with i.i.d. normal factors is far from balanced
    g = ir.DeepFactorization.init(
        problem, depth, widths=widths, init="normal", scale=1.0, scale_by="product", seed=depth
    )
    assert (M.balancedness(g.factors) > 1e-3 * _squared_norm(g.factors)).all()


@pytest.mark.parametrize(
    "dims", [[2, 2], [3, 3, 3], [3, 5, 2, 4], [6, 1, 6], [4, 7, 7, 2, 5], [1, 1, 1]]
)
def test_balancedness_matches_numpy(dims):
    rng = np.random.default_rng(len(dims) * 10 + sum(dims))
    B = 6
    factors = [rng.standard_normal((B, dims[j], dims[j - 1])) for j in range(1, len(dims))]
    b = M.balancedness(factors)
    expected = np_balancedness(factors)
    np.testing.assert_allclose(b, expected, rtol=1e-12)
    np.testing.assert_allclose(M.balancedness(factors, backend="numpy"), b, rtol=1e-12)
    if len(factors) > 1:
        assert (b > 0).all()
    # float32 factors: the same formula in float64 on their exact values
    f32 = [W.astype(np.float32) for W in factors]
    np.testing.assert_allclose(M.balancedness(f32), np_balancedness(f32), rtol=1e-12)
    # tuples work too
    np.testing.assert_array_equal(M.balancedness(tuple(factors)), b)


def test_balancedness_at_depth_one_is_zero():
    W = np.random.default_rng(0).standard_normal((4, 3, 5))
    np.testing.assert_array_equal(M.balancedness([W]), np.zeros(4))
    np.testing.assert_array_equal(M.balancedness([W], backend="numpy"), np.zeros(4))


def test_balancedness_of_a_hand_example():
    """W_1 = diag(1, 2), W_2 = I: ||I - diag(1, 4)||_F = 3."""
    W1 = np.diag([1.0, 2.0])[None]
    W2 = np.eye(2)[None]
    assert M.balancedness([W1, W2])[0] == 3.0
    assert M.balancedness([W1, W1])[0] == 0.0  # diagonal factors equal to each other


def test_balancedness_bad_input():
    W = np.ones((3, 2, 2))
    with pytest.raises(TypeError, match=r"^factors: expected a non-empty list"):
        M.balancedness(W)
    with pytest.raises(TypeError, match=r"^factors: expected a non-empty list"):
        M.balancedness([])
    with pytest.raises(ValueError, match=r"^factors\[1\]: expected shape"):
        M.balancedness([W, np.ones((2, 2))])
    with pytest.raises(ValueError, match=r"^factors\[1\]: expected shape"):
        M.balancedness([W, np.ones((4, 2, 2))])
    with pytest.raises(ValueError, match=r"^factors\[1\]: expected 2 columns"):
        M.balancedness([W, np.ones((3, 2, 3))])
    with pytest.raises(TypeError, match=r"^factors\[0\]: expected real numbers"):
        M.balancedness([W.astype(complex)])
    with pytest.raises(ValueError, match=r"^backend:"):
        M.balancedness([W], backend="gpu")


# ------------------------------------------------------------------------- fit integration

ALL = (
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


def _fit_both(problem, metrics, depth=3, widths=None, steps=300, lr=0.05, every=50):
    out = []
    for backend in ("cpu", "numpy"):
        f = ir.DeepFactorization.init(
            problem, depth, widths=widths, scale=0.3, seed=0, backend=backend
        )
        t = f.fit(lr, steps, log=ir.every(every), metrics=metrics, progress=False)
        out.append((f, t))
    return out


def _assert_logs_agree(a, b, names):
    """cpu vs numpy trajectories: 1e-9 relative (or 1e-12 absolute); the values of singular
    values and dist_rank only to 1e-9 of sigma_1 (LAPACK is only absolutely accurate)."""
    for name in names:
        x, y = a[name], b[name]
        assert x.shape == y.shape and x.dtype == y.dtype == np.float64
        if name in ("svals", "rank") or name.startswith("dist_rank"):
            s1 = a["svals"] if "svals" in names else a["spectral"]
            s1 = s1[..., 0] if s1.ndim == 3 else s1
            scale = s1[..., None] if x.ndim == 3 else s1
            if name == "rank":
                np.testing.assert_array_equal(x, y)
            else:
                assert (np.abs(x - y) <= 1e-9 * scale + 1e-12).all(), name
        else:
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, err_msg=name)


def _assert_logs_match_metric_functions(f, t, names):
    """The last logged row equals the metric functions on the final state."""
    E = f.product()
    funcs = {
        "svals": lambda: ir.svdvals(E, backend=f.backend),
        "fro": lambda: M.frobenius(E, backend=f.backend),
        "nuc": lambda: M.nuclear(E, backend=f.backend),
        "spectral": lambda: M.spectral(E, backend=f.backend),
        "schatten:0.5": lambda: M.schatten(E, 0.5, backend=f.backend),
        "erank": lambda: M.effective_rank(E, backend=f.backend),
        "rank": lambda: M.rank(E, backend=f.backend),
        "dist_rank:1": lambda: M.dist_to_rank(E, 1, backend=f.backend),
        "balancedness": lambda: M.balancedness(f.factors, backend=f.backend),
        "loss": f.loss,
        "entry:0,0": lambda: E[:, 0, 0],
    }
    for name in names:
        if name in funcs:
            np.testing.assert_allclose(t[name][-1], funcs[name](), rtol=1e-14, atol=0, err_msg=name)


def test_fit_metrics_on_both_backends():
    p = ir.problems.paper_2x2(4)
    (fc, tc), (fn, tn) = _fit_both(p, ALL)
    rows = tc.steps.size
    assert rows == 7
    for name in ALL:
        expected = (rows, 4, 2) if name == "svals" else (rows, 4)
        assert tc[name].shape == expected, name
    _assert_logs_agree(tc, tn, ALL)
    _assert_logs_match_metric_functions(fc, tc, ALL)
    _assert_logs_match_metric_functions(fn, tn, ALL)
    # internal consistency of one log
    np.testing.assert_array_equal(tc["spectral"], tc["svals"][..., 0])
    np.testing.assert_array_equal(tc["dist_rank:1"], tc["svals"][..., 1])
    np.testing.assert_allclose(
        tc["det"], tc["svals"].prod(axis=-1) * np.sign(tc["det"]), rtol=1e-12
    )
    np.testing.assert_allclose(tc["nuc"], tc["svals"].sum(axis=-1), rtol=1e-15)
    assert (tc["loss"][-1] < tc["loss"][0]).all()  # it did train


def test_fit_metrics_on_a_sensing_problem():
    p = ir.problems.random_sensing(3, 3, 1, 7, batch=3, seed=1)
    (fc, tc), (fn, tn) = _fit_both(p, ALL, depth=2, lr=0.01)
    assert tc["svals"].shape == (tc.steps.size, 3, 3)
    _assert_logs_agree(tc, tn, ALL)
    _assert_logs_match_metric_functions(fc, tc, ALL)


def test_fit_metrics_on_a_non_square_completion_problem():
    p = ir.problems.random_low_rank_completion(3, 5, 1, 10, batch=3, seed=2)
    names = tuple(n for n in ALL if n != "det") + ("entry:2,4", "dist_rank:0", "schatten:3")
    (fc, tc), (fn, tn) = _fit_both(p, names, depth=3, widths=[4, 3], lr=0.02)
    assert tc["svals"].shape == (tc.steps.size, 3, 3)
    _assert_logs_agree(tc, tn, names)
    _assert_logs_match_metric_functions(fc, tc, names)
    np.testing.assert_array_equal(tc["dist_rank:0"], tc["fro"])
    np.testing.assert_array_equal(tc["entry:2,4"][-1], fc.product()[:, 2, 4])
    # "det" needs a square problem: refused by name, before any step
    f = ir.DeepFactorization.init(p, 2, seed=0)
    with pytest.raises(ValueError, match="'det'"):
        f.fit(0.01, 10, metrics=("loss", "det"), progress=False)
    assert f.steps_done == 0


def test_fit_metrics_of_a_narrow_factorization():
    """Hidden widths [4, 2]: the 3 x 5 product has rank <= 2; its third singular value is
    rounding noise, below the rank tolerance. (The Schatten quasi-norms and erank of such a
    product depend on that noise: (1e-16)^0.5 = 1e-8 relative for p = 0.5, so the backends
    agree on them only to that level.)"""
    p = ir.problems.random_low_rank_completion(3, 5, 1, 10, batch=3, seed=2)
    (fc, tc), (fn, tn) = _fit_both(
        p, ("svals", "rank", "schatten:0.5", "fro"), depth=3, widths=[4, 2], lr=0.02
    )
    assert (tc["rank"] == 2).all() and (tn["rank"] == 2).all()
    assert (tc["svals"][..., 2] <= 1e-14 * tc["svals"][..., 0]).all()
    np.testing.assert_allclose(tc["fro"], tn["fro"], rtol=1e-9)
    np.testing.assert_allclose(tc["schatten:0.5"], tn["schatten:0.5"], rtol=1e-6)


def test_fit_float32_model_logs_float64_with_float32_rank_tolerance():
    p = ir.problems.paper_2x2(3)
    f = ir.DeepFactorization.init(p, 3, scale=0.3, seed=0, dtype="float32")
    t = f.fit(0.05, 200, log=ir.every(100), metrics=("svals", "rank", "fro"), progress=False)
    assert all(t[n].dtype == np.float64 for n in t.metrics)
    E = f.product()
    assert E.dtype == np.float32
    np.testing.assert_array_equal(t["svals"][-1], ir.svdvals(E))
    np.testing.assert_array_equal(t["rank"][-1], M.rank(E))
    np.testing.assert_allclose(t["fro"][-1], M.frobenius(E), rtol=1e-15)


def test_measure_shapes():
    p = ir.problems.random_low_rank_completion(4, 3, 1, 6, batch=5)
    f = ir.DeepFactorization.init(p, 2, seed=0)
    got = f.measure(("svals", "erank", "rank", "balancedness"))
    assert got["svals"].shape == (5, 3)
    assert got["erank"].shape == got["rank"].shape == got["balancedness"].shape == (5,)
    np.testing.assert_array_equal(got["svals"], ir.svdvals(f.product()))
    np.testing.assert_array_equal(got["rank"], M.rank(f.product()))


BAD_NAMES = [
    "schatten:0",
    "schatten:x",
    "schatten:-2",
    "schatten:inf",
    "schatten:nan",
    "schatten:",
    "schatten",
    "dist_rank:-1",
    "dist_rank:x",
    "dist_rank:1.5",
    "dist_rank",
    "svals:1",
    "erank:1",
    "fro:2",
    "rank:3",
    "balancedness:0",
    "entry:2,0",
    "entry:0",
    "nuclear",
    "",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_metric_names_are_refused_before_any_step(name):
    p = ir.problems.paper_2x2(2)
    f = ir.DeepFactorization.init(p, 2, seed=0)
    before = [W.copy() for W in f.factors]
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        f.fit(0.05, 100, metrics=("loss", "fro", name), progress=False)
    assert f.steps_done == 0
    for W, W0 in zip(f.factors, before, strict=True):
        np.testing.assert_array_equal(W, W0)
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        f.measure(("loss", name))


def test_good_parameters_are_read():
    p = ir.problems.paper_2x2(2)
    f = ir.DeepFactorization.init(p, 2, scale=0.5, seed=0)
    got = f.measure(("schatten:0.5", "schatten:1e0", "dist_rank:0", "dist_rank:2", "nuc", "fro"))
    np.testing.assert_allclose(got["schatten:1e0"], got["nuc"], rtol=1e-14)
    np.testing.assert_array_equal(got["dist_rank:0"], got["fro"])
    np.testing.assert_array_equal(got["dist_rank:2"], 0.0)
    np.testing.assert_allclose(got["schatten:0.5"], M.schatten(f.product(), 0.5), rtol=1e-15)


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "svals",
    [[1.0, 2.0], [[3.0, 1.0], [1.0, 3.0]], [2.0, -1.0], [0.0, -0.0, -1e-300], [[1.0, 0.5, 0.7]]],
)
def test_svals_not_descending_or_negative(svals):
    for metric in (
        M.frobenius,
        M.nuclear,
        M.spectral,
        M.effective_rank,
        M.rank,
        partial(M.schatten, p=1),
        partial(M.dist_to_rank, r=1),
    ):
        with pytest.raises(ValueError, match=r"^svals: expected non-negative"):
            metric(svals=svals)


def test_svals_bad_shape_or_dtype():
    with pytest.raises(ValueError, match=r"^svals: expected shape"):
        M.frobenius(svals=3.0)
    with pytest.raises(TypeError, match=r"^svals: expected real numbers"):
        M.frobenius(svals=np.array([1.0, 0.5], dtype=complex))
    # integer singular values are accepted
    assert M.nuclear(svals=[3, 1]) == 4.0


@pytest.mark.parametrize(
    "metric",
    [
        M.frobenius,
        M.nuclear,
        M.spectral,
        M.effective_rank,
        M.rank,
        partial(M.schatten, p=2),
        partial(M.dist_to_rank, r=1),
    ],
)
def test_exactly_one_of_x_and_svals(metric):
    with pytest.raises(TypeError, match="exactly one of X"):
        metric(np.eye(2), svals=[1.0, 1.0])
    with pytest.raises(TypeError, match="exactly one of X"):
        metric()


def test_bad_x():
    with pytest.raises(ValueError, match=r"^X: expected matrices"):
        M.frobenius(np.ones(3))
    with pytest.raises(TypeError, match=r"^X: expected real numbers"):
        M.nuclear(np.eye(2, dtype=bool))
    with pytest.raises(ValueError, match=r"^backend:"):
        M.spectral(np.eye(2), backend="gpu")


@pytest.mark.parametrize(
    "p,exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (-0.5, ValueError),
        (np.inf, ValueError),
        (np.nan, ValueError),
        (None, TypeError),
        ("2", TypeError),
        ([1, 2], ValueError),
    ],
)
def test_schatten_bad_p(p, exc):
    with pytest.raises(exc, match=r"^p: expected"):
        M.schatten(np.eye(2), p)
    with pytest.raises(exc, match=r"^p: expected"):
        M.schatten(svals=[1.0], p=p)


def test_schatten_p_is_required():
    with pytest.raises(TypeError, match=r"^p: expected"):
        M.schatten(np.eye(2))


@pytest.mark.parametrize(
    "r,exc",
    [(-1, ValueError), (-5, ValueError), (None, TypeError), (1.5, TypeError), ("1", TypeError)],
)
def test_dist_to_rank_bad_r(r, exc):
    with pytest.raises(exc, match=r"^r: expected"):
        M.dist_to_rank(np.eye(2), r)
    with pytest.raises(exc, match=r"^r: expected"):
        M.dist_to_rank(svals=[1.0], r=r)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("r", [4, 2**31, 16879866890811516])
def test_dist_to_rank_at_or_beyond_the_size_is_zero(backend, r):
    # r past the int range once overflowed in the kernel and read out of bounds
    X = _random((4, 4), lead=(3,), seed=1)
    np.testing.assert_array_equal(M.dist_to_rank(X, r, backend=backend), np.zeros(3))
    np.testing.assert_array_equal(M.dist_to_rank(svals=[[2.0, 1.0]], r=r, backend=backend), [0.0])


def test_dist_to_rank_r_accepts_integral_values():
    X = _random((4, 4), lead=(2,), seed=3)
    np.testing.assert_array_equal(M.dist_to_rank(X, np.int64(2)), M.dist_to_rank(X, 2))
    np.testing.assert_array_equal(M.dist_to_rank(X, 2.0), M.dist_to_rank(X, 2))


@pytest.mark.parametrize("tol", [-1.0, np.inf, np.nan, [0.1, 0.2]])
def test_rank_bad_tol(tol):
    with pytest.raises(ValueError, match=r"^tol: expected"):
        M.rank(np.eye(2), tol=tol)


# ------------------------------------------------------------------------------ empty input


def test_empty_batches():
    for metric in (
        M.frobenius,
        M.nuclear,
        M.spectral,
        M.effective_rank,
        M.rank,
        partial(M.schatten, p=0.5),
        partial(M.dist_to_rank, r=1),
    ):
        for backend in ("cpu", "numpy"):
            assert metric(np.zeros((0, 3, 3)), backend=backend).shape == (0,)
            assert metric(np.zeros((2, 0, 4, 4)), backend=backend).shape == (2, 0)
    assert M.rank(np.zeros((0, 3, 3))).dtype == np.int64
    assert M.balancedness([np.zeros((0, 3, 2)), np.zeros((0, 4, 3))]).shape == (0,)


def test_metrics_of_no_singular_values():
    np.testing.assert_array_equal(M.nuclear(svals=np.zeros((2, 0))), [0.0, 0.0])


def test_metrics_of_empty_matrices():
    np.testing.assert_array_equal(M.spectral(np.zeros((3, 0, 2))), np.zeros(3))
