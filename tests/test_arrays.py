"""Arrays from the ecosystem: the public API takes host arrays through DLPack or __array__
(PyTorch, JAX, anything that speaks either), without a copy where the memory allows, and
refuses anything else by argument name and type."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import implicitreg as ir
from implicitreg import _backend


class DLPackOnly:
    """A host array that speaks DLPack and nothing else (no __array__, no buffer)."""

    def __init__(self, a: np.ndarray):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


class ArrayOnly:
    """A host array that offers __array__ only."""

    def __init__(self, a: np.ndarray):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


class DLPackOnCuda(DLPackOnly):
    """A DLPack array that says it lives on a CUDA device."""

    def __dlpack_device__(self):
        return (2, 0)


WRAPPERS = [DLPackOnly, ArrayOnly]


def _rng():
    return np.random.default_rng(3)


@pytest.mark.parametrize("wrap", WRAPPERS, ids=lambda w: w.__name__)
def test_host_arrays_are_taken_without_a_copy(wrap):
    a = _rng().standard_normal((4, 3, 3))
    got = _backend.host_array(wrap(a))
    assert isinstance(got, np.ndarray) and np.shares_memory(got, a)
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("wrap", WRAPPERS, ids=lambda w: w.__name__)
def test_every_entry_point_takes_them_as_numpy(wrap):
    rng = _rng()
    X = rng.standard_normal((5, 4, 3))
    np.testing.assert_array_equal(ir.svdvals(wrap(X)), ir.svdvals(X))
    for metric in (ir.metrics.nuclear, ir.metrics.effective_rank, ir.metrics.frobenius):
        np.testing.assert_array_equal(metric(wrap(X)), metric(X))
    factors = [rng.standard_normal((5, 3, 3)) for _ in range(3)]
    np.testing.assert_array_equal(
        ir.metrics.balancedness([wrap(W) for W in factors]), ir.metrics.balancedness(factors)
    )

    targets, masks = rng.standard_normal((5, 3, 3)), rng.random((5, 3, 3)) < 0.5
    p = ir.problems.completion(wrap(targets), wrap(masks))
    q = ir.problems.completion(targets, masks)
    np.testing.assert_array_equal(p.arrays("float64")["target"], q.arrays("float64")["target"])
    np.testing.assert_array_equal(p.arrays("float64")["mask"], q.arrays("float64")["mask"])
    A, y = rng.standard_normal((5, 4, 3, 3)), rng.standard_normal((5, 4))
    s1, s2 = ir.problems.sensing(wrap(A), wrap(y)), ir.problems.sensing(A, y)
    np.testing.assert_array_equal(s1.arrays("float64")["A"], s2.arrays("float64")["A"])

    f = ir.DeepFactorization(q, [wrap(W) for W in factors]).step(0.01, 5)
    g = ir.DeepFactorization(q, factors).step(0.01, 5)
    for a, b in zip(f.factors, g.factors, strict=True):
        np.testing.assert_array_equal(a, b)

    T = rng.standard_normal((2, 3, 3, 3))
    tm = rng.random((2, 3, 3, 3)) < 0.7
    t1 = ir.problems.tensor_completion(wrap(T), wrap(tm))
    t2 = ir.problems.tensor_completion(T, tm)
    c1 = ir.CPFactorization.init(t1, rank=2, seed=1)
    U = [wrap(u) for u in c1.factors]
    c2 = ir.CPFactorization(t2, U)
    np.testing.assert_array_equal(c2.loss(), ir.CPFactorization(t2, c1.factors).loss())
    np.testing.assert_array_equal(ir.tensor_rank(wrap(T)), ir.tensor_rank(T))


@pytest.mark.parametrize("bad", [object(), {"a": 1}, {1, 2}], ids=["object", "dict", "set"])
def test_anything_else_is_refused_by_name_and_type(bad):
    name = type(bad).__name__
    with pytest.raises(TypeError, match=rf"X: expected an array .* got {name}"):
        ir.svdvals(bad)
    with pytest.raises(TypeError, match=rf"targets: expected an array .* got {name}"):
        ir.problems.completion(bad, np.ones((2, 2), bool))
    with pytest.raises(TypeError, match=rf"masks: expected an array .* got {name}"):
        ir.problems.completion(np.ones((2, 2)), bad)


def test_a_cuda_dlpack_array_is_a_device_array():
    x = DLPackOnCuda(np.ones((2, 2, 2)))
    assert _backend.is_device(x)
    with pytest.raises(TypeError, match="targets: expected a host array, got a device array"):
        ir.problems.completion(x, np.ones((2, 2), bool))
    if _backend.cuda_reason() is not None:
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available here"):
            ir.svdvals(x)


def test_pytorch_tensors():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    X = torch.randn(6, 4, 4, dtype=torch.float64)
    assert np.shares_memory(_backend.host_array(X), X.numpy())
    np.testing.assert_allclose(ir.svdvals(X), torch.linalg.svdvals(X).numpy(), rtol=1e-12)
    if torch.cuda.is_available() and _backend.cuda_reason() is None:
        Xc = X.cuda()
        got = ir.svdvals(Xc)  # a device array stays on the device
        np.testing.assert_allclose(_backend.to_host(got), ir.svdvals(X), rtol=1e-10)


JAX_CHECK = """
import numpy as np
import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp

import implicitreg as ir

rng = np.random.default_rng(0)
X = jnp.asarray(rng.standard_normal((6, 4, 4)))
np.testing.assert_allclose(
    ir.svdvals(X), np.asarray(jnp.linalg.svd(X, compute_uv=False)), rtol=1e-12
)
t = jnp.asarray(rng.standard_normal((3, 3)))
m = jnp.asarray(np.eye(3, dtype=bool))
p = ir.problems.completion(t, m)
np.testing.assert_array_equal(p.arrays("float64")["mask"][0], np.eye(3, dtype=bool))
np.testing.assert_array_equal(
    p.arrays("float64")["target"][0][np.eye(3, dtype=bool)], np.diag(np.asarray(t))
)
print("checked")
"""


def test_jax_arrays():
    """In a child process: JAX's threads would make every later fork of this one (Ray's
    workers) warn."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed")
    root = os.path.dirname(os.path.dirname(ir.__file__))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
    }
    r = subprocess.run(
        [sys.executable, "-c", JAX_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "checked"
