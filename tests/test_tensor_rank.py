"""Tensor-rank estimation by seeded CP-ALS bisection (csrc/cpu/tensor_rank.cpp, PAPER.md §4.5)
against the NumPy reference (reference.tensor_rank, cp_als_mse, als_start): recovery of the
rank of random CP tensors, the special values 0 and -1, determinism, identical results on
both backends, PAPER.md §7.1 item 9 on the paper's tensors, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import implicitreg as ir
from implicitreg import reference
from implicitreg._backend import _core
from implicitreg.baselines import memorizer
from implicitreg.problems import observe_first, random_cp_tensor


def _flat(X) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(X, dtype=np.float64).ravel())


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("dims", [(8, 8, 8), (5, 6, 7)])
@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_recovers_rank_of_random_cp_tensors(dims, rank):
    T, _ = random_cp_tensor(dims, rank, batch=3, seed=10 + rank)
    est = ir.tensor_rank(T, restarts=3)
    assert est.dtype == np.int64 and est.shape == (3,)
    np.testing.assert_array_equal(est, rank)
    # scale does not matter while the tensor is above the zero threshold
    np.testing.assert_array_equal(ir.tensor_rank(100 * T[:1], restarts=3), rank)


def test_order_2_and_4():
    """A matrix's CP rank is its rank; order 4 of rank 2."""
    rng = np.random.default_rng(3)
    M = rng.standard_normal((4, 6, 3)) @ rng.standard_normal((4, 3, 5))
    M[3, :, 2:] = 0  # rank 2
    np.testing.assert_array_equal(ir.tensor_rank(M, order=2), [3, 3, 3, 2])
    np.testing.assert_array_equal(np.linalg.matrix_rank(M), [3, 3, 3, 2])
    T, _ = random_cp_tensor((3, 4, 2, 3), 2, batch=2, seed=1)
    np.testing.assert_array_equal(ir.tensor_rank(T, restarts=3), [2, 2])


def test_zero_and_tiny_tensors_are_rank_0():
    X = np.zeros((5, 3, 4, 2))
    X[1] = 1e-8
    X[2, 0, 0, 0] = -1e-8
    X[3] = 1e-8
    X[3, 1, 2, 1] = 1.1e-8  # one entry above 1e-8: not zero, and any rank-1 fit is < tol
    X[4] = np.outer(np.arange(1, 4), np.ones(8)).reshape(3, 4, 2)
    for backend in ("cpu", "numpy"):
        np.testing.assert_array_equal(
            ir.tensor_rank(X, backend=backend, criterion="absolute"), [0, 0, 0, 1, 1]
        )
        # relative: scale-free, only the zero tensor is rank 0
        np.testing.assert_array_equal(ir.tensor_rank(X, backend=backend), [0, 1, 1, 2, 1])


def test_non_finite_tensor_is_minus_1_alone():
    T, _ = random_cp_tensor((4, 3, 5), 2, batch=5, seed=2)
    T[1, 0, 0, 0] = np.nan
    T[3, 3, 2, 4] = -np.inf
    want = [2, -1, 2, -1, 2]
    for backend in ("cpu", "numpy"):
        np.testing.assert_array_equal(ir.tensor_rank(T, restarts=2, backend=backend), want)
    Z = np.zeros((2, 2, 2, 2))
    Z[0, 1, 1, 1] = np.inf
    np.testing.assert_array_equal(ir.tensor_rank(Z), [-1, 0])


def test_max_rank_caps_the_answer():
    """When no r below max_rank fits, the answer is max_rank (PAPER.md §4.5's bisection)."""
    T, _ = random_cp_tensor((5, 6, 7), 4, batch=1, seed=14)
    assert ir.tensor_rank(T, restarts=3, max_rank=2)[0] == 2
    assert ir.tensor_rank(T, restarts=3, max_rank=4)[0] == 4
    # a looser tol accepts a lower rank
    assert ir.tensor_rank(T, tol=1.0, max_rank=4)[0] == 1


# --------------------------------------------------------------------------- determinism


def _dense(seed, shape, batch):
    """Generic dense tensors: their estimated rank depends on the ALS starts."""
    return np.random.default_rng(seed).standard_normal((batch,) + shape)


def test_starts_matter():
    """(so that the determinism tests below can fail) the ALS error depends on each of seed,
    index and restart, and the estimate of a generic tensor varies with them."""
    X = _flat(_dense(0, (3, 3, 3), 1))
    base = _core.cp_als_mse(X, [3, 3, 3], 4, 1e-6, 50, 0, 0, 0)
    for seed, index, restart in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        assert _core.cp_als_mse(X, [3, 3, 3], 4, 1e-6, 50, seed, index, restart) != base
    D = _dense(1, (2, 3, 2, 2), 6)
    assert len({tuple(ir.tensor_rank(D, seed=s, restarts=1).tolist()) for s in range(4)}) > 1


