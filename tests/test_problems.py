"""Problem builders (implicitreg.problems): contents, batching and per-problem seeding."""

from __future__ import annotations

import numpy as np
import pytest

import implicitreg as ir
from implicitreg import problems as P

CANON_MASK = np.array([[False, True], [True, True]])


def _full(p, name):
    """A problem array broadcast to its batch."""
    a = getattr(p, name)
    return np.broadcast_to(a, (p.batch,) + a.shape[1:])


def test_paper_2x2():
    p = P.paper_2x2(batch=4)
    assert p.kind == "completion" and p.batch == 4 and p.shape == (2, 2)
    np.testing.assert_array_equal(_full(p, "masks"), np.broadcast_to(CANON_MASK, (4, 2, 2)))
    np.testing.assert_array_equal(
        _full(p, "targets")[:, CANON_MASK], np.broadcast_to([1.0, 1.0, 0.0], (4, 3))
    )
    assert p.targets.shape[0] == 1 and p.masks.shape[0] == 1  # shared, not copied B times
    np.testing.assert_array_equal(p.n_observed, [3, 3, 3, 3])
    assert p.targets.dtype == np.float64 and p.masks.dtype == np.bool_


def test_perturbed_2x2_scalar():
    p = P.perturbed_2x2(-2.0, 0.5, 0.05, batch=3)
    assert p.batch == 3
    np.testing.assert_array_equal(
        _full(p, "targets")[:, CANON_MASK], np.broadcast_to([-2.0, 0.5, 0.05], (3, 3))
    )
    np.testing.assert_array_equal(_full(p, "masks"), np.broadcast_to(CANON_MASK, (3, 2, 2)))


def test_perturbed_2x2_default_is_the_paper_perturbation():
    p = P.perturbed_2x2()
    assert p.batch == 1
    np.testing.assert_array_equal(p.targets[0][CANON_MASK], [-2.0, 0.5, 0.0])


def test_perturbed_2x2_eps_array_batches():
    eps = np.array([0.0, 0.01, 0.05, 0.1, 0.5])
    p = P.perturbed_2x2(eps=eps)
    assert p.batch == 5
    t = _full(p, "targets")
    np.testing.assert_array_equal(t[:, 1, 1], eps)
    np.testing.assert_array_equal(t[:, 0, 1], -2.0)
    np.testing.assert_array_equal(t[:, 1, 0], 0.5)
    # every solution [[x, b12], [b21, eps]] has det = eps x - b12 b21: check one solved model
    x = 3.0
    sol = t.copy()
    sol[:, 0, 0] = x
    f = ir.DeepFactorization(p, [sol])
    np.testing.assert_array_equal(f.loss(), 0.0)
    np.testing.assert_allclose(f.det(), eps * x + 1.0, rtol=1e-14)


