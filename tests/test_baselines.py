"""The fits a norm picks (implicitreg.baselines.min_norm): closed forms, the paper's 2x2,
cvxpy's interior-point solution of the same convex problems, and the certificate's bound."""

from __future__ import annotations

import numpy as np
import pytest

import implicitreg as ir
from implicitreg.baselines import MinNorm, min_norm


def _completion(batch=4, seed=0):
    return ir.problems.random_low_rank_completion(6, 5, 2, 18, batch=batch, seed=seed)


def _sensing(batch=3, seed=0):
    return ir.problems.random_sensing(5, 4, 1, 12, batch=batch, seed=seed)


def _feasible(problem, X):
    """The largest violation of the problem's fit (least squares for sensing)."""
    if isinstance(problem, ir.problems.Completion):
        M = np.broadcast_to(problem.masks, X.shape)
        return np.abs(np.where(M, X - np.broadcast_to(problem.targets, X.shape), 0)).max()
    A = np.broadcast_to(problem.A, (X.shape[0],) + problem.A.shape[1:])
    return np.abs(np.einsum("bkij,bij->bk", A, X) - problem.y).max()


def test_paper_2x2_nuclear_norm_picks_w11_zero():
    """The nuclear norm's choice: w11 = 0, nuclear norm 2, where gradient descent sends |w11|
    to infinity."""
    r = min_norm(ir.problems.paper_2x2(batch=2), "nuclear")
    assert isinstance(r, MinNorm) and not r.local
    np.testing.assert_allclose(r.matrices, [[[0, 1], [1, 0]]] * 2, atol=1e-9)
    np.testing.assert_allclose(r.value, 2.0, rtol=1e-9)
    assert (r.status == "optimal").all() and (r.gap < 1e-8).all()


def test_frobenius_closed_forms():
    p = _completion()
    r = min_norm(p, "frobenius")
    np.testing.assert_array_equal(r.matrices, np.where(p.masks, p.targets, 0.0))
    assert (r.status == "exact").all() and (r.gap == 0).all()
    s = _sensing()
    r = min_norm(s, "frobenius")
    for b in range(s.batch):
        A = s.A[b].reshape(s.A.shape[1], -1)
        want = np.linalg.lstsq(A, s.y[b], rcond=None)[0]  # LAPACK's minimum-norm solution
        np.testing.assert_allclose(r.matrices[b].ravel(), want, atol=1e-12)
    np.testing.assert_allclose(r.value, np.linalg.norm(r.matrices, axis=(1, 2)))


@pytest.mark.parametrize("make", [_completion, _sensing], ids=["completion", "sensing"])
def test_nuclear_matches_cvxpy(make):
    cp = pytest.importorskip("cvxpy", reason="cvxpy (a test-only dependency) is not installed")
    p = make()
    r = min_norm(p, "nuclear", tol=1e-9)
    assert (r.status == "optimal").all(), r.gap
    assert _feasible(p, r.matrices) < 1e-9
    for b in range(p.batch):
        X = cp.Variable(p.shape)
        if isinstance(p, ir.problems.Completion):
            M = p.masks[b].astype(float)
            cons = [cp.multiply(M, X) == M * p.targets[b]]
        else:
            A = p.A[b].reshape(p.A.shape[1], -1)
            cons = [A @ cp.vec(X, order="C") == p.y[b]]
        opt = cp.Problem(cp.Minimize(cp.normNuc(X)), cons).solve(
            solver="CLARABEL", tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9
        )
        assert abs(r.value[b] - opt) <= 1e-6 * opt
        # the certificate: the dual bound value * (1 - gap) never exceeds the optimum
        assert r.value[b] * (1 - r.gap[b]) <= opt * (1 + 1e-9)


def test_nuclear_stopped_by_max_iter_says_so():
    r = min_norm(_completion(), "nuclear", tol=1e-12, max_iter=3)
    assert (r.status == "max_iter").all() and (r.iterations == 3).all()
    assert (r.gap > 1e-12).all() and np.isfinite(r.gap).all()