def test_deterministic():
    D = _dense(1, (2, 3, 2, 2), 6)
    first = ir.tensor_rank(D, seed=2, restarts=1)
    np.testing.assert_array_equal(ir.tensor_rank(D, seed=2, restarts=1), first)
    np.testing.assert_array_equal(ir.tensor_rank(D.copy(), seed=2, restarts=1), first)
    assert len(set(first.tolist())) > 1  # estimates vary over the batch: starts matter
    # result b depends only on (tensor, seed, b): same index, any companions
    other = D.copy()
    other[1::2] = _dense(7, (2, 3, 2, 2), 3)
    np.testing.assert_array_equal(ir.tensor_rank(other, seed=2, restarts=1)[::2], first[::2])
    for b in (0, 3, 5):
        alone = np.zeros((b + 1,) + D.shape[1:])
        alone[b] = D[b]
        assert ir.tensor_rank(alone, seed=2, restarts=1)[b] == first[b]
    assert ir.tensor_rank(D[:1], seed=2, restarts=1)[0] == first[0]
    np.testing.assert_array_equal(ir.tensor_rank(D[:4], seed=2, restarts=1), first[:4])


def test_cpu_backend_equals_numpy_backend():
    """Both backends draw the same starts (reference.als_start): identical estimates, also
    for generic tensors whose estimate depends on the starts."""
    D = _dense(1, (2, 3, 2, 2), 4)
    T, _ = random_cp_tensor((3, 4, 2), 2, batch=2, seed=4)
    for X, kw in ((D, dict(seed=2)), (D, dict(seed=3, restarts=2)), (T, dict(restarts=2))):
        cpu = ir.tensor_rank(X, **kw)
        np.testing.assert_array_equal(ir.tensor_rank(X, backend="numpy", **kw), cpu)


CASES = [  # (tensor maker, dims, r, seed, index, restart): fits well above round-off
    ("dense", (3, 4, 5), 1, 0, 0, 0),
    ("dense", (3, 4, 5), 2, 7, 3, 2),
    ("dense", (3, 4, 5), 3, 2**63 + 5, 11, 1),
    ("dense", (2, 3, 2, 2), 2, 5, 1, 4),
    ("cp2", (4, 5, 3), 1, 0, 0, 0),
    ("cp2", (4, 5, 3), 1, 3, 9, 2),
]


def _case_tensor(kind, dims):
    if kind == "dense":
        return _flat(_dense(5, dims, 1))
    return _flat(random_cp_tensor(dims, 2, seed=3)[0])


@pytest.mark.parametrize("kind,dims,r,seed,index,restart", CASES)
@pytest.mark.parametrize("max_iter", [1, 10, 40])
def test_cp_als_mse_matches_reference(kind, dims, r, seed, index, restart, max_iter):
    X = _case_tensor(kind, dims)
    a = _core.cp_als_mse(X, list(dims), r, 1e-30, max_iter, seed, index, restart)
    b = reference.cp_als_mse(X, list(dims), r, 1e-30, max_iter, seed, index, restart)
    assert b > 1e-6 * (X**2).mean()  # a real fit error, not round-off
    # one sweep from the same start: to rounding (this checks als_start against the core's
    # generator); more sweeps: to 1e-8
    assert abs(a - b) <= (1e-10 if max_iter == 1 else 1e-8) * b
    if max_iter > 1:  # ALS decreases the error
        assert b <= reference.cp_als_mse(X, list(dims), r, 1e-30, 1, seed, index, restart)


def test_cp_als_mse_stops_below_tol():
    """The fit stops at the first sweep with mse < tol: an exact rank-2 tensor reaches it."""
    T, _ = random_cp_tensor((4, 5, 3), 2, seed=3)
    X = _flat(T)
    for module in (_core, reference):
        assert module.cp_als_mse(X, [4, 5, 3], 2, 1e-6, 1000, 0, 0, 0) < 1e-6
        assert module.cp_als_mse(X, [4, 5, 3], 1, 1e-6, 1000, 0, 0, 0) > 1e-6
    assert _core.cp_als_mse(np.zeros(60), [4, 5, 3], 1, 1e-6, 1000, 0, 0, 0) == 0.0


