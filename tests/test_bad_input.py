"""Every bad input is refused before any work, with ValueError / TypeError naming the argument;
non-contiguous inputs are accepted and give the same results as contiguous ones."""

from __future__ import annotations

import numpy as np
import pytest

import implicitreg as ir
from conftest import RUNNING
from implicitreg import problems as P

NAN = float("nan")
M22 = np.array([[False, True], [True, True]])


def _model(B=2, backend="cpu", m=2, n=2, depth=2):
    p = ir.completion(np.ones((m, n)), np.ones((m, n), dtype=bool), batch=B)
    return ir.DeepFactorization.init(p, depth, scale=0.1, backend=backend)


def _factors(B=2, dims=(2, 2, 2), dtype=np.float64):
    return [np.full((B, dims[j], dims[j - 1]), 0.1, dtype=dtype) for j in range(1, len(dims))]


def _sq(B=2):
    return P.paper_2x2(B)


CASES = [
    # ------------------------------------------------------------------ problems
    ("targets 1-d", lambda: ir.completion(np.ones(4), np.ones(4, bool)), ValueError, "targets"),
    ("targets 4-d", lambda: ir.completion(np.ones((1, 1, 2, 2)), M22), ValueError, "targets"),
    (
        "targets empty",
        lambda: ir.completion(np.ones((0, 3)), np.ones((0, 3), bool)),
        ValueError,
        "targets",
    ),
    (
        "targets NaN observed",
        lambda: ir.completion([[0.0, NAN], [1.0, 0.0]], M22),
        ValueError,
        r"^targets: NaN at observed entry \(0, 1\) of problem 0",
    ),
    (
        "targets NaN observed by one",
        lambda: ir.completion([[NAN, 1.0], [1.0, 0.0]], np.stack([M22, ~M22])),
        ValueError,
        r"^targets: NaN at observed entry \(0, 0\) of problem 1",
    ),
    (
        "tensor targets NaN observed",
        lambda: ir.tensor_completion(np.full((1, 2, 2, 2), NAN), np.ones((1, 2, 2, 2), bool)),
        ValueError,
        "^targets: NaN at observed",
    ),
    (
        "targets beyond float32",
        lambda: ir.DeepFactorization.init(
            ir.completion([[1e300, 1.0], [1.0, 0.0]], M22), 2, dtype="float32"
        ),
        ValueError,
        r"^targets: 1e\+300 is not representable in float32",
    ),
    (
        "A beyond float32",
        lambda: ir.DeepFactorization.init(
            ir.sensing(np.full((3, 2, 2), -1e300), np.ones(3)), 2, dtype="float32"
        ),
        ValueError,
        r"^A: 1e\+300 is not representable in float32",
    ),
    (
        "tensor targets beyond float32",
        lambda: ir.CPFactorization.init(
            ir.tensor_completion(np.full((1, 2, 2, 2), 1e39), np.ones((1, 2, 2, 2), bool)),
            rank=2,
            dtype="float32",
        ),
        ValueError,
        "^targets: 1e\\+39 is not representable in float32",
    ),
    (
        "scale underflows in float32",
        lambda: ir.DeepFactorization.init(
            _sq(), 2, scale=1e-50, scale_by="factor", dtype="float32"
        ),
        ValueError,
        r"^scale: factors\[0\] drawn with scale=1e-50: 8 nonzero entries \(down to .*\) "
        "underflow to 0 in float32",
    ),
    (
        "CP scale underflows in float32",
        lambda: ir.CPFactorization.init(
            ir.tensor_completion(np.ones((1, 2, 2, 2)), np.ones((1, 2, 2, 2), bool)),
            rank=2,
            scale=1e-50,
            dtype="float32",
        ),
        ValueError,
        r"^scale: factors\[0\] .* underflow to 0",
    ),
    (
        "CP factors beyond float32",
        lambda: ir.CPFactorization(
            ir.tensor_completion(np.ones((1, 2, 2, 2)), np.ones((1, 2, 2, 2), bool)),
            [np.full((2, 2), 1e300)] * 3,
            dtype="float32",
        ),
        ValueError,
        r"^factors\[0\]: expected finite",
    ),
    ("targets inf", lambda: ir.completion([[0, np.inf], [1.0, 0.0]], M22), ValueError, "targets"),
    ("targets complex", lambda: ir.completion(np.ones((2, 2)) * 1j, M22), TypeError, "targets"),
    ("targets strings", lambda: ir.completion([["a", "b"], ["c", "d"]], M22), TypeError, "targets"),
    ("targets bool", lambda: ir.completion(M22, M22), TypeError, "targets"),
    ("masks int", lambda: ir.completion(np.ones((2, 2)), M22.astype(int)), TypeError, "masks"),
    ("masks float", lambda: ir.completion(np.ones((2, 2)), M22.astype(float)), TypeError, "masks"),
    (
        "masks shape",
        lambda: ir.completion(np.ones((2, 2)), np.ones((2, 3), bool)),
        ValueError,
        "masks",
    ),
    ("masks 1-d", lambda: ir.completion(np.ones((2, 2)), np.ones(4, bool)), ValueError, "masks"),
    (
        "masks batch",
        lambda: ir.completion(np.ones((3, 2, 2)), np.ones((2, 2, 2), bool)),
        ValueError,
        "masks",
    ),
    (
        "targets batch",
        lambda: ir.completion(np.ones((2, 2, 2)), np.ones((3, 2, 2), bool)),
        ValueError,
        "targets",
    ),
    (
        "explicit batch",
        lambda: ir.completion(np.ones((3, 2, 2)), M22, batch=4),
        ValueError,
        "targets",
    ),
    ("batch negative", lambda: ir.completion(np.ones((2, 2)), M22, batch=-1), ValueError, "batch"),
    ("batch float", lambda: ir.completion(np.ones((2, 2)), M22, batch=2.5), TypeError, "batch"),
    ("A 2-d", lambda: ir.sensing(np.ones((2, 2)), np.ones(2)), ValueError, "A"),
    ("y 3-d", lambda: ir.sensing(np.ones((3, 2, 2)), np.ones((1, 1, 3))), ValueError, "y"),
    ("y length", lambda: ir.sensing(np.ones((3, 2, 2)), np.ones(4)), ValueError, "y"),
    ("A NaN", lambda: ir.sensing(np.full((3, 2, 2), NAN), np.ones(3)), ValueError, "A"),
    ("y inf", lambda: ir.sensing(np.ones((3, 2, 2)), [1.0, np.inf, 0.0]), ValueError, "y"),
    ("A no measurements", lambda: ir.sensing(np.ones((0, 2, 2)), np.ones(0)), ValueError, "A"),
    ("y batch", lambda: ir.sensing(np.ones((3, 3, 2, 2)), np.ones((2, 3))), ValueError, "y"),
    ("A bool", lambda: ir.sensing(np.ones((3, 2, 2), bool), np.ones(3)), TypeError, "A"),
    ("eps 2-d", lambda: P.perturbed_2x2(eps=np.zeros((2, 2))), ValueError, "eps"),
    ("eps NaN", lambda: P.perturbed_2x2(eps=NAN), ValueError, "eps"),
    ("b12 batch", lambda: P.perturbed_2x2(b12=[1.0, 2.0], eps=[0.0, 0.1, 0.2]), ValueError, "b12"),
    ("family d=1", lambda: P.paper_family(1), ValueError, "d"),
    ("family d float", lambda: P.paper_family(2.5), TypeError, "d"),
    ("rank > min", lambda: P.random_low_rank_completion(3, 4, 4, 5), ValueError, "rank"),
    ("rank 0", lambda: P.random_low_rank_completion(3, 4, 0, 5), ValueError, "rank"),
    ("n_obs > mn", lambda: P.random_low_rank_completion(3, 4, 1, 13), ValueError, "n_obs"),
    ("n_obs 0", lambda: P.random_low_rank_completion(3, 4, 1, 0), ValueError, "n_obs"),
    ("m 0", lambda: P.random_low_rank_completion(0, 4, 1, 1), ValueError, "m"),
    (
        "seed negative",
        lambda: P.random_low_rank_completion(3, 4, 1, 5, seed=-1),
        ValueError,
        "seed",
    ),
    ("sensing batch", lambda: P.random_sensing(3, 4, 1, 5, batch=-2), ValueError, "batch"),
    ("n_meas 0", lambda: P.random_sensing(3, 4, 1, 0), ValueError, "n_meas"),
    ("std 0", lambda: P.random_sensing(3, 4, 1, 5, std=0.0), ValueError, "std"),
    ("std NaN", lambda: P.random_sensing(3, 4, 1, 5, std=NAN), ValueError, "std"),
    ("std string", lambda: P.random_sensing(3, 4, 1, 5, std="1"), TypeError, "std"),
    # ------------------------------------------------------------------ init
    ("problem", lambda: ir.DeepFactorization.init(np.ones((2, 2)), 2), TypeError, "problem"),
    (
        "problem explicit",
        lambda: ir.DeepFactorization(np.ones((2, 2)), _factors()),
        TypeError,
        "problem",
    ),
    ("depth 0", lambda: ir.DeepFactorization.init(_sq(), 0), ValueError, "depth"),
    ("depth -1", lambda: ir.DeepFactorization.init(_sq(), -1), ValueError, "depth"),
    ("depth float", lambda: ir.DeepFactorization.init(_sq(), 2.5), TypeError, "depth"),
    (
        "init unknown",
        lambda: ir.DeepFactorization.init(_sq(), 2, init="orthogonal"),
        ValueError,
        "init",
    ),
    (
        "backend unknown",
        lambda: ir.DeepFactorization.init(_sq(), 2, backend="gpu"),
        ValueError,
        "backend",
    ),
    (
        "backend unknown explicit",
        lambda: ir.DeepFactorization(_sq(), _factors(), backend="tpu"),
        ValueError,
        "backend",
    ),
    (
        "scale_by unknown",
        lambda: ir.DeepFactorization.init(_sq(), 2, scale_by="entry"),
        ValueError,
        "scale_by",
    ),
    ("det unknown", lambda: ir.DeepFactorization.init(_sq(), 2, det="pos"), ValueError, "det"),
    ("det True", lambda: ir.DeepFactorization.init(_sq(), 2, det=True), ValueError, "det"),
    ("scale 0", lambda: ir.DeepFactorization.init(_sq(), 2, scale=0.0), ValueError, "scale"),
    (
        "scale negative",
        lambda: ir.DeepFactorization.init(_sq(), 2, scale=-1e-3),
        ValueError,
        "scale",
    ),
    ("scale inf", lambda: ir.DeepFactorization.init(_sq(), 2, scale=np.inf), ValueError, "scale"),
    ("widths count", lambda: ir.DeepFactorization.init(_sq(), 3, widths=[2]), ValueError, "widths"),
    ("widths 0", lambda: ir.DeepFactorization.init(_sq(), 3, widths=[2, 0]), ValueError, "widths"),
    (
        "widths float",
        lambda: ir.DeepFactorization.init(_sq(), 2, widths=[2.5]),
        TypeError,
        "widths",
    ),
    (
        "dtype float16",
        lambda: ir.DeepFactorization.init(_sq(), 2, dtype="float16"),
        TypeError,
        "dtype",
    ),
    ("dtype int", lambda: ir.DeepFactorization.init(_sq(), 2, dtype=np.int32), TypeError, "dtype"),
    (
        "dtype garbage",
        lambda: ir.DeepFactorization.init(_sq(), 2, dtype="double-ish"),
        TypeError,
        "dtype",
    ),
    ("init seed", lambda: ir.DeepFactorization.init(_sq(), 2, seed=-3), ValueError, "seed"),
    ("init seed float", lambda: ir.DeepFactorization.init(_sq(), 2, seed=1.5), TypeError, "seed"),
    # ------------------------------------------------------------------ explicit factors
    (
        "factors array",
        lambda: ir.DeepFactorization(_sq(), np.ones((2, 2, 2))),
        TypeError,
        "factors",
    ),
    ("factors empty", lambda: ir.DeepFactorization(_sq(), []), TypeError, "factors"),
    (
        "factors dtype mix",
        lambda: ir.DeepFactorization(_sq(), [_factors()[0], _factors(dtype=np.float32)[1]]),
        TypeError,
        "factors",
    ),
    (
        "factors chain",
        lambda: ir.DeepFactorization(
            _sq(), _factors(dims=(2, 3, 4, 2))[:1] + _factors(dims=(2, 2, 3))[1:]
        ),
        ValueError,
        r"factors\[1\]",
    ),
    (
        "factors columns",
        lambda: ir.DeepFactorization(_sq(), _factors(dims=(3, 2, 2))),
        ValueError,
        r"factors\[0\]",
    ),
    (
        "factors rows",
        lambda: ir.DeepFactorization(_sq(), _factors(dims=(2, 2, 3))),
        ValueError,
        r"factors\[1\]",
    ),
    (
        "factors batch",
        lambda: ir.DeepFactorization(_sq(3), _factors(B=2)),
        ValueError,
        r"factors\[0\]",
    ),
    (
        "factors 4-d",
        lambda: ir.DeepFactorization(_sq(), [np.ones((1, 2, 2, 2))]),
        ValueError,
        r"factors\[0\]",
    ),
    ("factors 1-d", lambda: ir.DeepFactorization(_sq(), [np.ones(4)]), ValueError, r"factors\[0\]"),
    (
        "factors NaN",
        lambda: ir.DeepFactorization(_sq(), [_factors()[0], np.full((2, 2), NAN)]),
        ValueError,
        r"factors\[1\]",
    ),
    (
        "factors bool",
        lambda: ir.DeepFactorization(_sq(), [np.ones((2, 2, 2), bool)]),
        TypeError,
        r"factors\[0\]",
    ),
    (
        "factors int",
        lambda: ir.DeepFactorization(_sq(), [np.ones((2, 2, 2), int)]),
        TypeError,
        "factors",
    ),
    (
        "factors dtype arg",
        lambda: ir.DeepFactorization(_sq(), _factors(), dtype="float16"),
        TypeError,
        "dtype",
    ),
    # ------------------------------------------------------------------ step
    ("lr shape", lambda: _model(2).step(np.full(3, 0.1), 1), ValueError, "lr"),
    ("lr 2-d", lambda: _model(2).step(np.full((2, 1), 0.1), 1), ValueError, "lr"),
    ("lr negative", lambda: _model(2).step(-0.1, 1), ValueError, "lr"),
    ("lr one negative", lambda: _model(2).step([0.1, -0.1], 1), ValueError, "lr"),
    ("lr zero", lambda: _model(2).step(0.0, 1), ValueError, "lr"),
    ("lr NaN", lambda: _model(2).step(NAN, 1), ValueError, "lr"),
    ("lr inf", lambda: _model(2).step([0.1, np.inf], 1), ValueError, "lr"),
    ("lr string", lambda: _model(2).step("0.1", 1), TypeError, "lr"),
    ("lr complex", lambda: _model(2).step(0.1 + 0j, 1), TypeError, "lr"),
    ("steps negative", lambda: _model().step(0.1, -1), ValueError, "steps"),
    ("steps float", lambda: _model().step(0.1, 2.5), TypeError, "steps"),
    ("steps string", lambda: _model().step(0.1, "3"), TypeError, "steps"),
    ("steps bool", lambda: _model().step(0.1, True), TypeError, "steps"),
    ("steps array", lambda: _model().step(0.1, np.array([1, 2])), TypeError, "steps"),
    ("tol 0", lambda: _model().step(0.1, 1, 0.0), ValueError, "tol"),
    ("tol negative", lambda: _model().step(0.1, 1, -1e-3), ValueError, "tol"),
    ("tol NaN", lambda: _model().step(0.1, 1, NAN), ValueError, "tol"),
    ("tol string", lambda: _model().step(0.1, 1, "1e-3"), TypeError, "tol"),
    (
        "tol array",
        lambda: _model().step(0.1, 1, np.array([1e-3, 1e-4])),
        (TypeError, ValueError),
        "tol",
    ),
    # ------------------------------------------------------------------ fit and metrics
    ("max_steps negative", lambda: _model().fit(0.1, -5, progress=False), ValueError, "max_steps"),
    ("max_steps float", lambda: _model().fit(0.1, 1.5, progress=False), TypeError, "max_steps"),
    ("fit lr", lambda: _model().fit(-0.1, 5, progress=False), ValueError, "lr"),
    ("fit tol", lambda: _model().fit(0.1, 5, tol=-1.0, progress=False), ValueError, "tol"),
    (
        "metric unknown",
        lambda: _model().fit(0.1, 5, metrics=("loss", "ranks"), progress=False),
        ValueError,
        "rank",
    ),
    (
        "metric entry syntax",
        lambda: _model().fit(0.1, 5, metrics=("entry:0",), progress=False),
        ValueError,
        "entry:0",
    ),
    (
        "metric entry negative",
        lambda: _model().fit(0.1, 5, metrics=("entry:-1,0",), progress=False),
        ValueError,
        "entry",
    ),
    (
        "metric entry row",
        lambda: _model().fit(0.1, 5, metrics=("entry:2,0",), progress=False),
        ValueError,
        "entry:2,0",
    ),
    (
        "metric entry col",
        lambda: _model(m=2, n=3).fit(0.1, 5, metrics=("entry:1,3",), progress=False),
        ValueError,
        "entry:1,3",
    ),
    (
        "metric det non-square",
        lambda: _model(m=2, n=3).fit(0.1, 5, metrics=("det",), progress=False),
        ValueError,
        "det",
    ),
    (
        "metric not a string",
        lambda: _model().fit(0.1, 5, metrics=("loss", 3), progress=False),
        TypeError,
        "metrics",
    ),
    ("log", lambda: _model().fit(0.1, 5, log=10, progress=False), TypeError, "log"),
    ("every 0", lambda: ir.every(0), ValueError, "every"),
    ("every float", lambda: ir.every(1.5), TypeError, "every"),
    ("geometric 0", lambda: ir.geometric(0), ValueError, "geometric"),
    ("det() non-square", lambda: _model(m=2, n=3).det(), ValueError, "det"),
    # ------------------------------------------------------------------ sweeps
    (
        "metrics tuple in a grid",
        lambda: ir.sweep(
            {"problem": "paper_2x2", "max_steps": 5},
            {"metrics": [("loss", "erank")]},
            seeds=1,
            progress=False,
        ),
        TypeError,
        r"^metrics: expected metric names \(str\), got \('loss', 'erank'\)",
    ),
    (
        "sweep thresholds increasing",
        lambda: ir.sweep(
            {"problem": "paper_2x2", "max_steps": 5, "thresholds": (0.1, 0.2)},
            seeds=1,
            progress=False,
        ),
        ValueError,
        "^thresholds: expected .* got \\[0.1, 0.2\\]",
    ),
]


