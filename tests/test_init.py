"""Starting factors (implicitreg.init, PAPER.md section 1.5): balanced, normal, identity,
scale_by, determinant sign enforcement and per-problem seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

import implicitreg as ir
from conftest import explicit_product


def _init(problem, depth, **kw):
    return ir.DeepFactorization.init(problem, depth, **kw)


def _square(d, batch):
    return ir.completion(np.zeros((d, d)), np.ones((d, d), dtype=bool), batch=batch)


def _rect(m, n, batch):
    return ir.completion(np.zeros((m, n)), np.ones((m, n), dtype=bool), batch=batch)


# --------------------------------------------------------------------------- balanced

BALANCED_SHAPES = [
    # (m, n, depth, widths)
    (2, 2, 2, None),
    (2, 2, 3, None),
    (2, 2, 4, [2, 5, 3]),
    (3, 5, 3, None),
    (5, 3, 4, [3, 6, 4]),
    (4, 4, 5, [4, 7, 4, 9]),
    (1, 6, 3, [1, 4]),
]


@pytest.mark.parametrize("m,n,depth,widths", BALANCED_SHAPES)
def test_balanced_product_is_the_drawn_matrix(m, n, depth, widths):
    """The product of a balanced init is its P0, the N(0, scale^2) draw that depth 1 returns
    as is (scale_by="product": the same sigma at every depth)."""
    p = _rect(m, n, batch=6)
    f = _init(p, depth, widths=widths, init="balanced", scale=0.7, scale_by="product", seed=5)
    P0 = _init(p, 1, init="balanced", scale=0.7, scale_by="product", seed=5).factors[0]
    atol = 1e-12 * np.abs(P0).max()
    np.testing.assert_allclose(explicit_product(f.factors), P0, rtol=0, atol=atol)
    np.testing.assert_allclose(f.product(), P0, rtol=0, atol=atol)
    assert f.dims == [n, *(widths or [min(m, n)] * (depth - 1)), m]


@pytest.mark.parametrize("m,n,depth,widths", BALANCED_SHAPES)
def test_balanced_factors_are_balanced(m, n, depth, widths):
    p = _rect(m, n, batch=6)
    f = _init(p, depth, widths=widths, init="balanced", scale=1.3, scale_by="product", seed=2)
    W = f.factors
    for j in range(depth - 1):
        lhs = np.swapaxes(W[j + 1], 1, 2) @ W[j + 1]  # W_{j+1}^T W_{j+1}
        rhs = W[j] @ np.swapaxes(W[j], 1, 2)  # W_j W_j^T
        np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-12 * max(1.0, np.abs(rhs).max()))
        assert np.abs(rhs).max() > 0.1


@pytest.mark.parametrize("m,n,widths", [(2, 2, [1]), (3, 3, [3, 2]), (4, 6, [5, 3]), (6, 4, [3])])
def test_balanced_needs_widths_at_least_min_mn(m, n, widths):
    with pytest.raises(ValueError, match="widths"):
        _init(_rect(m, n, 2), len(widths) + 1, widths=widths, init="balanced")


# --------------------------------------------------------------------------- scales


def _product_entries(init, scale_by, scale, depth, d=3, batch=2000, seed=0):
    f = _init(_square(d, batch), depth, init=init, scale=scale, scale_by=scale_by, seed=seed)
    return explicit_product(f.factors).ravel(), f


@pytest.mark.parametrize("init", ["normal", "balanced"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_scale_by_product_gives_product_std(init, depth):
    # product entries of Gaussian factors are heavy-tailed; 18000 entries (kurtosis < 10)
    # put the sample std within ~3% with overwhelming probability
    x, _ = _product_entries(init, "product", 2e-3, depth)
    assert abs(x.std() / 2e-3 - 1) < 0.05
    assert abs(x.mean()) < 0.05 * 2e-3


def test_scale_by_factor_normal_is_per_factor_std():
    _, f = _product_entries("normal", "factor", 0.3, 3)
    for W in f.factors:
        assert abs(W.std() / 0.3 - 1) < 0.05
    # ... and the product std is s^N * sqrt(d_1 ... d_{N-1})
    x = explicit_product(f.factors).ravel()
    assert abs(x.std() / (0.3**3 * 3) - 1) < 0.05


def test_scale_by_factor_balanced_matches_normal_product_std():
    """balanced + "factor": sigma = scale^N sqrt(d_1 ... d_{N-1}), the end-to-end std of a
    normal init with that per-factor std."""
    x, _ = _product_entries("balanced", "factor", 0.3, 3)
    assert abs(x.std() / (0.3**3 * 3) - 1) < 0.05


@pytest.mark.parametrize("m,n,depth,widths", [(2, 2, 3, None), (3, 4, 3, [5, 4]), (4, 2, 2, [1])])
def test_identity_init(m, n, depth, widths):
    p = _rect(m, n, 2)
    f = _init(p, depth, widths=widths, init="identity", scale=0.4, scale_by="factor")
    for W in f.factors:
        np.testing.assert_array_equal(W, np.broadcast_to(0.4 * np.eye(*W.shape[1:]), W.shape))
    g = _init(p, depth, widths=widths, init="identity", scale=0.4, scale_by="product")
    s = 0.4 ** (1 / depth)
    for W in g.factors:
        np.testing.assert_allclose(
            W, np.broadcast_to(s * np.eye(*W.shape[1:]), W.shape), rtol=1e-15
        )
    if min(f.dims) == min(m, n):
        np.testing.assert_allclose(
            g.product(), np.broadcast_to(0.4 * np.eye(m, n), (2, m, n)), rtol=1e-14
        )


# --------------------------------------------------------------------------- det


@pytest.mark.parametrize("init", ["normal", "balanced"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_det_sign_is_a_fair_coin_without_enforcement(init, depth):
    f = _init(ir.problems.paper_2x2(3000), depth, init=init, scale=0.5, seed=9)
    frac = (f.det() > 0).mean()
    assert abs(frac - 0.5) < 0.05  # exact 1/2; 3000 draws: sd 0.009


@pytest.mark.parametrize("sign", ["positive", "negative"])
@pytest.mark.parametrize(
    "init,depth,widths",
    [
        ("normal", 2, None),
        ("normal", 3, None),
        ("normal", 3, [4, 3]),
        ("balanced", 2, None),
        ("balanced", 4, [3, 2, 5]),
        ("identity", 3, None),
        ("identity", 2, [4]),
    ],
)
def test_det_enforcement(init, depth, widths, sign):
    p = ir.problems.paper_2x2(1000)
    f = _init(p, depth, widths=widths, init=init, scale=0.5, det=sign, seed=3)
    d = f.det()
    assert (d > 0).all() if sign == "positive" else (d < 0).all()
    # det() is the float64 determinant of the product
    np.testing.assert_allclose(d, np.linalg.det(explicit_product(f.factors)), rtol=1e-9)
    if init == "balanced":  # redrawn, still balanced
        W = f.factors
        for j in range(depth - 1):
            np.testing.assert_allclose(
                np.swapaxes(W[j + 1], 1, 2) @ W[j + 1], W[j] @ np.swapaxes(W[j], 1, 2), atol=1e-12
            )


@pytest.mark.parametrize("init", ["normal", "balanced"])
def test_det_enforcement_redraws_only_the_wrong_sign(init):
    p = ir.problems.paper_2x2(200)
    free = _init(p, 3, init=init, scale=0.5, seed=1)
    pos = _init(p, 3, init=init, scale=0.5, seed=1, det="positive")
    keep = free.det() > 0
    assert 50 < keep.sum() < 150
    for a, b in zip(free.factors, pos.factors, strict=True):
        np.testing.assert_array_equal(a[keep], b[keep])
        assert not np.array_equal(a[~keep], b[~keep])


@pytest.mark.parametrize("init", ["normal", "balanced", "identity"])
@pytest.mark.parametrize("sign", ["positive", "negative"])
def test_det_on_non_square_problem_is_refused(init, sign):
    with pytest.raises(ValueError, match="det"):
        _init(_rect(2, 3, 4), 2, init=init, det=sign)


@pytest.mark.parametrize("init", ["normal", "identity"])
def test_det_enforcement_with_a_rank_deficient_product_is_refused(init):
    """A hidden width < n makes det(W_N ... W_1) identically 0: no sign can be enforced, so
    det= must be refused (identity silently returns det = 0, normal returns rounding noise
    of either sign that happened to pass the test)."""
    with pytest.raises(ValueError, match="det|widths"):
        _init(ir.problems.paper_2x2(4), 3, widths=[2, 1], init=init, det="positive", scale=0.5)


# --------------------------------------------------------------------------- seeding


@pytest.mark.parametrize(
    "init,det",
    [("normal", None), ("normal", "positive"), ("balanced", "negative"), ("identity", "negative")],
)
def test_start_of_problem_b_does_not_depend_on_batch_size_or_backend(init, det):
    starts = {}
    for batch in (1, 5, 37):
        for backend in ("cpu", "numpy"):
            f = _init(
                ir.problems.paper_2x2(batch),
                3,
                init=init,
                scale=0.3,
                det=det,
                seed=12,
                backend=backend,
            )
            starts[batch, backend] = f.factors
    ref = starts[37, "cpu"]
    for (batch, _), W in starts.items():
        for a, b in zip(W, ref, strict=True):
            np.testing.assert_array_equal(a, b[:batch])
    if init != "identity":  # problems differ from each other, and seeds differ
        assert not np.array_equal(ref[0][0], ref[0][1])
        other = _init(ir.problems.paper_2x2(5), 3, init=init, scale=0.3, det=det, seed=13)
        assert not np.array_equal(other.factors[0], ref[0][:5])


def test_float32_start_is_the_rounded_float64_start():
    p = ir.problems.paper_2x2(7)
    f64 = _init(p, 3, scale=0.3, seed=2, dtype="float64")
    f32 = _init(p, 3, scale=0.3, seed=2, dtype="float32")
    for a, b in zip(f32.factors, f64.factors, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b.astype(np.float32))


def test_default_widths_are_min_mn():
    f = _init(_rect(3, 5, 2), 4)
    assert f.dims == [5, 3, 3, 3, 3]
    g = _init(_rect(3, 5, 2), 3, widths=7)
    assert g.dims == [5, 7, 7, 3]


# --------------------------------------------------------------------------- explicit factors


def test_explicit_factors_are_copied(backend):
    p = ir.problems.paper_2x2(3)
    W = [np.full((3, 2, 2), 0.1), np.full((2, 2), 0.2)]  # a 2-d factor is shared
    keep = [w.copy() for w in W]
    f = ir.DeepFactorization(p, W, backend=backend)
    assert f.factors[1].shape == (3, 2, 2)
    W[0][...] = 7.0
    W[1][...] = 7.0
    np.testing.assert_array_equal(f.factors[0], keep[0])
    f.step(0.1, 5)
    assert not np.array_equal(f.factors[0], keep[0])
    np.testing.assert_array_equal(W[0], 7.0)
    assert math.isfinite(f.loss()[0])


def test_explicit_factors_are_converted_to_dtype(backend):
    p = ir.problems.paper_2x2(2)
    W = np.full((2, 2, 2), 0.1, dtype=np.float32)
    f = ir.DeepFactorization(p, [W, W], backend=backend, dtype="float64")
    assert all(w.dtype == np.float64 for w in f.factors)
    g = ir.DeepFactorization(p, [W, W], backend=backend)
    assert all(w.dtype == np.float32 for w in g.factors)