def test_schatten_is_local_and_below_the_other_fits():
    p = _completion(batch=3, seed=2)
    r = min_norm(p, "schatten:0.5", max_iter=500)
    assert r.local and (r.status == "local").all() and np.isnan(r.gap).all()
    assert _feasible(p, r.matrices) < 1e-9

    def schatten(X):
        return (np.linalg.svd(X, compute_uv=False) ** 0.5).sum(axis=1) ** 2

    np.testing.assert_allclose(r.value, schatten(r.matrices))
    for other in ("frobenius", "nuclear"):  # a local minimizer started from the former
        assert (r.value <= schatten(min_norm(p, other).matrices) * (1 + 1e-9)).all()
    s = _sensing(batch=2)
    r = min_norm(s, "schatten:0.5", max_iter=200)
    assert _feasible(s, r.matrices) < 1e-8


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"problem": "x"}, TypeError, "problem: expected"),
        ({"norm": 1}, TypeError, "norm: expected a string"),
        ({"norm": "spectral"}, ValueError, "norm: expected"),
        ({"norm": "schatten:1"}, ValueError, "0 < p < 1"),
        ({"norm": "schatten:0"}, ValueError, "0 < p < 1"),
        ({"norm": "schatten:x"}, ValueError, "0 < p < 1"),
        ({"tol": 0.0}, ValueError, "tol: expected"),
        ({"max_iter": 0}, ValueError, "max_iter: expected"),
        ({"max_iter": 1.5}, TypeError, "max_iter: expected"),
    ],
)
def test_bad_arguments(kw, exc, match):
    args = {"problem": ir.problems.paper_2x2(), **kw}
    with pytest.raises(exc, match=match):
        min_norm(**args)


def test_tensor_problem_refused():
    t = ir.tensor_completion(np.zeros((2, 2, 2)), np.ones((2, 2, 2), bool))
    with pytest.raises(TypeError, match="problem: expected"):
        min_norm(t)


# ---- beside each trained problem of a sweep ------------------------------------------------

SWEEP = {
    "problem": "random_low_rank_completion",
    "m": 4,
    "n": 3,
    "target_rank": 1,
    "n_obs": 8,
    "depth": 2,
    "scale": 0.3,
    "scale_by": "factor",
    "lr": 0.02,
    "max_steps": 30,
    "log": "every:10",
    "thresholds": (),
}


def test_sweep_adds_each_minimizer_beside_the_trained_problems(tmp_path):
    norms = ("frobenius", "nuclear", "schatten:0.5")
    res = ir.sweep(
        {**SWEEP, "min_norms": norms},
        {"problem_seed": [0, 1]},
        seeds=2,
        progress=False,
        out=tmp_path / "s",
    )
    again = ir.load_sweep(tmp_path / "s")
    for seed in (0, 1):
        idx = res.rows(problem_seed=seed)
        p = ir.problems.random_low_rank_completion(4, 3, 1, 8, batch=2, seed=seed)
        for norm in norms:
            fit = min_norm(p, norm)
            for got in (res, again):
                np.testing.assert_allclose(got.columns[f"min_{norm}"][idx], fit.value, rtol=1e-12)
                np.testing.assert_allclose(
                    got.columns[f"min_{norm}_erank"][idx], ir.metrics.effective_rank(fit.matrices)
                )
                err = np.linalg.norm(fit.matrices - p.truth, axis=(1, 2))
                np.testing.assert_allclose(
                    got.columns[f"min_{norm}_recon_error"][idx],
                    err / np.linalg.norm(p.truth, axis=(1, 2)),
                )
    assert (res.columns["min_nuclear_gap"] < 1e-8).all()


def test_sweep_solves_each_distinct_problem_once(monkeypatch):
    """Configs that differ only in training settings share their problems: the minimizer is
    computed once per distinct problem, and every row of it gets the same values."""
    from implicitreg.sweep import run

    batches = []

    def counting(problem, norm, **kw):
        batches.append(problem.batch)
        return min_norm(problem, norm, **kw)

    monkeypatch.setattr(run, "min_norm", counting)
    res = ir.sweep(
        {**SWEEP, "min_norms": ("nuclear",)}, {"lr": [0.02, 0.01, 0.005]}, seeds=2, progress=False
    )
    assert batches == [2]  # 3 configs x 2 seeds, 2 distinct problems
    p = ir.problems.random_low_rank_completion(4, 3, 1, 8, batch=2, seed=0)
    want = min_norm(p, "nuclear").value
    for lr in (0.02, 0.01, 0.005):
        got = res.columns["min_nuclear"][res.rows(lr=lr)]
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_sweep_without_minimizers_records_no_key():
    res = ir.sweep(SWEEP, seeds=1, progress=False)
    assert "min_norms" not in res.configs[0]
    assert not [k for k in res.columns if k.startswith("min_")]


@pytest.mark.parametrize(
    "value, exc, match",
    [
        ("nuclear", TypeError, "min_norms: expected a tuple"),
        (("nuclear", "spectral"), ValueError, "min_norms: expected"),
        ((2,), TypeError, "min_norms: expected a string"),
    ],
)
def test_sweep_refuses_bad_min_norms(value, exc, match):
    with pytest.raises(exc, match=match):
        ir.sweep({**SWEEP, "min_norms": value}, seeds=1, progress=False)