def test_als_start_is_keyed_standard_normal():
    F = reference.als_start([3, 4, 5], 6, 1, 2, 3)
    assert [U.shape for U in F] == [(3, 6), (4, 6), (5, 6)]
    z = np.concatenate([U.ravel() for U in F])
    assert abs(z.mean()) < 0.4 and 0.6 < z.std() < 1.4
    big = np.concatenate([U.ravel() for U in reference.als_start([50] * 3, 40, 0, 0, 0)])
    assert abs(big.mean()) < 0.03 and abs(big.std() - 1) < 0.03
    for key in ((0, 2, 3), (1, 0, 3), (1, 2, 0)):
        assert not np.array_equal(reference.als_start([3, 4, 5], 6, *key)[0], F[0])
    np.testing.assert_array_equal(reference.als_start([3, 4, 5], 6, 1, 2, 3)[2], F[2])
    # the same stream, factor after factor: a prefix of the dims draws the same numbers
    np.testing.assert_array_equal(reference.als_start([3, 4], 6, 1, 2, 3)[1], F[1])


# --------------------------------------------------------------------------- paper tensors


def test_paper_targets_and_memorizer(anchor):
    """PAPER.md §7.1 item 9: the shipped targets are estimated as rank 1 and 3; the memorizer
    at n = 511 (order 3, rank-1 file; missing entry 0.0748, 0.0748^2 / 512 = 1.1e-5 > tol)
    as rank 2, and at n = 4095 of the order-4 file as rank 1 (§4.5: invisible entry)."""
    names = ["tensor_rank_1_fro_1_order_3_dim_8", "tensor_rank_3_fro_1_order_3_dim_8"]
    T = np.stack([anchor[f"{n}_target"] for n in names]).astype(np.float64)
    paper = {"criterion": "absolute"}  # the paper's rule, on which the §7.1 values rest
    np.testing.assert_array_equal(ir.tensor_rank(T, **paper), [1, 3])
    np.testing.assert_array_equal(ir.tensor_rank(T, restarts=3, seed=5, **paper), [1, 3])
    T4 = anchor["tensor_rank_1_fro_1_order_4_dim_8_target"].astype(np.float64)
    assert ir.tensor_rank(T4[None], **paper)[0] == 1
    order = anchor[f"{names[0]}_order"]
    M = memorizer(ir.tensor_completion(T[0], observe_first(order[None], 511, T[0].shape)))
    missing = T[0].ravel()[order[511]]
    assert abs(missing) == pytest.approx(0.0748, abs=1e-4)
    assert missing**2 / 512 > 1e-6
    assert ir.tensor_rank(M, **paper)[0] == 2
    np.testing.assert_array_equal(
        ir.tensor_rank(np.repeat(M, 3, 0), restarts=3, **paper), [2, 2, 2]
    )
    order4 = anchor["tensor_rank_1_fro_1_order_4_dim_8_order"]
    M4 = memorizer(ir.tensor_completion(T4, observe_first(order4[None], 4095, T4.shape)))
    assert T4.ravel()[order4[4095]] ** 2 / 4096 < 1e-6
    assert ir.tensor_rank(M4, **paper)[0] == 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "T,kw,exc,name",
    [
        (np.zeros((2, 3)), {}, ValueError, "T"),  # a single matrix: no batch axis
        (np.zeros(4), {}, ValueError, "T"),
        (np.zeros((1,) + (2,) * 7), {}, ValueError, "T"),  # order 7
        (np.zeros((1, 0, 2)), {"order": 2}, ValueError, "T"),
        ("tensor", {}, TypeError, "T"),
        (np.zeros((1, 2, 2), dtype=complex), {"order": 2}, TypeError, "T"),
        (np.zeros((1, 2, 2), dtype=bool), {"order": 2}, TypeError, "T"),
        (np.ones((1, 2, 2)), {"order": 2, "tol": 0.0}, ValueError, "tol"),
        (np.ones((1, 2, 2)), {"order": 2, "tol": -1e-6}, ValueError, "tol"),
        (np.ones((1, 2, 2)), {"order": 2, "tol": np.nan}, ValueError, "tol"),
        (np.ones((1, 2, 2)), {"order": 2, "tol": np.inf}, ValueError, "tol"),
        (np.ones((1, 2, 2)), {"order": 2, "tol": "1e-6"}, TypeError, "tol"),
        (np.ones((1, 2, 2)), {"order": 2, "tol": [1e-6]}, ValueError, "tol"),
        (
            np.ones((3, 3, 3)),
            {},
            ValueError,
            r"T: shape \(3, 3, 3\) is one order-3 tensor or a "
            "batch of 3 matrices",
        ),
        (np.ones((2, 2)), {"order": 3}, ValueError, "T"),
        (np.ones((2, 2)), {"order": 7}, ValueError, "order"),
        (np.ones((2, 2)), {"criterion": "paper"}, ValueError, "criterion"),
        (np.ones((1, 2, 2)), {"order": 2, "restarts": 0}, ValueError, "restarts"),
        (np.ones((1, 2, 2)), {"order": 2, "restarts": "3"}, TypeError, "restarts"),
        (np.ones((1, 2, 2)), {"order": 2, "restarts": 1.5}, TypeError, "restarts"),
        (np.ones((1, 2, 2)), {"order": 2, "max_iter": 0}, ValueError, "max_iter"),
        (np.ones((1, 2, 2)), {"order": 2, "max_iter": "10"}, TypeError, "max_iter"),
        (np.ones((1, 2, 2)), {"order": 2, "max_rank": 0}, ValueError, "max_rank"),
        (np.ones((1, 2, 2)), {"order": 2, "seed": -1}, ValueError, "seed"),
        (np.ones((1, 2, 2)), {"order": 2, "seed": "0"}, TypeError, "seed"),
        (np.ones((1, 2, 2)), {"order": 2, "backend": "gpu"}, ValueError, "backend"),
    ],
)
def test_bad_input(T, kw, exc, name):
    with pytest.raises(exc, match=f"^{name}"):
        ir.tensor_rank(T, **kw)