def test_perturbed_2x2_arrays_broadcast_together():
    p = P.perturbed_2x2(b12=[1.0, 2.0, 3.0], b21=0.5, eps=[0.0, 0.1, 0.2])
    t = _full(p, "targets")
    np.testing.assert_array_equal(t[:, 0, 1], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(t[:, 1, 1], [0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="eps"):
        P.perturbed_2x2(b12=[1.0, 2.0, 3.0], eps=[0.0, 0.1])


@pytest.mark.parametrize("d", [2, 3, 5])
def test_paper_family(d):
    p = P.paper_family(d, batch=2)
    assert p.shape == (d, d) and p.batch == 2
    t, mk = _full(p, "targets")[0], _full(p, "masks")[0]
    expected = np.eye(d)
    expected[:2, :2] = [[0.0, 1.0], [1.0, 0.0]]
    expected_mask = np.ones((d, d), dtype=bool)
    expected_mask[0, 0] = False
    np.testing.assert_array_equal(mk, expected_mask)
    np.testing.assert_array_equal(t[mk], expected[mk])
    for x in (0.0, 2.5):  # every completion has det -1
        sol = expected.copy()
        sol[0, 0] = x
        assert np.isclose(np.linalg.det(sol), -1.0)
    if d == 2:
        q = P.paper_2x2(2)
        np.testing.assert_array_equal(p.masks, q.masks)
        np.testing.assert_array_equal(p.targets[p.masks], q.targets[q.masks])


@pytest.mark.parametrize(
    "m,n,rank,n_obs", [(4, 4, 1, 9), (3, 7, 2, 12), (8, 3, 3, 20), (5, 5, 5, 25)]
)
def test_random_low_rank_completion(m, n, rank, n_obs):
    p = P.random_low_rank_completion(m, n, rank, n_obs, batch=6, seed=4)
    assert p.shape == (m, n) and p.batch == 6
    masks, targets = _full(p, "masks"), _full(p, "targets")
    np.testing.assert_array_equal(masks.sum(axis=(1, 2)), n_obs)
    np.testing.assert_array_equal(p.n_observed, n_obs)
    assert p.truth is not None
    np.testing.assert_array_equal(p.truth, targets)
    for b in range(6):
        assert np.linalg.matrix_rank(targets[b]) == rank
        np.testing.assert_allclose(np.linalg.norm(targets[b]), m, rtol=1e-12)  # Frobenius = m
    # observation sets differ between problems (they are drawn per problem)
    assert len({masks[b].tobytes() for b in range(6)}) > 1 or n_obs == m * n


def test_random_low_rank_completion_non_square_covers_all_entries():
    """Indices are (i, j) = divmod(k, n): every entry of a non-square matrix can be observed
    (the official generator's divmod by m cannot reach some of them)."""
    m, n = 2, 5
    p = P.random_low_rank_completion(m, n, 1, 3, batch=400, seed=0)
    seen = p.masks.any(axis=0)
    assert seen.all()
    # uniform without replacement: each entry observed with probability n_obs / (m n)
    freq = p.masks.mean(axis=0)
    assert np.abs(freq - 3 / 10).max() < 0.1


@pytest.mark.parametrize("builder", ["completion", "sensing"])
def test_random_problems_are_per_problem_seeded(builder):
    def make(batch, seed=7):
        if builder == "completion":
            return P.random_low_rank_completion(4, 3, 1, 6, batch=batch, seed=seed)
        return P.random_sensing(4, 3, 1, 5, batch=batch, seed=seed)

    big = make(9)
    names = ("targets", "masks") if builder == "completion" else ("A", "y")
    for batch in (1, 4):
        small = make(batch)
        for name in names:
            np.testing.assert_array_equal(getattr(small, name), getattr(big, name)[:batch])
        np.testing.assert_array_equal(small.truth, big.truth[:batch])
    other = make(4, seed=8)
    assert not np.array_equal(other.truth, big.truth[:4])


@pytest.mark.parametrize("m,n,rank,K", [(3, 3, 1, 4), (2, 5, 2, 7), (6, 2, 1, 3)])
def test_random_sensing(m, n, rank, K):
    p = P.random_sensing(m, n, rank, K, batch=5, seed=1, std=0.5)
    assert p.kind == "sensing" and p.shape == (m, n) and p.batch == 5
    assert p.A.shape == (5, K, m, n) and p.y.shape == (5, K)
    np.testing.assert_allclose(p.y, np.einsum("bkij,bij->bk", p.A, p.truth), rtol=1e-13, atol=1e-13)
    for b in range(5):
        assert np.linalg.matrix_rank(p.truth[b]) == rank
    # the truth solves the problem
    f = ir.DeepFactorization(p, [p.truth])
    assert f.loss().max() < 1e-20


def test_random_sensing_std():
    p = P.random_sensing(4, 4, 1, 50, batch=20, seed=0, std=0.25)
    assert abs(p.A.std() / 0.25 - 1) < 0.03


def test_completion_shared_and_per_problem_inputs():
    rng = np.random.default_rng(0)
    t = rng.standard_normal((3, 2, 4))
    mk = rng.random((2, 4)) < 0.5
    p = ir.completion(t, mk)
    assert p.batch == 3 and p.shape == (2, 4) and p.masks.shape == (1, 2, 4)
    q = ir.completion(t[0], mk, batch=6)
    assert q.batch == 6 and q.targets.shape == (1, 2, 4)
    r = ir.completion(t[0].astype(np.int32), mk)  # integers are converted
    assert r.targets.dtype == np.float64 and r.batch == 1


def test_sensing_shared_and_per_problem_inputs():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 2, 3))
    y = rng.standard_normal((4, 5))
    p = ir.sensing(A, y)
    assert p.batch == 4 and p.shape == (2, 3) and p.A.shape == (1, 5, 2, 3)
    q = ir.sensing(A, y[0], batch=3)
    assert q.batch == 3 and q.y.shape == (1, 5)


def test_problem_inputs_are_copied():
    t = np.zeros((2, 2))
    mk = np.ones((2, 2), dtype=bool)
    p = ir.completion(t, mk)
    t[0, 0] = 5.0
    mk[0, 0] = False
    assert p.targets[0, 0, 0] == 0.0 and p.masks[0, 0, 0]
