"""The paper's closed forms on real training runs (PAPER.md §2.4, §2.5, Appendix A).

While det(E) keeps the sign of the solutions' unreachable side, the algebra of §2.4 bounds the
unobserved entry from below at every loss: these bounds must hold at every logged step of a
run, and GD from a balanced near-zero start must follow the rank-1 path
|w11| ≈ 1/sqrt(2 loss) closely.
"""

from __future__ import annotations

import numpy as np

import implicitreg as ir

TOL = 1e-3
S_TOL = np.sqrt(2 * TOL)


NORMS = ("fro", "nuc", "spectral", "schatten:0.5", "schatten:0.25")


def _run(problem, det, max_steps):
    f = ir.DeepFactorization.init(
        problem, depth=3, init="balanced", scale=1e-3, scale_by="product", det=det, seed=0
    )
    return f.fit(
        3e-3,
        max_steps,
        tol=TOL,
        log=ir.every(50),
        metrics=("loss", "entry:0,0", "det", *NORMS, "erank", "dist_rank:1"),
        progress=False,
    )


def _entropy(p):
    return -p * np.log(p) - (1 - p) * np.log(1 - p)


def test_canonical_problem_norms_grow_as_the_loss_falls():
    t = _run(ir.problems.paper_2x2(batch=8), "positive", 400_000)
    assert (t.status == "converged").all()
    # the determinant never changes sign (balanced start near the origin, small steps)
    assert (t["det"] > 0).all()
    # §2.4: with det > 0, |w11| > (1 - s)^2 / s where s = sqrt(2 loss) < 1, at every step
    s = np.sqrt(2 * t["loss"])
    w = np.abs(t["entry:0,0"])
    rows = s < 1
    assert rows.sum() > 100
    assert (w[rows] > (1 - s[rows]) ** 2 / s[rows]).all()
    # Theorem 1 made visible (§2.4): every norm and quasi-norm is at least sigma_1 >= |w11|;
    # the distance to rank 1 (sigma_2) is below s; the effective rank is within
    # exp(h(s^2 / (1 - s)^2)) of 1 once s^2 / (1 - s)^2 < 1/2 (h increasing there)
    for name in NORMS:
        assert (t[name][rows] >= w[rows] * (1 - 1e-12)).all(), name
    assert (t["dist_rank:1"][rows] < s[rows]).all()
    q = s**2 / (1 - s) ** 2
    small = rows & (q < 0.5)
    assert small.sum() > 100
    assert (t["erank"][small] < np.exp(_entropy(q[small])) + 1e-12).all()
    assert (t["erank"] >= 1).all() and np.median(t["erank"][0]) > 1.5  # from near rank 2 ...
    # ... to near rank 1, while every norm grows: read at the first crossing of each loss
    firsts = [t.first_below("loss", x) for x in (1e-1, 1e-2, TOL)]
    for name in NORMS:
        assert (firsts[0][name] < firsts[1][name]).all() and (
            firsts[1][name] < firsts[2][name]
        ).all(), name
    assert (firsts[2]["erank"] < np.exp(_entropy(S_TOL**2 / (1 - S_TOL) ** 2))).all()
    # at the first step below the tolerance: above the bound 20.4, on the rank-1 path 22.36
    at = np.abs(t.first_below("loss", TOL)["entry:0,0"])
    assert (at > (1 - S_TOL) ** 2 / S_TOL).all()
    np.testing.assert_allclose(at, 1 / S_TOL, rtol=0.01)


def test_perturbed_problem_follows_its_bound():
    """§2.5: observations (-2, 0.5, eps) from det < 0: |w11| > (2 - s)(0.5 - s)/(eps + s),
    and w11 runs toward -1/eps."""
    eps = np.array([0.1, 0.5, 0.1, 0.5])
    t = _run(ir.problems.perturbed_2x2(eps=eps), "negative", 600_000)
    assert (t.status == "converged").all()
    assert (t["det"] < 0).all()
    s = np.sqrt(2 * t["loss"])
    rows = s < 0.5
    w = t["entry:0,0"]
    bound = (2 - s) * (0.5 - s) / (eps[None, :] + s)
    assert (np.abs(w[rows]) > bound[rows]).all()
    at = t.first_below("loss", TOL)["entry:0,0"]
    assert (at < 0).all() and (at > -1 / eps).all()
    assert (np.abs(at) > (2 - S_TOL) * (0.5 - S_TOL) / (eps + S_TOL)).all()