@pytest.mark.parametrize("kw", [{"seed": 2**64}, {"max_iter": 2**31}])
def test_out_of_range_integers_named(kw):
    name = next(iter(kw))
    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        ir.tensor_rank(np.ones((1, 2, 2)), order=2, **kw)


def test_integer_and_float32_input():
    T, _ = random_cp_tensor((3, 4, 5), 2, batch=2, seed=8)
    want = ir.tensor_rank(T)
    np.testing.assert_array_equal(want, [2, 2])
    np.testing.assert_array_equal(ir.tensor_rank(T.astype(np.float32)), want)
    X = np.zeros((1, 3, 3, 3), dtype=np.int64)
    X[0, 0, 0, 0] = X[0, 1, 1, 1] = 1
    assert ir.tensor_rank(X)[0] == 2


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_empty_batch(backend):
    T, _ = random_cp_tensor((3, 3, 3), 1, batch=0)
    assert T.shape == (0, 3, 3, 3)
    out = ir.tensor_rank(T, backend=backend)
    assert out.shape == (0,) and out.dtype == np.int64


def test_one_tensor_or_a_batch_by_order():
    """order= says which axes are the tensor: any leading axes are the batch, none is one
    tensor (a 0-d answer); without it the first axis is the batch."""
    T, _ = random_cp_tensor((3, 3, 3), 2, batch=4, seed=3)
    batch = ir.tensor_rank(T)
    assert batch.shape == (4,) and batch.tolist() == [2, 2, 2, 2]
    assert ir.tensor_rank(T[0], order=3).shape == () and int(ir.tensor_rank(T[0], order=3)) == 2
    np.testing.assert_array_equal(
        ir.tensor_rank(T.reshape(2, 2, 3, 3, 3), order=3), batch.reshape(2, 2)
    )
    np.testing.assert_array_equal(ir.tensor_rank(T, order=3), batch)


def test_relative_criterion_is_scale_free_and_the_paper_rule_is_not():
    T, _ = random_cp_tensor((4, 4, 4), 2, batch=2, seed=6)
    for scale in (1e-4, 1.0, 1e4):
        np.testing.assert_array_equal(ir.tensor_rank(scale * T), [2, 2])
    np.testing.assert_array_equal(ir.tensor_rank(1e-4 * T, criterion="absolute"), [1, 1])
    np.testing.assert_array_equal(ir.tensor_rank(1e200 * T), [2, 2])  # no overflow


def test_default_finds_exact_ranks_orders_3_and_4():
    """Random unit-norm CP tensors of known rank (orders 3 and 4, ranks 2 to 4, cubic and
    not): the defaults find every rank here, where the paper's single start misses some."""
    rng = np.random.default_rng(0)
    wrong_single, total = 0, 0
    for dims, r in (((4, 4, 4), 4), ((3, 4, 5), 3), ((2, 3, 4, 5), 4), ((4, 4, 4, 4), 2)):
        fs = [rng.standard_normal((16, d, r)) for d in dims]
        spec = ",".join(f"b{c}z" for c in "ijkl"[: len(dims)]) + "->b" + "ijkl"[: len(dims)]
        T = np.einsum(spec, *fs)
        T /= np.sqrt((T**2).sum(axis=tuple(range(1, T.ndim)), keepdims=True))
        np.testing.assert_array_equal(ir.tensor_rank(T), r)
        wrong_single += int((ir.tensor_rank(T, restarts=1, criterion="absolute") != r).sum())
        total += len(T)
    assert wrong_single > 0  # the case this default is for
