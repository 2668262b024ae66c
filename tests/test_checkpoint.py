"""DeepFactorization.save / load: a resumed run is bit for bit the uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest

import implicitreg as ir
from conftest import CONVERGED, RUNNING

LR = np.array([0.1, 0.06, 0.03, 0.01])


def _problems():
    return {
        "paper_2x2": ir.problems.paper_2x2(4),  # shared problem arrays
        "completion": ir.problems.random_low_rank_completion(3, 4, 1, 8, batch=4, seed=2),
        "sensing": ir.problems.random_sensing(3, 2, 1, 5, batch=4, seed=2, std=0.3),
    }


@pytest.mark.parametrize("name", ["paper_2x2", "completion", "sensing"])
def test_resume_equals_uninterrupted_run(tmp_path, backend, dtype, name):
    p = _problems()[name]
    lr = LR if name != "sensing" else LR / 10
    f = ir.DeepFactorization.init(
        p, 3, widths=[3, 4], scale=0.3, seed=1, backend=backend, dtype=dtype
    )
    g = ir.DeepFactorization(p, f.factors, backend=backend)
    f.step(lr, 2500, tol=1e-5)
    f.step(lr, 500, tol=1e-5)
    g.step(lr, 2500, tol=1e-5)
    path = tmp_path / "ckpt.npz"
    g.save(path)
    assert [q.name for q in tmp_path.iterdir()] == ["ckpt.npz"]
    h = ir.DeepFactorization.load(path)
    assert h.backend == backend and h.dtype == np.dtype(dtype) and h.dims == g.dims
    assert h.steps_done == 2500 and h.batch == 4
    assert h.problem.kind == p.kind and h.problem.shape == p.shape and h.problem.batch == 4
    np.testing.assert_array_equal(h.status, g.status)
    np.testing.assert_array_equal(h.frozen_at, g.frozen_at)
    if p.truth is not None:
        np.testing.assert_array_equal(h.problem.truth, p.truth)
    else:
        assert h.problem.truth is None
    h.step(lr, 500, tol=1e-5)
    assert h.steps_done == f.steps_done
    np.testing.assert_array_equal(h.status, f.status)
    np.testing.assert_array_equal(h.frozen_at, f.frozen_at)
    for a, b in zip(h.factors, f.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(h.loss(), f.loss())


def test_frozen_state_survives_a_checkpoint(tmp_path):
    p = ir.problems.paper_2x2(4)
    f = ir.DeepFactorization.init(p, 2, scale=0.3, seed=0)
    f.step(LR, 300, tol=1e-6)
    assert CONVERGED in f.status and RUNNING in f.status
    f.save(tmp_path / "a.npz")
    g = ir.DeepFactorization.load(tmp_path / "a.npz", backend="numpy")
    assert g.backend == "numpy"
    conv = g.status == CONVERGED
    before = [W.copy() for W in g.factors]
    g.step(LR, 100)  # no tol: frozen problems stay frozen
    for a, b in zip(g.factors, before, strict=True):
        np.testing.assert_array_equal(a[conv], b[conv])
        assert not np.array_equal(a[~conv], b[~conv])


def test_checkpoints_and_trajectories_are_not_confused(tmp_path):
    f = ir.DeepFactorization.init(ir.problems.paper_2x2(2), 2, scale=0.3)
    t = f.fit(0.05, 10, progress=False)
    f.save(tmp_path / "model.npz")
    t.save(tmp_path / "traj.npz")
    with pytest.raises(ValueError, match="path"):
        ir.DeepFactorization.load(tmp_path / "traj.npz")
    with pytest.raises(ValueError, match="path"):
        ir.load(tmp_path / "model.npz")
