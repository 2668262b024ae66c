"""Property tests over every public entry point: random shapes and dtypes, empty batches,
huge, tiny, NaN and infinite values, non-contiguous, Fortran-ordered and read-only arrays,
device arrays where no device is usable. Each call either works (and its answer is checked:
against the numpy reference backend, LAPACK or the definition) or raises ValueError,
TypeError or RuntimeError whose message names one of the arguments: never another
exception, a crash or a wrong answer.

The number of inputs tried is printed at the end of the module (and, with
IMPLICITREG_FUZZ_COUNTS=path, written there as JSON).
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import implicitreg as ir
from implicitreg import metrics as M
from implicitreg.sweep import DEFAULTS, expand

CUDA = ir.backends()["cuda"]["available"]
COUNTS: collections.Counter = collections.Counter()


def fuzz(n: int) -> settings:
    """n examples, no deadline (the first call of a kernel pays for its set-up); the rest
    from the active profile (HYPOTHESIS_PROFILE, tests/conftest.py)."""
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


# Values that break careless code: signed zeros, subnormals, the extremes of float64 and
# float32, NaN and the infinities.
SPECIAL = [
    0.0,
    -0.0,
    5e-324,
    1e-310,
    1e-300,
    1e-45,
    1e-30,
    1.0,
    -1.0,
    1e30,
    3.4e38,
    1e300,
    -1e300,
    1.7e308,
    -1.7e308,
    math.nan,
    math.inf,
    -math.inf,
]
REAL_DTYPES = ["float64", "float32", "float16", "int64", "int32", "uint8"]
BAD_DTYPES = ["bool", "complex128", "U2", "object"]


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    total = sum(COUNTS.values())
    line = f"fuzzed {total} inputs over {len(COUNTS)} entry points: " + ", ".join(
        f"{k} {v}" for k, v in sorted(COUNTS.items())
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line("\n" + line)
    path = os.environ.get("IMPLICITREG_FUZZ_COUNTS")
    if path:
        with open(path, "w") as fh:
            json.dump({"total": total, **COUNTS}, fh, indent=1)


@pytest.fixture(scope="module", autouse=True)
def _scarce_memory():
    """Fuzzed sizes meet a budget of 512 MiB, not the machine's memory: a size the machine
    could just about hold would take seconds (and, beside other work, all its memory) to
    allocate; the refusal path is the same."""
    import sys

    # sys.modules: the package's attribute "sweep" is the function, not the module
    mods = [sys.modules["implicitreg._checks"], sys.modules["implicitreg.sweep.plan"]]
    with pytest.MonkeyPatch.context() as mp:
        for mod in mods:
            mp.setattr(mod, "available_memory", lambda: 512 * 2**20)
        yield


class FakeDeviceArray:
    """What CuPy, Numba or PyTorch CUDA tensors look like to us: __cuda_array_interface__
    and no host buffer. Where the cuda backend is unavailable they must be refused clearly."""

    def __init__(self, shape=(2, 2, 2), typestr="<f8"):
        self.shape = shape
        self.dtype = np.dtype(typestr)
        self.ndim = len(shape)
        self.size = math.prod(shape)

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (0, False),
            "version": 3,
            "strides": None,
        }


def _names_one_of(msg: str, names) -> bool:
    """The message names one of the arguments (as 'name:' or 'name' as a word)."""
    return any(re.search(rf"(^|\W){re.escape(n)}(\W|$)", msg) for n in names)


def attempt(entry: str, fn, names):
    """fn() -> (True, result) or (False, exc) for a clear refusal; anything else fails."""
    COUNTS[entry] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return True, fn()
    except (ValueError, TypeError, RuntimeError) as exc:
        if isinstance(exc, Warning):  # a warning turned error: the call did not refuse
            raise AssertionError(f"{entry}: unexpected warning {exc!r}") from exc
        assert _names_one_of(str(exc), names), (
            f"{entry}: {type(exc).__name__} names none of {names}: {exc}"
        )
        return False, exc


@st.composite
def arrays(draw, shape=None, dtypes=None, max_dims=4, max_side=4, special=True):
    """An array of a random (or given) shape and dtype, with special values, in a random
    memory layout: C, Fortran, strided (non-contiguous) or read-only."""
    dtype = np.dtype(draw(st.sampled_from(dtypes or REAL_DTYPES)))
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, max_side), max_size=max_dims)))
    if dtype.kind == "f":
        width = {2: 16, 4: 32, 8: 64}[dtype.itemsize]
        finite = st.floats(-1e3, 1e3, width=width)
        elements = (
            st.one_of(finite, st.sampled_from(SPECIAL).map(dtype.type)) if special else finite
        )
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    elif dtype.kind == "b":
        elements = st.booleans()
    elif dtype.kind == "c":
        elements = st.complex_numbers(max_magnitude=1e3, width=128)
    elif dtype.kind == "U":
        elements = st.text(alphabet="abc", max_size=2)
    else:
        elements = st.integers(-3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 overflow of the special values: inf, wanted
        a = draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(layouts(a))


@st.composite
def layouts(draw, a):
    layout = draw(st.sampled_from(["C", "F", "strided", "readonly"]))
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        big = np.repeat(a, 2, axis=-1)
        a = big[..., ::2]
    elif layout == "readonly":
        a = a.copy()
        a.setflags(write=False)
    return a


def masks_like(shape):
    return arrays(shape=shape, dtypes=["bool"])


def _finite(x) -> bool:
    return bool(np.isfinite(np.asarray(x, dtype=np.float64)).all())


def _good_matrix_problem(kind, B, m, n, seed):
    g = np.random.default_rng(seed)
    if kind == "completion":
        masks = g.random((B, m, n)) < 0.6
        return ir.completion(g.standard_normal((B, m, n)), masks, batch=B)
    K = 3
    return ir.sensing(g.standard_normal((B, K, m, n)), g.standard_normal((B, K)), batch=B)


# ------------------------------------------------------------------------------ problems


@fuzz(200)
@given(
    targets=arrays(dtypes=REAL_DTYPES + BAD_DTYPES),
    data=st.data(),
    batch=st.one_of(st.none(), st.integers(-2, 5), st.sampled_from([2.0, 2.5, "2", True])),
)
def test_completion(targets, data, batch):
    same = data.draw(st.booleans())
    mshape = targets.shape if same else tuple(data.draw(st.lists(st.integers(0, 4), max_size=4)))
    masks = data.draw(arrays(shape=mshape, dtypes=["bool", "bool", "bool", "int8", "float64"]))
    ok, p = attempt(
        "completion",
        lambda: ir.completion(targets, masks, batch=batch),
        ("targets", "masks", "batch"),
    )
    if ok:
        t = np.asarray(targets, dtype=np.float64)
        assert p.targets.dtype == np.float64 and _finite(p.targets)
        assert p.targets.shape[1:] == t.shape[-2:] and p.masks.shape[1:] == t.shape[-2:]
        np.testing.assert_array_equal(p.targets.reshape(t.shape), t)
        np.testing.assert_array_equal(p.masks.reshape(np.shape(masks)), masks)
        assert p.batch >= 0 and p.targets.shape[0] in (1, p.batch)
        assert p.n_observed.shape == (p.batch,)
        if not targets.flags.writeable:  # the problem owns copies: never a read-only view
            assert p.targets.flags.writeable or p.targets.base is not targets


@fuzz(150)
@given(
    A=arrays(dtypes=REAL_DTYPES + ["bool", "complex128"], max_dims=5, max_side=3),
    data=st.data(),
    batch=st.one_of(st.none(), st.integers(-1, 4)),
)
def test_sensing(A, data, batch):
    K = A.shape[-3] if A.ndim >= 3 else data.draw(st.integers(0, 3))
    lead = data.draw(st.sampled_from([(), (1,), (A.shape[0],) if A.ndim == 4 else (2,), (3,)]))
    y = data.draw(arrays(shape=lead + (data.draw(st.sampled_from([K, K + 1])),)))
    ok, p = attempt("sensing", lambda: ir.sensing(A, y, batch=batch), ("A", "y", "batch"))
    if ok:
        assert _finite(p.A) and _finite(p.y) and p.A.dtype == np.float64
        assert p.A.shape[1] == p.y.shape[1] >= 1 and p.batch >= 0
        np.testing.assert_array_equal(p.A.reshape(A.shape), np.asarray(A, dtype=np.float64))


@fuzz(150)
@given(
    targets=arrays(dtypes=REAL_DTYPES + ["bool"], max_dims=7, max_side=3),
    data=st.data(),
    batch=st.one_of(st.none(), st.integers(-1, 4)),
)
def test_tensor_completion(targets, data, batch):
    drop = data.draw(st.sampled_from([0, 0, 1, -1]))
    shape = targets.shape[drop:] if drop >= 0 else (2,) + targets.shape
    masks = data.draw(masks_like(shape))
    ok, q = attempt(
        "tensor_completion",
        lambda: ir.tensor_completion(targets, masks, batch),
        ("targets", "masks", "batch"),
    )
    if ok:
        assert 2 <= q.order <= 6 and all(1 <= d <= 16 for d in q.dims)
        assert _finite(q.targets) and q.targets.dtype == np.float64
        assert q.n_observed.shape == (q.batch,)


@fuzz(60)
@given(
    name=st.sampled_from(
        [
            "paper_2x2",
            "perturbed_2x2",
            "paper_family",
            "random_low_rank_completion",
            "random_sensing",
        ]
    ),
    args=st.lists(
        st.one_of(
            st.integers(-2, 6),
            st.floats(allow_nan=True),
            st.sampled_from([None, "3", 10**15, True]),
        ),
        max_size=4,
    ),
    batch=st.one_of(st.integers(-1, 4), st.sampled_from([10**13, 2.0, None])),
)
def test_problem_builders(name, args, batch):
    fn = getattr(ir.problems, name)
    ok, p = attempt(
        f"problems.{name}",
        lambda: fn(*args, batch=batch),
        ("batch", "b12", "b21", "eps", "d", "m", "n", "rank", "n_obs", "n_meas", "seed", "std"),
    )
    if ok:
        assert p.batch >= 0
        for a in (p.targets, p.masks) if p.kind == "completion" else (p.A, p.y):
            assert a.shape[0] in (1, p.batch)
            assert _finite(a) if a.dtype != np.bool_ else True


# ------------------------------------------------------------------------ DeepFactorization


@st.composite
def matrix_problems(draw, max_batch=4):
    kind = draw(st.sampled_from(["completion", "sensing"]))
    B = draw(st.integers(0, max_batch))
    m, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return _good_matrix_problem(kind, B, m, n, draw(st.integers(0, 2**16)))


LRS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-2, 0.1, 0.0, -1e-2, 1e300, 5e-324, "0.1", None, True]),
    st.lists(st.floats(1e-4, 1e-1), min_size=0, max_size=5).map(np.array),
)
TOLS = st.one_of(st.none(), st.floats(allow_nan=True), st.sampled_from([1e-3, 0.0, -1.0, "x"]))


@fuzz(120)
@given(
    p=matrix_problems(),
    depth=st.one_of(st.integers(-1, 4), st.sampled_from([2.0, 2.5, "3", None])),
    widths=st.one_of(st.none(), st.integers(-1, 5), st.lists(st.integers(0, 5), max_size=3)),
    init=st.sampled_from(["normal", "identity", "balanced", "orthogonal", None]),
    scale=st.one_of(st.floats(allow_nan=True), st.sampled_from([1e-3, 0.3, 1e300, 5e-324])),
    scale_by=st.sampled_from(["factor", "product", "both"]),
    det=st.sampled_from([None, "positive", "negative", "zero"]),
    seed=st.one_of(st.integers(-1, 2**40), st.sampled_from([1.5, "0"])),
    dtype=st.sampled_from(["float64", "float32", "float16", "int32", np.float32, "x"]),
    backend=st.sampled_from(["cpu", "numpy", "cuda", "gpu"]),
)
def test_deep_factorization_init(
    p, depth, widths, init, scale, scale_by, det, seed, dtype, backend
):
    ok, f = attempt(
        "DeepFactorization.init",
        lambda: ir.DeepFactorization.init(
            p,
            depth=depth,
            widths=widths,
            init=init,
            scale=scale,
            scale_by=scale_by,
            det=det,
            seed=seed,
            dtype=dtype,
            backend=backend,
        ),
        ("depth", "widths", "init", "scale", "scale_by", "det", "seed", "dtype", "backend"),
    )
    if ok:
        assert f.batch == p.batch and f.depth == depth
        assert all(_finite(W) for W in f.factors)
        assert f.dims[0] == p.shape[1] and f.dims[-1] == p.shape[0]
        if det is not None and p.batch:
            d = f.det()
            assert ((d > 0) if det == "positive" else (d < 0)).all()


@fuzz(150)
@given(
    p=matrix_problems(),
    depth=st.integers(1, 3),
    scale=st.sampled_from([1e-3, 0.3, 3.0]),
    dtype=st.sampled_from(["float64", "float32"]),
    lr=LRS,
    steps=st.one_of(st.integers(-1, 50), st.sampled_from([2.0, 2.5, None])),
    tol=TOLS,
)
def test_deep_factorization_step_agrees_with_the_reference(p, depth, scale, dtype, lr, steps, tol):
    fs = [
        ir.DeepFactorization.init(p, depth, scale=scale, dtype=dtype, backend=b)
        for b in ("cpu", "numpy")
    ]
    results = [
        attempt(
            "DeepFactorization.step", lambda f=f: f.step(lr, steps, tol), ("lr", "steps", "tol")
        )
        for f in fs
    ]
    assert results[0][0] == results[1][0]  # both backends accept or refuse the same input
    if not results[0][0]:
        return
    a, b = fs
    for f in fs:  # a diverged problem is frozen at its last finite iterate
        assert all(_finite(W) for W in f.factors)
        assert set(f.status.tolist()) <= {"running", "converged", "diverged"}
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.frozen_at, b.frozen_at)
    big = max((float(np.abs(W).max(initial=0)) for W in b.factors), default=0)
    if big < 1e3 and (a.status != "diverged").all():
        rtol = 1e-9 if dtype == "float64" else 1e-3
        for Wa, Wb in zip(a.factors, b.factors, strict=True):
            np.testing.assert_allclose(Wa, Wb, rtol=rtol, atol=rtol * max(big, 1e-30))


METRIC_NAMES = st.sampled_from(
    [
        "loss",
        "entry:0,0",
        "entry:1,1",
        "entry:9,9",
        "entry:a",
        "det",
        "svals",
        "fro",
        "nuc",
        "spectral",
        "schatten:0.5",
        "schatten:-1",
        "schatten:nan",
        "erank",
        "rank",
        "dist_rank:1",
        "dist_rank:-2",
        "balancedness",
        "recon_error",
        "bogus",
        "loss:1",
        "",
    ]
)


@fuzz(100)
@given(
    p=matrix_problems(),
    metrics=st.one_of(st.lists(METRIC_NAMES, max_size=4), METRIC_NAMES, st.sampled_from([None, 3])),
    data=st.data(),
)
def test_deep_factorization_measure_and_fit(p, metrics, data):
    f = ir.DeepFactorization.init(p, 2, scale=0.3)
    ok, got = attempt("DeepFactorization.measure", lambda: f.measure(metrics), ("metrics",))
    if ok:
        names = [metrics] if isinstance(metrics, str) else list(dict.fromkeys(metrics))
        assert list(got) == names
        for v in got.values():
            assert v.shape[0] == p.batch
        if "loss" in got:
            np.testing.assert_allclose(got["loss"], f.loss(), rtol=1e-12)
        if "svals" in got and p.batch:
            np.testing.assert_allclose(
                got["svals"], np.linalg.svd(f.product(), compute_uv=False), rtol=1e-10, atol=1e-12
            )
    max_steps = data.draw(st.one_of(st.integers(-1, 300), st.sampled_from([None, 1.5])))
    log = data.draw(
        st.one_of(
            st.none(),
            st.tuples(st.sampled_from([ir.every, ir.geometric]), st.integers(0, 5)),
            st.sampled_from([5, "every:3", ir.every]),
        )
    )
    thresholds = data.draw(st.one_of(st.just(()), st.lists(st.floats(allow_nan=True), max_size=3)))
    g = ir.DeepFactorization.init(p, 2, scale=0.3)
    ok, t = attempt(
        "DeepFactorization.fit",
        lambda: g.fit(
            0.05,
            max_steps,
            log=log[0](log[1]) if isinstance(log, tuple) else log,
            metrics=metrics,
            thresholds=thresholds,
            progress=False,
        ),
        ("max_steps", "log", "metrics", "thresholds", "every", "geometric", "n", "k"),
    )
    if ok:
        assert t.batch == p.batch and t.steps.size >= 1
        assert t.steps[-1] <= max_steps and (np.diff(t.steps) > 0).all()
        if "loss" in t.metrics:
            assert np.isfinite(t["loss"]).all()


@fuzz(100)
@given(p=matrix_problems(), data=st.data())
def test_deep_factorization_explicit_factors(p, data):
    m, n = p.shape
    depth = data.draw(st.integers(1, 3))
    dims = [n] + [data.draw(st.integers(0, 4)) for _ in range(depth - 1)] + [m]
    factors = []
    for j in range(1, depth + 1):
        lead = data.draw(st.sampled_from([(), (p.batch,), (p.batch + 1,)]))
        shape = lead + (dims[j], dims[j - 1])
        if data.draw(st.integers(0, 9)) == 0:  # now and then a shape that does not chain
            shape = lead + (dims[j], dims[j - 1] + 1)
        factors.append(
            data.draw(arrays(shape=shape, dtypes=["float64", "float32", "int64", "bool"]))
        )
    if data.draw(st.integers(0, 9)) == 0:
        factors[data.draw(st.integers(0, depth - 1))] = FakeDeviceArray()
    dtype = data.draw(st.sampled_from([None, "float64", "float32"]))
    ok, f = attempt(
        "DeepFactorization(factors=)",
        lambda: ir.DeepFactorization(p, factors, dtype=dtype),
        ("factors", "dtype") + tuple(f"factors[{j}]" for j in range(depth)) + ("backend",),
    )
    if ok:
        for W, src in zip(f.factors, factors, strict=True):
            np.testing.assert_array_equal(
                W, np.broadcast_to(np.asarray(src, dtype=W.dtype), W.shape)
            )
            assert W.flags.c_contiguous and W.flags.writeable


# -------------------------------------------------------------------------- CPFactorization


@st.composite
def tensor_problems(draw):
    order = draw(st.integers(2, 4))
    dims = tuple(draw(st.integers(1, 4)) for _ in range(order))
    B = draw(st.integers(0, 3))
    g = np.random.default_rng(draw(st.integers(0, 2**16)))
    return ir.tensor_completion(
        g.standard_normal((B,) + dims), g.random((B,) + dims) < 0.5, batch=B
    )


@fuzz(100)
@given(
    q=tensor_problems(),
    rank=st.one_of(st.none(), st.integers(-1, 6), st.sampled_from([2000, 2.5, "2"])),
    scale=st.one_of(st.floats(allow_nan=True), st.sampled_from([1e-3, 0.5])),
    seed=st.one_of(st.integers(-1, 10), st.just(None)),
    dtype=st.sampled_from(["float64", "float32", "int8"]),
    lr=LRS,
    steps=st.one_of(st.integers(-1, 40), st.just(1.5)),
    tol=TOLS,
    optimizer=st.sampled_from(["gd", "group_rmsprop", "adam"]),
    beta=st.one_of(st.floats(allow_nan=True), st.just(0.99)),
    eps=st.one_of(st.floats(allow_nan=True), st.just(1e-6)),
)
def test_cp_factorization(q, rank, scale, seed, dtype, lr, steps, tol, optimizer, beta, eps):
    ok, c = attempt(
        "CPFactorization.init",
        lambda: ir.CPFactorization.init(q, rank=rank, scale=scale, seed=seed, dtype=dtype),
        ("rank", "scale", "seed", "dtype"),
    )
    if not ok:
        return
    assert c.batch == q.batch and all(_finite(U) for U in c.factors)
    ref = ir.CPFactorization(q, [U.copy() for U in c.factors], backend="numpy")
    ok, _ = attempt(
        "CPFactorization.step",
        lambda: c.step(lr, steps, tol, optimizer, beta, eps),
        ("lr", "steps", "tol", "optimizer", "beta", "eps"),
    )
    ok_ref, _ = attempt(
        "CPFactorization.step",
        lambda: ref.step(lr, steps, tol, optimizer, beta, eps),
        ("lr", "steps", "tol", "optimizer", "beta", "eps"),
    )
    assert ok == ok_ref
    if not ok:
        return
    assert all(_finite(U) for U in c.factors)
    np.testing.assert_array_equal(c.status, ref.status)
    big = max(float(np.abs(U).max(initial=0)) for U in ref.factors)
    if big < 1e3 and (c.status != "diverged").all():
        rtol = 1e-9 if dtype == "float64" else 1e-3
        for Ua, Ub in zip(c.factors, ref.factors, strict=True):
            np.testing.assert_allclose(Ua, Ub, rtol=rtol, atol=rtol * max(big, 1e-30))
    ok, t = attempt(
        "CPFactorization.fit",
        lambda: c.fit(
            0.01,
            20,
            log=ir.every(5),
            metrics=("loss", "recon_error", "component_norms"),
            optimizer=optimizer if optimizer != "adam" else "gd",
            progress=False,
        ),
        ("lr", "optimizer"),
    )
    if ok:
        assert np.isfinite(t["component_norms"]).all()


# ----------------------------------------------------------------------------- metrics


@fuzz(200)
@given(
    X=arrays(dtypes=REAL_DTYPES + ["bool", "complex128"], max_dims=4, max_side=5),
    backend=st.sampled_from([None, "cpu", "numpy", "cuda", "x"]),
    max_sweeps=st.one_of(st.just(40), st.integers(-1, 3), st.just(2.5)),
)
def test_svdvals_agrees_with_lapack(X, backend, max_sweeps):
    ok, got = attempt(
        "svdvals",
        lambda: ir.svdvals(X, backend=backend, return_info=True, max_sweeps=max_sweeps),
        ("X", "backend", "max_sweeps"),
    )
    if not ok:
        return
    s, info = got
    a = np.asarray(X)
    assert s.shape == a.shape[:-2] + (min(a.shape[-2:]),) and info.shape == a.shape[:-2]
    assert s.dtype == (a.dtype if a.dtype in (np.float32, np.float64) else np.float64)
    if a.size == 0:
        return
    x64 = a.astype(np.float64).reshape((-1,) + a.shape[-2:])
    flat_s, flat_info = s.reshape(x64.shape[0], -1), info.reshape(-1)
    eps = np.finfo(s.dtype).eps
    for k in range(x64.shape[0]):
        if not np.isfinite(x64[k]).all():
            assert flat_info[k] == "non_finite" and np.isnan(flat_s[k]).all()
            continue
        # beyond ~1e150 the squares LAPACK forms overflow too: compare in a scaled copy
        scale = max(float(np.abs(x64[k]).max()), 1e-300)
        with np.errstate(over="ignore"):  # sigma_1 may exceed the largest float: inf, skipped
            want = np.linalg.svd(x64[k] / scale, compute_uv=False) * scale
        if not np.isfinite(want).all() or flat_info[k] != "ok":
            continue
        tol = 64 * max(x64[k].shape) * eps * max(want[0], np.finfo(s.dtype).tiny)
        np.testing.assert_allclose(flat_s[k].astype(np.float64), want, rtol=0, atol=tol)


@fuzz(200)
@given(
    X=arrays(dtypes=REAL_DTYPES + ["bool"], max_dims=4, max_side=4),
    metric=st.sampled_from(
        ["frobenius", "nuclear", "spectral", "schatten", "effective_rank", "rank", "dist_to_rank"]
    ),
    as_svals=st.booleans(),
    param=st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-1, 3)),
    backend=st.sampled_from([None, "cpu", "numpy", "cuda"]),
)
def test_metrics_agree_with_their_definitions(X, metric, as_svals, param, backend):
    fn = getattr(M, metric)
    kwargs = {"backend": backend}
    if metric == "schatten":
        kwargs["p"] = param
    elif metric == "rank":
        kwargs["tol"] = param
    elif metric == "dist_to_rank":
        kwargs["r"] = param
    if as_svals:
        a = np.asarray(X)
        if a.ndim >= 1 and a.dtype.kind == "f":
            a = -np.sort(-np.abs(a), axis=-1)  # descending, non-negative (NaN last)
        arg = {"svals": a}
    else:
        arg = {"X": X}
    ok, v = attempt(
        f"metrics.{metric}", lambda: fn(**arg, **kwargs), ("X", "svals", "p", "tol", "r", "backend")
    )
    if not ok or as_svals:
        return
    a = np.asarray(X, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all() or np.abs(a).max() > 1e100:
        return
    s = np.linalg.svd(a, compute_uv=False)
    with np.errstate(all="ignore"):
        want = {
            # hypot, not sqrt(sum(s**2)), whose squares underflow below 1e-154
            "frobenius": lambda: np.hypot.reduce(s, axis=-1),
            "nuclear": lambda: s.sum(-1),
            "spectral": lambda: s[..., 0] if s.shape[-1] else np.zeros(s.shape[:-1]),
            "schatten": lambda: (s**param).sum(-1) ** (1 / param),
            "dist_to_rank": lambda: np.hypot.reduce(s[..., int(param) :], axis=-1),
        }.get(metric)
    if want is None:
        assert np.asarray(v).shape == a.shape[:-2]
        return
    with np.errstate(all="ignore"):
        w = want()
    if not np.isfinite(w).all():  # the plain definition overflows (s**p): nothing to compare
        return
    scale = max(float(s.max(initial=0)), 1e-300)
    tol = 1e-6 if np.asarray(X).dtype in (np.float32, np.float16) else 1e-9
    np.testing.assert_allclose(
        np.asarray(v, dtype=np.float64), w, rtol=tol, atol=tol * scale * max(1, s.shape[-1])
    )


@fuzz(60)
@given(
    T=arrays(dtypes=["float64", "float32", "int64", "bool"], max_dims=5, max_side=3),
    tol=st.one_of(st.floats(allow_nan=True), st.just(1e-6)),
    restarts=st.one_of(st.integers(-1, 2), st.just(1.5)),
    max_iter=st.one_of(st.integers(-1, 30), st.just(None)),
    max_rank=st.one_of(st.none(), st.integers(-1, 4)),
)
def test_tensor_rank(T, tol, restarts, max_iter, max_rank):
    ok, r = attempt(
        "tensor_rank",
        lambda: ir.tensor_rank(T, tol=tol, restarts=restarts, max_iter=max_iter, max_rank=max_rank),
        ("T", "tol", "restarts", "max_iter", "max_rank"),
    )
    if ok:
        a = np.asarray(T, dtype=np.float64)
        assert r.shape == (a.shape[0],) and r.dtype == np.int64
        flat = a.reshape(a.shape[0], int(np.prod(a.shape[1:])))  # an empty batch too
        # the default criterion is relative: only the zero tensor has rank 0, a tensor of
        # subnormals too has rank >= 1; a tensor with a NaN or inf entry gets -1
        bad = ~np.isfinite(flat).all(axis=1)
        zero = ~bad & (np.abs(flat).max(axis=1, initial=0) == 0)
        assert (r[bad] == -1).all() and (r[zero] == 0).all() and (r[~bad & ~zero] >= 1).all()


# ---------------------------------------------------------------------- device arrays


@pytest.mark.skipif(CUDA, reason="where the cuda backend works, device arrays are accepted")
@pytest.mark.parametrize(
    "entry,call,names",
    [
        ("completion", lambda d: ir.completion(d, np.ones((2, 2), bool)), ("targets",)),
        ("completion", lambda d: ir.completion(np.ones((2, 2)), d), ("masks",)),
        ("sensing", lambda d: ir.sensing(d, np.ones(2)), ("A",)),
        (
            "tensor_completion",
            lambda d: ir.tensor_completion(d, np.ones((2, 2), bool)),
            ("targets",),
        ),
        ("svdvals", lambda d: ir.svdvals(d), ("X", "backend")),
        ("metrics.nuclear", lambda d: M.nuclear(d), ("X", "backend")),
        ("metrics.rank", lambda d: M.rank(svals=d), ("svals", "backend")),
        (
            "metrics.balancedness",
            lambda d: M.balancedness([d, d]),
            ("factors", "factors[0]", "backend"),
        ),
        ("tensor_rank", lambda d: ir.tensor_rank(d), ("T", "backend")),
        (
            "DeepFactorization",
            lambda d: ir.DeepFactorization(ir.problems.paper_2x2(2), [d]),
            ("factors", "factors[0]", "backend"),
        ),
        (
            "CPFactorization",
            lambda d: ir.CPFactorization(
                ir.tensor_completion(np.ones((2, 2, 2)), np.ones((2, 2, 2), bool)), [d, d]
            ),
            ("factors", "factors[0]", "backend"),
        ),
        (
            "DeepFactorization.step",
            lambda d: ir.DeepFactorization.init(ir.problems.paper_2x2(2), 2).step(d),
            ("lr", "backend"),
        ),
    ],
)
def test_device_arrays_without_a_device_are_refused(entry, call, names):
    ok, _ = attempt(f"{entry} (device array)", lambda: call(FakeDeviceArray()), names)
    assert not ok


# ------------------------------------------------------------------------- sweep configs


CONFIG_VALUES = {
    "problem": st.sampled_from(
        [
            "paper_2x2",
            "perturbed_2x2",
            "paper_family",
            "random_low_rank_completion",
            "random_sensing",
            "nope",
        ]
    ),
    "depth": st.one_of(st.integers(-1, 4), st.just("2")),
    "lr": st.one_of(st.floats(allow_nan=True), st.sampled_from([0.05, 1e-3])),
    "scale": st.one_of(st.floats(allow_nan=True), st.sampled_from([0.3, 1e-3])),
    "max_steps": st.one_of(st.integers(-1, 30), st.just(2.5)),
    "log": st.sampled_from([3, 0, "every:5", "every:x", "often", None]),
    "metrics": st.sampled_from(
        [("loss",), ("loss", "det"), ("svals",), ("bogus",), "fro", ("lr",)]
    ),
    "thresholds": st.sampled_from([(), (0.5,), (0.1, 0.5), (math.nan,)]),
    "dtype": st.sampled_from(["float64", "float32", "int8"]),
    "init": st.sampled_from(["normal", "identity", "balanced", "bad"]),
    "tol": st.sampled_from([None, 1e-3, -1.0]),
    "m": st.integers(0, 4),
    "n": st.integers(0, 4),
    "target_rank": st.integers(0, 3),
    "n_obs": st.integers(-1, 10),
    "d": st.integers(0, 4),
    "eps": st.floats(allow_nan=True),
    "model": st.sampled_from(["dmf", "cp", "mlp"]),
    "bogus_key": st.just(1),
}


@fuzz(60)
@given(
    cfg=st.dictionaries(st.sampled_from(sorted(CONFIG_VALUES)), st.none(), max_size=6).flatmap(
        lambda d: st.fixed_dictionaries({k: CONFIG_VALUES[k] for k in d})
    ),
    seeds=st.one_of(st.integers(-1, 3), st.just(1.5)),
)
def test_sweep_configs(cfg, seeds, tmp_path_factory):
    base = {"max_steps": 20, "log": 3, "thresholds": (), **cfg}
    out = tmp_path_factory.mktemp("sweep") / "out"
    names = tuple(DEFAULTS) + (
        "config",
        "grid",
        "base",
        "seeds",
        "seed",
        "batch",
        "rank",
        "widths",
        "dims",
        "r",
        "p",
        "problem",
        "model",
        "factors",
        "lr",
        "tol",
        "metrics",
        "thresholds",
        "dtype",
    )
    ok, res = attempt("sweep", lambda: ir.sweep(base, seeds=seeds, progress=False, out=out), names)
    if ok:
        (c,) = expand(base)
        assert len(res.columns["seed"]) == seeds
        assert set(res.columns["status"].tolist()) <= {"converged", "diverged", "max_steps"}
        assert res.columns["steps"].max() <= c["max_steps"]
        assert os.path.exists(out / "results.npz")
    else:
        assert not os.path.exists(out)  # a refused sweep claims no directory


# ---------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: ir.DeepFactorization.init(ir.problems.paper_2x2(10**13), 3), "problem"),
        (lambda: ir.DeepFactorization(ir.problems.paper_2x2(10**13), [np.ones((2, 2))]), "factors"),
        (
            lambda: ir.CPFactorization.init(
                ir.tensor_completion(
                    np.ones((1, 4, 4, 4)), np.ones((1, 4, 4, 4), bool), batch=10**12
                )
            ),
            "problem",
        ),
        (lambda: ir.problems.random_low_rank_completion(30, 30, 2, 100, batch=10**11), "batch"),
        (lambda: ir.problems.random_sensing(10, 10, 2, 50, batch=10**11), "batch"),
        (lambda: ir.problems.random_cp_tensor((8, 8, 8), 2, batch=10**11), "batch"),
        (lambda: ir.sweep({"max_steps": 1}, seeds=10**12, progress=False), "seeds"),
    ],
)
def test_a_batch_too_large_for_memory_is_refused_before_allocation(call, name):
    COUNTS["memory refusal"] += 1
    with pytest.raises(ValueError, match=rf"^{name}: .*largest batch that fits is \d+") as e:
        call()
    fits = int(re.search(r"largest batch that fits is (\d+)", str(e.value)).group(1))
    assert 0 < fits < 10**13


def test_the_largest_batch_named_does_fit(monkeypatch):
    """With memory made scarce, the refusal's largest batch is accepted and one more is
    not."""
    import implicitreg._checks as checks

    monkeypatch.setattr(checks, "available_memory", lambda: 200 * 2**20)
    p = ir.problems.paper_2x2(10**6)
    with pytest.raises(ValueError, match="largest batch") as e:
        ir.DeepFactorization.init(p, 3)
    fits = int(re.search(r"largest batch that fits is (\d+)", str(e.value)).group(1))
    assert fits > 0
    f = ir.DeepFactorization.init(ir.problems.paper_2x2(fits), 3)
    assert f.batch == fits
    with pytest.raises(ValueError, match="largest batch"):
        ir.DeepFactorization.init(ir.problems.paper_2x2(fits + 1), 3)
