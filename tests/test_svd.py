"""The batched thin SVD (implicitreg.svd) against LAPACK: orthonormal factors, the
reconstruction and the values, on spectra that stress an SVD, up to 256 x 256."""

from __future__ import annotations

import numpy as np
import pytest

import implicitreg as ir
from conftest import check_svd, spectra

SHAPES = [(2, 2), (3, 5), (5, 3), (8, 8), (17, 5), (12, 31), (32, 32), (64, 40)]


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("shape", SHAPES)
def test_svd_against_lapack(shape, dtype, backend):
    X = spectra(np.random.default_rng(1), shape, 3).astype(dtype)
    U, S, Vh = ir.svd(X, backend=backend)
    assert U.shape == X.shape[:1] + (shape[0], min(shape)) and Vh.shape[-1] == shape[1]
    check_svd(X, U, S, Vh)


def test_svd_256(dtype):
    X = spectra(np.random.default_rng(2), (256, 256), 1).astype(dtype)
    check_svd(X, *ir.svd(X))


def test_svd_zero_nan_empty_and_leading_axes():
    X = np.zeros((2, 3, 4, 5))
    X[0, 1, :, 2] = 1.0
    X[1, 2, 0, 0] = np.nan
    U, S, Vh, info = ir.svd(X, return_info=True)
    assert U.shape == (2, 3, 4, 4) and S.shape == (2, 3, 4) and Vh.shape == (2, 3, 4, 5)
    assert info[1, 2] == "non_finite" and (info[0] == "ok").all()
    assert np.isnan(U[1, 2]).all() and np.isnan(S[1, 2]).all() and np.isnan(Vh[1, 2]).all()
    fin = np.ones((2, 3), bool)
    fin[1, 2] = False
    check_svd(X[fin], U[fin], S[fin], Vh[fin])  # the zero matrices too: orthonormal factors
    np.testing.assert_array_equal(S[0, 0], 0.0)
    U, S, Vh = ir.svd(np.zeros((3, 0, 4)))
    assert U.shape == (3, 0, 0) and S.shape == (3, 0) and Vh.shape == (3, 0, 4)
    U, S, Vh = ir.svd(np.arange(6).reshape(2, 3))  # integers: float64, no batch axis
    assert S.dtype == np.float64 and S.shape == (2,)
    np.testing.assert_allclose((U * S) @ Vh, np.arange(6).reshape(2, 3), atol=1e-13)


def test_svd_not_converged_warns():
    X = np.random.default_rng(3).standard_normal((2, 9, 9))
    with pytest.warns(RuntimeWarning, match="svd: 2 matrices did not converge"):
        ir.svd(X, max_sweeps=1)
    *_, info = ir.svd(X, max_sweeps=1, return_info=True)
    assert (info == "not_converged").all()


@pytest.mark.parametrize(
    "X, kw, exc, match",
    [
        (np.ones(3), {}, ValueError, "X: expected matrices"),
        (np.ones((2, 2)), {"max_sweeps": 0}, ValueError, "max_sweeps"),
        ("x", {}, TypeError, "X"),
    ],
)
def test_svd_bad_input(X, kw, exc, match):
    with pytest.raises(exc, match=match):
        ir.svd(X, **kw)