@pytest.mark.parametrize("call,exc,name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


def test_bad_step_leaves_the_model_untouched():
    f = _model(3)
    before = [W.copy() for W in f.factors]
    for call in (
        lambda: f.step([0.1, 0.1], 5),
        lambda: f.step(0.1, -1),
        lambda: f.fit(0.1, 5, metrics=("nope",), progress=False),
    ):
        with pytest.raises((ValueError, TypeError)):
            call()
    assert f.steps_done == 0
    for a, b in zip(f.factors, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("lr", [1e40, [0.1, 1e39]])
def test_lr_not_representable_in_float32_is_refused(lr):
    """lr is checked finite, then cast to the model's dtype: 1e40 becomes inf in float32 (a
    RuntimeWarning from the cast, then every problem 'diverges' at step 0)."""
    p = ir.problems.paper_2x2(2)
    f = ir.DeepFactorization.init(p, 2, scale=0.3, dtype="float32")
    with pytest.raises(ValueError, match="lr"):
        f.step(lr, 3)
    assert (f.status == RUNNING).all()


def test_unavailable_cuda_backend_says_why():
    info = ir.backends()["cuda"]
    if info["available"]:
        pytest.skip("a CUDA device is available here")
    with pytest.raises(RuntimeError, match="cuda") as e:
        ir.DeepFactorization.init(_sq(), 2, backend="cuda")
    assert info["reason"] in str(e.value)


def test_trajectory_unknown_metric_and_bad_file(tmp_path):
    t = _model().fit(0.1, 5, progress=False)
    with pytest.raises(KeyError, match="entry:0,0"):
        t["entry:0,0"]
    with pytest.raises(KeyError, match="det"):
        t.first_below("det", 0.1)
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    with pytest.raises(ValueError, match="path"):
        ir.load(bad)


# --------------------------------------------------------------------------- non-contiguous


def _noncontig_completion():
    rng = np.random.default_rng(3)
    t = rng.standard_normal((4, 6, 5))  # -> (4, 5, 6) via a transposed view
    mk = rng.random((8, 5, 6)) < 0.6  # -> every second problem, a strided slice
    targets = np.swapaxes(t, 1, 2)
    masks = mk[::2]
    assert not targets.flags.c_contiguous and not masks.flags.c_contiguous
    return (targets, masks), (np.ascontiguousarray(targets), np.ascontiguousarray(masks))


def _noncontig_sensing():
    rng = np.random.default_rng(4)
    A = np.swapaxes(rng.standard_normal((4, 7, 6, 5)), 2, 3)  # (4, 7, 5, 6)
    y = rng.standard_normal((4, 14))[:, ::2]
    assert not A.flags.c_contiguous and not y.flags.c_contiguous
    return (A, y), (np.ascontiguousarray(A), np.ascontiguousarray(y))


def _noncontig_factors():
    rng = np.random.default_rng(5)
    W1 = np.swapaxes(0.3 * rng.standard_normal((4, 6, 3)), 1, 2)  # (4, 3, 6), transposed
    W2 = (0.3 * rng.standard_normal((8, 3, 3)))[1::2]  # strided slice
    W3 = np.asfortranarray(0.3 * rng.standard_normal((4, 5, 3)))  # Fortran order
    W = [W1, W2, W3]
    assert not any(w.flags.c_contiguous for w in W)
    return W, [np.ascontiguousarray(w) for w in W]


@pytest.mark.parametrize("kind", ["completion", "sensing"])
def test_non_contiguous_inputs_give_the_contiguous_results(kind, backend, dtype):
    if kind == "completion":
        nc, c = _noncontig_completion()
        make = ir.completion
        lr = 0.05
    else:
        nc, c = _noncontig_sensing()
        make = ir.sensing
        lr = 2e-3
    W_nc, W_c = _noncontig_factors()
    lr_nc = np.full(8, lr)[::2]
    assert not lr_nc.flags.c_contiguous
    results = []
    for arrays, W, lrs in ((nc, W_nc, lr_nc), (c, W_c, np.full(4, lr))):
        f = ir.DeepFactorization(make(*arrays), W, backend=backend, dtype=dtype)
        loss0 = f.loss()
        f.step(lrs, 25)
        results.append((loss0, f.loss(), f.product(), f.factors))
    (l0a, la, Ea, Wa), (l0b, lb, Eb, Wb) = results
    np.testing.assert_array_equal(l0a, l0b)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(Ea, Eb)
    for a, b in zip(Wa, Wb, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (la < l0a).all()  # it did train


# --------------------------------------------------------------------------- the compiled core
# _core is importable directly, so it re-checks what would make C++ misread memory.


def _core_args(dtype=np.float64, B=3):
    p = P.paper_2x2(B)
    a = p.arrays(dtype)
    factors = [np.full((B, 2, 2), 0.1, dtype=dtype) for _ in range(2)]
    return dict(
        factors=factors,
        target=a["target"],
        mask=a["mask"],
        A=None,
        y=None,
        lr=np.full(1, 0.1, dtype=dtype),
        steps=3,
        tol=-np.inf,
        step0=0,
        status=np.zeros(B, np.int8),
        frozen_at=np.full(B, -1, np.int64),
    )


def _call_core(**changes):
    from implicitreg._backend import _core

    args = _core_args()
    args.update(changes)
    _core.dmf_step(**args)


CORE_CASES = [
    (
        "factors dtype",
        lambda: _call_core(factors=[np.full((3, 2, 2), 0.1, np.float32)] * 2),
        TypeError,
    ),
    ("factors int", lambda: _call_core(factors=[np.ones((3, 2, 2), np.int64)] * 2), TypeError),
    (
        "factors non-contiguous",
        lambda: _call_core(factors=[np.full((3, 2, 4), 0.1)[:, :, ::2], np.full((3, 2, 2), 0.1)]),
        ValueError,
    ),
    (
        "factors read-only",
        lambda: _call_core(
            factors=[np.broadcast_to(np.full((2, 2), 0.1), (3, 2, 2)), np.full((3, 2, 2), 0.1)]
        ),
        ValueError,
    ),
    (
        "factors chain",
        lambda: _call_core(factors=[np.full((3, 3, 2), 0.1), np.full((3, 2, 2), 0.1)]),
        ValueError,
    ),
    ("factors 2-d", lambda: _call_core(factors=[np.full((2, 2), 0.1)] * 2), ValueError),
    ("no factors", lambda: _call_core(factors=[]), ValueError),
    ("target shape", lambda: _call_core(target=np.zeros((1, 2, 3))), ValueError),
    ("target batch", lambda: _call_core(target=np.zeros((2, 2, 2))), ValueError),
    ("mask dtype", lambda: _call_core(mask=np.ones((1, 2, 2), np.float64)), TypeError),
    ("lr dtype", lambda: _call_core(lr=np.full(1, 0.1, np.float32)), TypeError),
    ("lr shape", lambda: _call_core(lr=np.full(2, 0.1)), ValueError),
    ("status dtype", lambda: _call_core(status=np.zeros(3, np.int64)), TypeError),
    ("status shape", lambda: _call_core(status=np.zeros(4, np.int8)), ValueError),
    ("frozen_at shape", lambda: _call_core(frozen_at=np.zeros(2, np.int64)), ValueError),
    ("steps negative", lambda: _call_core(steps=-1), ValueError),
]


@pytest.mark.parametrize("call,exc", [c[1:] for c in CORE_CASES], ids=[c[0] for c in CORE_CASES])
def test_core_rechecks_memory_layout(call, exc):
    with pytest.raises(exc, match="dmf_step"):
        call()


def test_core_valid_call_runs():
    from implicitreg._backend import _core

    args = _core_args()
    _core.dmf_step(**args)
    assert not np.array_equal(args["factors"][0], np.full((3, 2, 2), 0.1))


def test_factors_that_overflow_the_requested_dtype_are_refused():
    p = ir.completion(np.ones((1, 1)), np.ones((1, 1), bool))
    factors = [np.zeros((3, 1)), np.zeros((3, 3)), np.array([[0.0, 0.0, 1e300]])]
    with pytest.raises(ValueError, match=r"^factors\[2\]: expected finite values"):
        ir.DeepFactorization(p, factors, dtype="float32")
    ir.DeepFactorization(p, factors, dtype="float64")  # finite there


def test_a_family_problem_too_large_for_memory_is_refused():
    with pytest.raises(ValueError, match=r"^d: a 1000000000000 x 1000000000000 problem needs"):
        ir.problems.paper_family(10**12)


def test_an_empty_batch_is_a_batch_of_no_problems():
    p = ir.completion(np.zeros((0, 2, 2)), np.ones((0, 2, 2), bool))
    assert p.batch == 0
    f = ir.DeepFactorization.init(p, depth=2)
    f.step(1e-2, 3)
    assert f.factors[0].shape == (0, 2, 2) and f.steps_done == 3
    assert f.fit(1e-2, 10, progress=False)["loss"].shape[1] == 0


def test_a_file_that_is_not_an_archive_is_named_not_pickled_at(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    single = tmp_path / "one.npz"
    with open(single, "wb") as fh:
        np.save(fh, np.zeros(3))
    for path, why in ((text, "not an .npz archive"), (single, "a single .npy array")):
        for load in (ir.load, ir.DeepFactorization.load, ir.CPFactorization.load):
            with pytest.raises(ValueError, match=f"^path: {path} is not .*{why}") as err:
                load(path)
            assert "pickle" not in str(err.value)


def test_saving_into_a_missing_folder_names_the_folder(tmp_path):
    f = _model()
    target = tmp_path / "nodir" / "x.npz"
    with pytest.raises(FileNotFoundError, match=f"^path: the folder {tmp_path / 'nodir'} of "):
        f.save(target)
    assert list(tmp_path.iterdir()) == []


def test_sweep_thresholds_and_metrics_none_are_the_models_defaults():
    from implicitreg.sweep import MODEL_DEFAULTS

    dmf = ir.sweep(
        {"problem": "paper_2x2", "max_steps": 5, "thresholds": None}, seeds=1, progress=False
    )
    want = ["step@" + lab for lab in ("1e-1", "1e-2", "1e-3", "1e-4")]
    assert [c for c in dmf.columns if c.startswith("step@")] == want
    assert MODEL_DEFAULTS["dmf"]["thresholds"] == (1e-1, 1e-2, 1e-3, 1e-4)
    none = ir.sweep(
        {"problem": "paper_2x2", "max_steps": 5, "thresholds": ()}, seeds=1, progress=False
    )
    assert not any("@" in c for c in none.columns)
    cp = ir.sweep(
        {"model": "cp", "problem": "random_cp_completion", "max_steps": 5, "dim": 3, "n_obs": 10},
        seeds=1,
        progress=False,
    )  # every other key its default
    assert "recon_error" in cp.columns and not any("@" in c for c in cp.columns)


def test_nan_marks_an_unobserved_entry():
    """NaN where no problem observes the entry trains exactly as any other value there."""
    t = np.array([[NAN, 1.0], [2.0, -1.0]])
    zero = np.nan_to_num(t)
    runs = []
    for targets in (t, zero):
        f = ir.DeepFactorization.init(ir.completion(targets, M22), 3, scale=0.3)
        f.step(1e-2, 50)
        runs.append(f)
    for a, b in zip(runs[0].factors, runs[1].factors, strict=True):
        np.testing.assert_array_equal(a, b)
    q = ir.tensor_completion(
        np.where(np.eye(2, dtype=bool)[None, :, :, None], 1.0, NAN) * np.ones((1, 2, 2, 2)),
        np.eye(2, dtype=bool)[None, :, :, None] * np.ones((1, 2, 2, 2), bool),
    )
    assert np.isfinite(q.targets).all()


def test_svdvals_keep_relative_accuracy_down_to_the_stated_limit():
    """sigma_k / sigma_1 down to 1e-150 keeps ~13 digits (the limit is ~1.5e-154)."""
    rng = np.random.default_rng(0)
    for k in (50, 100, 150):
        d = np.array([1.0, 10.0**-k, 0.5 * 10.0**-k])
        X = np.diag(d)[rng.permutation(3)][:, rng.permutation(3)] * [[1], [-1], [1]]
        s = ir.svdvals(X[None])[0]
        np.testing.assert_allclose(s, d, rtol=1e-13, atol=0)


def test_an_absurd_size_is_refused_in_words_not_an_overflow():
    with pytest.raises(ValueError, match=r"^batch: .* needs about 2\^\d+ GiB"):
        P.random_sensing(10**160, 10**160, 1, 1, batch=3)
