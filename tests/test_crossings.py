"""First crossings of loss thresholds (fit(thresholds=...), step(crossings=...)), exact to the
step however sparse the log; resumable fit(checkpoint=...); the recon_error metric; progress
callables."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import implicitreg as ir
import implicitreg.models.base as models_base
import implicitreg.ops as ops_mod
from conftest import BACKENDS, CONVERGED, DIVERGED, RUNNING, TRAJ_RUNNING

LR = np.array([0.1, 0.06, 0.03, 0.01, 0.004])  # the last ones do not cross 1e-3 in 1000 steps
THR = (1e-1, 1e-2, 1e-3)
METRICS = ("loss", "entry:0,0", "erank", "svals", "det")
HYP = settings(max_examples=5, deadline=None)


def _model(backend="cpu", dtype="float64", seed=0, batch=5, depth=3):
    return ir.DeepFactorization.init(
        ir.problems.paper_2x2(batch),
        depth,
        scale=0.3,
        scale_by="factor",
        seed=seed,
        backend=backend,
        dtype=dtype,
    )


def _fit(f, max_steps=1000, log=None, metrics=METRICS, thresholds=THR, lr=LR, **kw):
    return f.fit(
        lr,
        max_steps,
        log=ir.every(1) if log is None else log,
        metrics=metrics,
        thresholds=thresholds,
        progress=False,
        **kw,
    )


def _assert_dicts_equal(a: dict, b: dict):
    """Same keys, same arrays bit for bit (NaN equal to NaN), same dtypes."""
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k


def _assert_trajectories_equal(a: ir.Trajectory, b: ir.Trajectory):
    np.testing.assert_array_equal(a.steps, b.steps)
    _assert_dicts_equal(a.data, b.data)
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.frozen_at, b.frozen_at)
    assert (a.crossings is None) == (b.crossings is None)
    if a.crossings is not None:
        _assert_dicts_equal(a.crossings, b.crossings)
    assert json.dumps(a.meta, sort_keys=True) == json.dumps(b.meta, sort_keys=True)


def _dense_first_below(t: ir.Trajectory, thr: float):
    """(step (B,), row index or -1 (B,)) of the first logged row with loss < thr."""
    below = t["loss"] < thr
    hit = below.any(axis=0)
    row = np.where(hit, np.argmax(below, axis=0), -1)
    return np.where(hit, t.steps[row], -1), row


# ------------------------------------------------------------------ exact to the step


def test_crossings_equal_the_dense_log_bit_for_bit(backend, dtype):
    t = _fit(_model(backend, dtype))
    c = t.crossings
    B = len(LR)
    assert set(c) == {"thresholds", "step", *METRICS}
    np.testing.assert_array_equal(c["thresholds"], THR)
    assert c["thresholds"].dtype == np.float64
    assert c["step"].shape == (3, B) and c["step"].dtype == np.int64
    for name in METRICS:
        extra = (2,) if name == "svals" else ()
        assert c[name].shape == (3, B) + extra and c[name].dtype == np.float64
    # some problems cross every threshold, some none: both cases are exercised
    assert (c["step"] >= 0).all(axis=0).any() and (c["step"] < 0).all(axis=0).any()
    np.testing.assert_array_equal(t.steps, np.arange(1001))
    for k, thr in enumerate(THR):
        step, row = _dense_first_below(t, thr)
        np.testing.assert_array_equal(c["step"][k], step)
        exact = t.first_below("loss", thr)
        np.testing.assert_array_equal(exact["step"], step)
        for b in range(B):
            if row[b] < 0:
                assert all(np.isnan(c[name][k, b]).all() for name in METRICS)
                continue
            r = row[b]
            for name in METRICS:
                np.testing.assert_array_equal(c[name][k, b], t[name][r, b], err_msg=name)
                np.testing.assert_array_equal(exact[name][b], t[name][r, b], err_msg=name)
            assert c["loss"][k, b] < thr
            if r > 0:
                assert t["loss"][r - 1, b] >= thr
    # thresholds crossed in order
    crossed = c["step"] >= 0
    assert (crossed[1:] <= crossed[:-1]).all()
    both = crossed[1:] & crossed[:-1]
    assert (c["step"][1:][both] >= c["step"][:-1][both]).all()


@pytest.mark.parametrize("log", [ir.every(1000), ir.geometric(5), ir.every(333)], ids=repr)
def test_crossings_do_not_depend_on_the_log(backend, log):
    dense = _fit(_model(backend))
    sparse = _fit(_model(backend), log=log)
    assert sparse.steps.size < 10
    _assert_dicts_equal(sparse.crossings, dense.crossings)
    for thr in THR:  # first_below at a fitted threshold is exact, not read from the rows
        _assert_dicts_equal(sparse.first_below("loss", thr), dense.first_below("loss", thr))
    # at a threshold that was not given, first_below reads the (sparse) rows
    approx = sparse.first_below("loss", 5e-2)
    assert set(np.unique(approx["step"])) <= set(sparse.steps.tolist()) | {-1}


def test_crossing_snapshots_are_the_iterates_at_the_crossing_steps(backend):
    f = _model(backend)
    c = f.crossings(THR)
    f.step(LR, 1000, crossings=c)
    t = _fit(_model(backend), log=ir.every(1000))
    np.testing.assert_array_equal(c.step.T, t.crossings["step"])
    # measuring the recorded snapshots gives the trajectory's crossing metrics
    for k in range(len(THR)):
        g = ir.DeepFactorization(f.problem, [S[:, k] for S in c.factors], backend=backend)
        got = g.measure(METRICS)
        hit = c.step[:, k] >= 0
        for name in METRICS:
            np.testing.assert_array_equal(got[name][hit], t.crossings[name][k][hit])
    # and replaying plain steps to a crossing step gives the same factors
    b, k = 2, 1
    s = int(c.step[b, k])
    g = _model(backend)
    g.step(LR, s)
    for W, S in zip(g.factors, c.factors, strict=True):
        np.testing.assert_array_equal(W[b], S[b, k])


CASES = {
    # name: (problem(seed), depth, widths, init scale, stable learning rates)
    "2x2 depth 2": (lambda s: ir.problems.paper_2x2(4), 2, None, 0.3, [0.1, 0.06, 0.03, 0.01]),
    "2x2 depth 3": (lambda s: ir.problems.paper_2x2(4), 3, None, 0.5, [0.05, 0.03, 0.02, 0.01]),
    "2x2 depth 4": (lambda s: ir.problems.paper_2x2(4), 4, None, 0.6, [0.03, 0.02, 0.01, 0.005]),
    "3x3": (lambda s: ir.problems.paper_family(3, 4), 3, None, 0.5, [0.03, 0.02, 0.01, 0.005]),
    "sensing": (
        lambda s: ir.problems.random_sensing(3, 3, 1, 6, batch=4, seed=s, std=0.3),
        3,
        None,
        0.5,
        [0.05, 0.03, 0.02, 0.01],
    ),
    "completion 3x4": (
        lambda s: ir.problems.random_low_rank_completion(3, 4, 1, 8, batch=4, seed=s),
        3,
        [3, 4],
        0.5,
        [0.03, 0.02, 0.01, 0.005],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@HYP
@given(seed=st.integers(0, 2**20))
def test_cpu_and_numpy_cross_at_the_same_steps(case, seed):
    make, depth, widths, scale, lr = CASES[case]
    square = case != "completion 3x4"
    metrics = METRICS if square else ("loss", "entry:0,0", "erank", "svals", "recon_error")
    a, b = (
        ir.DeepFactorization.init(
            make(seed), depth, widths=widths, scale=scale, scale_by="factor", seed=seed, backend=be
        ).fit(np.array(lr), 500, log=ir.every(250), metrics=metrics, thresholds=THR, progress=False)
        for be in BACKENDS
    )
    np.testing.assert_array_equal(a.crossings["step"], b.crossings["step"])
    assert (a.crossings["step"][0] >= 0).any()
    hit = a.crossings["step"] >= 0
    for name in metrics:
        x, y = a.crossings[name], b.crossings[name]
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        assert np.isnan(x[~hit]).all()
        scale_ = np.abs(y[hit]).max()
        np.testing.assert_allclose(x[hit], y[hit], rtol=1e-10, atol=1e-10 * scale_, err_msg=name)


# ------------------------------------------------------------------ never, diverged, same step


def test_a_problem_that_never_crosses_has_step_minus_one_and_nan(backend):
    t = _fit(_model(backend, batch=2), max_steps=50, lr=np.array([0.1, 1e-6]), log=ir.every(25))
    c = t.crossings
    np.testing.assert_array_equal(c["step"][:, 1], -1)
    for name in METRICS:
        assert np.isnan(c[name][:, 1]).all(), name
    assert (t["loss"][:, 1] > THR[0]).all()
    got = t.first_below("loss", 1e-2)
    assert got["step"][1] == -1 and np.isnan(got["det"][1])


def test_a_diverged_problem_records_nothing_and_does_not_disturb_the_others(backend):
    lr_ok = np.array([0.1, 0.06, 0.03])
    lr_bad = np.array([0.1, 50.0, 0.03])
    metrics = ("loss", "entry:0,0", "erank", "svals", "det")
    ref = _fit(_model(backend, batch=3), max_steps=600, lr=lr_ok, log=ir.every(50), metrics=metrics)
    t = _fit(_model(backend, batch=3), max_steps=600, lr=lr_bad, log=ir.every(50), metrics=metrics)
    assert t.status[1] == DIVERGED and list(t.status[[0, 2]]) == [TRAJ_RUNNING] * 2
    assert 0 <= t.frozen_at[1] < 10
    assert (ref.crossings["step"][:, 1] >= 0).any()  # it would have crossed with a sane lr
    np.testing.assert_array_equal(t.crossings["step"][:, 1], -1)
    assert all(np.isnan(t.crossings[name][:, 1]).all() for name in metrics)
    for key in ("step", *metrics):
        np.testing.assert_array_equal(t.crossings[key][:, [0, 2]], ref.crossings[key][:, [0, 2]])
    for name in metrics:
        np.testing.assert_array_equal(t[name][:, [0, 2]], ref[name][:, [0, 2]])

    # crossed, then diverged: what was recorded stays, nothing new comes after
    f = _model(backend, batch=3)
    c = f.crossings(THR)
    f.step(lr_ok, 55, crossings=c)  # problem 0 crosses 1e-1 at 51, 1e-2 at 57
    assert c.step[0, 0] >= 0 and c.step[0, 2] == -1
    before = c.step.copy(), [S.copy() for S in c.factors]
    f.step(np.array([1e4, 0.06, 0.03]), 5, crossings=c)
    assert f.status[0] == DIVERGED
    f.step(lr_ok, 1000, crossings=c)  # frozen: a sane lr brings no crossing either
    assert f.status[0] == DIVERGED
    np.testing.assert_array_equal(c.step[0], before[0][0])
    for S, S0 in zip(c.factors, before[1], strict=True):
        np.testing.assert_array_equal(S[0], S0[0])
    assert (c.step[1:] >= 0).all()  # the others went on


def test_thresholds_crossed_at_one_step_share_it(backend):
    """Problem 0 starts at an exact solution: every threshold is crossed at step 0. Very close
    thresholds are crossed by the same update for the others."""
    p = ir.problems.paper_2x2(3)
    W1 = np.stack([np.eye(2), *_model(batch=3, depth=2).factors[0][1:]])
    W2 = np.stack([[[0.0, 1.0], [1.0, 0.0]], *_model(batch=3, depth=2).factors[1][1:]])
    thr = (1e-1, 0.99999999e-1, 1e-4, 1e-8)
    for steps_before in (0, 7):
        f = ir.DeepFactorization(p, [W1, W2], backend=backend)
        f.step(0.1, steps_before)
        t = f.fit(
            np.array([0.1, 0.1, 0.05]),
            400,
            log=ir.every(400),
            metrics=METRICS,
            thresholds=thr,
            progress=False,
        )
        c = t.crossings
        np.testing.assert_array_equal(c["step"][:, 0], steps_before)  # steps_done at the start
        assert (c["loss"][:, 0] == 0).all()
        np.testing.assert_array_equal(c["step"][0, 1:], c["step"][1, 1:])
        assert (c["step"][0, 1:] > steps_before).all()
        for name in METRICS:
            np.testing.assert_array_equal(c[name][0], c[name][1])
            np.testing.assert_array_equal(
                c[name][:, 0], np.broadcast_to(c[name][0, 0], c[name][:, 0].shape)
            )


def test_thresholds_below_tol_are_never_crossed(backend):
    tol = 5e-3
    t = _fit(_model(backend), log=ir.every(100), tol=tol)
    c = t.crossings
    conv = t.status == CONVERGED
    assert conv.any()
    np.testing.assert_array_equal(c["step"][2, conv], -1)  # 1e-3 < tol: frozen before
    assert (c["step"][1, conv] >= 0).all() and (c["step"][1, conv] <= t.frozen_at[conv]).all()
    dense = _fit(_model(backend), tol=tol)
    _assert_dicts_equal(c, dense.crossings)


# ------------------------------------------------------------------ across calls


@pytest.mark.parametrize("chunked", [False, True], ids=["calls", "kernel-chunks"])
def test_crossings_continue_across_step_calls(backend, chunked, monkeypatch):
    f, g = _model(backend), _model(backend)
    cf, cg = f.crossings(THR), g.crossings(THR)
    g.step(LR, 1000, crossings=cg)
    if chunked:  # one kernel call per step inside a single step() call
        monkeypatch.setitem(models_base.WORK_PER_CALL, backend, 1)
        f.step(LR, 1000, crossings=cf)
    else:
        for _ in range(10):
            f.step(LR, 100, crossings=cf)
    assert f.steps_done == g.steps_done == 1000
    assert (cg.step >= 0).any() and (cg.step < 0).any()
    np.testing.assert_array_equal(cf.step, cg.step)
    for a, b in zip(cf.factors, cg.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(f.factors, g.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    t = _fit(_model(backend), log=ir.every(1000))
    np.testing.assert_array_equal(cf.step.T, t.crossings["step"])


def test_a_second_fit_records_its_own_crossings():
    f = _model()
    first = _fit(f, max_steps=300, log=ir.every(300))
    second = _fit(f, max_steps=300, log=ir.every(300))
    a, b = first.crossings["step"], second.crossings["step"]
    # already below at the start of the second fit: crossed at its first iterate
    np.testing.assert_array_equal(b[a >= 0], 300)
    g = _model()
    c = g.crossings(THR)
    g.step(LR, 300)
    g.step(LR, 300, crossings=c)
    np.testing.assert_array_equal(c.step.T, b)


# ------------------------------------------------------------------ bad thresholds

BAD_THRESHOLDS = [
    ((1e-2, 1e-1), ValueError),
    ((1e-1, 1e-1), ValueError),
    ((1e-1, -1e-2), ValueError),
    ((0.0,), ValueError),
    ((np.nan,), ValueError),
    ((1e-1, np.nan), ValueError),
    ((np.inf, 1e-1), ValueError),
    ([[1e-1], [1e-2]], ValueError),
    (np.full((2, 2), 0.1), ValueError),
    (("1e-1", "1e-2"), TypeError),
    ("1e-2", TypeError),
    ((True, False), TypeError),
    ((1e-1, 1e-2j), TypeError),
]


@pytest.mark.parametrize("thresholds, exc", BAD_THRESHOLDS, ids=repr)
def test_bad_thresholds_are_refused_before_any_step(backend, thresholds, exc):
    f = _model(backend)
    W0 = [W.copy() for W in f.factors]
    with pytest.raises(exc, match="thresholds"):
        f.fit(LR, 100, thresholds=thresholds, progress=False)
    with pytest.raises(exc, match="thresholds"):
        f.crossings(thresholds)
    assert f.steps_done == 0
    for a, b in zip(f.factors, W0, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("thresholds, k", [((), 0), (None, 0), (1e-2, 1), ([1, 0.5], 2)])
def test_no_thresholds_and_scalar_thresholds(thresholds, k):
    f = _model()
    t = f.fit(LR, 10, thresholds=thresholds, progress=False)
    assert f.crossings(thresholds).step.shape == (len(LR), k)
    if k == 0:
        assert t.crossings is None
    else:
        assert t.crossings["step"].shape == (k, len(LR))
        np.testing.assert_array_equal(
            t.crossings["thresholds"], np.atleast_1d(np.asarray(thresholds, dtype=float))
        )


def test_a_threshold_beyond_float32_gives_no_warning():
    f = _model(dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            t = _fit(f, max_steps=10, thresholds=(1e40, 1e-1), log=ir.every(10))
        except ValueError as exc:  # refusing it, naming thresholds, would be fine too
            assert "thresholds" in str(exc)
        else:
            np.testing.assert_array_equal(t.crossings["step"][0], 0)


# ------------------------------------------------------------------ save / load


def test_trajectory_save_load_roundtrips_crossings(tmp_path):
    t = _fit(_model(), log=ir.geometric(8), tol=1e-6)
    t.save(tmp_path / "t.npz")
    u = ir.load(tmp_path / "t.npz")
    _assert_trajectories_equal(u, t)
    for thr in (*THR, 3e-2):
        _assert_dicts_equal(u.first_below("loss", thr), t.first_below("loss", thr))
    # and without thresholds, none come back
    t0 = _fit(_model(), max_steps=10, thresholds=(), log=ir.every(5))
    t0.save(tmp_path / "t0.npz")
    assert ir.load(tmp_path / "t0.npz").crossings is None


# ------------------------------------------------------------------ fit checkpoints

CKPT_ARGS = dict(max_steps=1000, log=ir.every(100), tol=1e-6, checkpoint_every=0)
N_MEASURES = 12  # 11 log rows, then the crossings


def _counting(monkeypatch, name):
    """Wrap ops.<name>, recording the arguments of every call."""
    calls = []
    real = getattr(ops_mod, name)

    def wrapper(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(ops_mod, name, wrapper)
    return calls


@pytest.mark.parametrize("interrupt_at", [1, 2, 5, 11, 12])
def test_an_interrupted_fit_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch, backend, interrupt_at
):
    path = tmp_path / "fit.ckpt"
    A = _model(backend)
    with monkeypatch.context() as m:
        measures = _counting(m, "dmf_measure")
        ref = _fit(A, **CKPT_ARGS)
    assert len(measures) == N_MEASURES
    assert set(ref.status) == {CONVERGED, TRAJ_RUNNING}

    B = _model(backend)
    real, calls = ops_mod.dmf_measure, [0]

    def flaky(*args, **kw):
        calls[0] += 1
        if calls[0] == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kw)

    with monkeypatch.context() as m:
        m.setattr(ops_mod, "dmf_measure", flaky)
        with pytest.raises(KeyboardInterrupt):
            _fit(B, checkpoint=path, **CKPT_ARGS)
    assert path.exists() == (interrupt_at > 1)
    assert [q.name for q in tmp_path.iterdir()] == ([path.name] if interrupt_at > 1 else [])

    C = _model(backend)
    with monkeypatch.context() as m:
        steps = _counting(m, "dmf_step")
        t = _fit(C, checkpoint=path, **CKPT_ARGS)
    _assert_trajectories_equal(t, ref)
    assert C.steps_done == A.steps_done == 1000
    np.testing.assert_array_equal(C.status, A.status)
    np.testing.assert_array_equal(C.frozen_at, A.frozen_at)
    for a, b in zip(C.factors, A.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    # it resumed from the last row written, not from the start
    resumed_from = 0 if interrupt_at == 1 else min(100 * (interrupt_at - 2), 1000)
    assert sum(int(args[3]) for args in steps) == 1000 - resumed_from


def test_a_finished_checkpoint_returns_the_result_without_stepping(tmp_path, monkeypatch, backend):
    path = tmp_path / "fit.ckpt"
    A = _model(backend)
    ref = _fit(A, checkpoint=path, keep_checkpoint=True, **CKPT_ARGS)
    B = _model(backend)

    def no_step(*args, **kw):
        raise AssertionError("stepped although the checkpoint was finished")

    with monkeypatch.context() as m:
        m.setattr(ops_mod, "dmf_step", no_step)
        t = _fit(B, checkpoint=path, **CKPT_ARGS)
    assert not path.exists()  # read back, then removed as any completed fit's
    _assert_trajectories_equal(t, ref)
    assert B.steps_done == 1000
    for a, b in zip(B.factors, A.factors, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("change", ["lr", "seed", "thresholds", "metrics", "max_steps", "tol"])
def test_a_checkpoint_from_another_fit_is_refused(tmp_path, change):
    path = tmp_path / "fit.ckpt"
    _fit(_model(), checkpoint=path, keep_checkpoint=True, **CKPT_ARGS)
    written = path.read_bytes()
    f = _model(seed=1 if change == "seed" else 0)
    W0 = [W.copy() for W in f.factors]
    kw = dict(CKPT_ARGS)
    other = {
        "lr": {"lr": LR * 0.5},
        "seed": {},
        "thresholds": {"thresholds": (1e-1, 1e-2)},
        "metrics": {"metrics": ("loss",)},
        "max_steps": {"max_steps": 900},
        "tol": {"tol": 1e-7},
    }[change]
    kw.update(other)
    with pytest.raises(ValueError, match="checkpoint"):
        _fit(f, checkpoint=path, **kw)
    assert f.steps_done == 0
    for a, b in zip(f.factors, W0, strict=True):
        np.testing.assert_array_equal(a, b)
    assert path.read_bytes() == written


def test_a_checkpoint_from_a_model_in_another_state_is_refused(tmp_path):
    path = tmp_path / "fit.ckpt"
    _fit(_model(), checkpoint=path, keep_checkpoint=True, **CKPT_ARGS)
    f = _model()
    f.step(LR, 1)
    with pytest.raises(ValueError, match="checkpoint"):
        _fit(f, checkpoint=path, **CKPT_ARGS)
    assert f.steps_done == 1


@pytest.mark.parametrize("kind", ["plain npz", "trajectory", "model"])
def test_a_foreign_file_at_the_checkpoint_path_is_refused(tmp_path, kind):
    path = tmp_path / "fit.npz"
    if kind == "plain npz":
        np.savez(path, x=np.arange(3))
    elif kind == "trajectory":
        _fit(_model(), max_steps=10, log=ir.every(5)).save(path)
    else:
        _model().save(path)
    written = path.read_bytes()
    f = _model()
    with pytest.raises(ValueError, match="checkpoint"):
        _fit(f, checkpoint=path, **CKPT_ARGS)
    assert f.steps_done == 0
    assert path.read_bytes() == written


@pytest.mark.parametrize("bad", [3, b"x.npz", ["x.npz"]], ids=repr)
def test_checkpoint_must_be_a_path(tmp_path, bad):
    f = _model()
    with pytest.raises(TypeError, match="checkpoint"):
        _fit(f, checkpoint=bad, **CKPT_ARGS)
    assert f.steps_done == 0


# ------------------------------------------------------------------ recon_error


def _by_hand(E, truth):
    E, truth = np.asarray(E, dtype=np.float64), np.broadcast_to(truth, E.shape)
    return np.array(
        [np.linalg.norm(e - w) / np.linalg.norm(w) for e, w in zip(E, truth, strict=True)]
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: ir.problems.random_low_rank_completion(3, 5, 2, 9, batch=4, seed=3),
        lambda: ir.problems.random_low_rank_completion(4, 4, 1, 7, batch=3, seed=8),
        lambda: ir.problems.random_sensing(3, 2, 1, 5, batch=3, seed=2, std=0.3),
        lambda: ir.completion(
            np.outer([1.0, 2.0, 3.0], [1.0, -1.0, 0.5]),
            np.random.default_rng(0).random((3, 3, 3)) < 0.6,
            batch=3,
            truth=np.outer([1.0, 2.0, 3.0], [1.0, -1.0, 0.5]),
        ),  # shared truth
    ],
    ids=["completion 3x5", "completion 4x4", "sensing 3x2", "shared truth"],
)
def test_recon_error_matches_numpy_and_the_definition(make):
    p = make()
    assert p.truth is not None
    f = ir.DeepFactorization.init(p, 3, scale=0.5, scale_by="factor", seed=4)
    f.step(0.01, 30)
    g = ir.DeepFactorization(p, f.factors, backend="numpy")
    cpu = f.measure(("recon_error",))["recon_error"]
    ref = g.measure(("loss", "recon_error"))["recon_error"]
    want = _by_hand(f.product(), p.truth)
    assert cpu.shape == (p.batch,) and cpu.dtype == np.float64
    np.testing.assert_allclose(cpu, want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ref, want, rtol=1e-12, atol=0)
    assert (want > 1e-3).all()


def test_recon_error_is_logged_and_taken_at_crossings():
    p = ir.problems.random_low_rank_completion(3, 3, 1, 7, batch=3, seed=5)
    f = ir.DeepFactorization.init(p, 3, scale=0.5, scale_by="factor", seed=1)
    t = f.fit(
        np.array([0.05, 0.03, 0.02]),
        400,
        log=ir.every(1),
        metrics=("loss", "recon_error"),
        thresholds=(1e-1, 1e-2),
        progress=False,
    )
    c = t.crossings
    assert (c["step"] >= 0).any()
    for k, thr in enumerate((1e-1, 1e-2)):
        step, row = _dense_first_below(t, thr)
        np.testing.assert_array_equal(c["step"][k], step)
        hit = row >= 0
        np.testing.assert_array_equal(
            c["recon_error"][k][hit], t["recon_error"][row[hit], np.flatnonzero(hit)]
        )
    np.testing.assert_allclose(
        t["recon_error"][-1], _by_hand(f.product(), p.truth), rtol=1e-12, atol=0
    )
    assert np.ptp(t["recon_error"], axis=0).min() > 1e-2  # it moved


def test_recon_error_without_truth_is_refused(backend):
    f = _model(backend)
    with pytest.raises(ValueError, match="recon_error"):
        f.measure(("recon_error",))
    with pytest.raises(ValueError, match="recon_error"):
        f.fit(LR, 10, metrics=("loss", "recon_error"), thresholds=THR, progress=False)
    assert f.steps_done == 0


# ------------------------------------------------------------------ progress


def test_progress_callable_gets_the_steps_run():
    calls = []
    f = _model()
    f.step(LR, 17)
    t = f.fit(LR, 250, log=ir.every(100), progress=calls.append)
    assert sum(calls) == 250 == f.steps_done - 17 == t.steps[-1] - 17
    assert all(isinstance(n, int) and n >= 0 for n in calls)
    # an early stop: the steps run, not max_steps
    calls.clear()
    g = _model(batch=2)
    t = g.fit(LR[:2], 100_000, tol=1e-6, log=ir.every(100), progress=calls.append)
    assert (t.status == CONVERGED).all()
    assert sum(calls) == g.steps_done == t.steps[-1] < 100_000
    # the same trajectory as without the callable
    u = _model(batch=2).fit(LR[:2], 100_000, tol=1e-6, log=ir.every(100), progress=False)
    np.testing.assert_array_equal(u["loss"], t["loss"])


@pytest.mark.parametrize("bad", [1, 0, "yes", None, 1.0, [True]], ids=repr)
def test_progress_must_be_a_bool_or_a_callable(bad):
    f = _model()
    with pytest.raises(TypeError, match="progress"):
        f.fit(LR, 10, progress=bad)
    assert f.steps_done == 0
    assert (f.status == RUNNING).all()


def test_bad_progress_is_refused_before_a_checkpoint_is_restored(tmp_path):
    path = tmp_path / "fit.ckpt"
    _fit(_model(), checkpoint=path, **CKPT_ARGS)
    f = _model()
    with pytest.raises(TypeError, match="progress"):
        f.fit(LR, checkpoint=path, thresholds=THR, metrics=METRICS, progress="yes", **CKPT_ARGS)
    assert f.steps_done == 0


# ------------------------------------------------------------------ bugs found


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_with_thresholds_on_an_empty_batch(backend):
    p = ir.problems.random_low_rank_completion(3, 3, 1, 5, batch=0)
    f = ir.DeepFactorization.init(p, 2, backend=backend)
    t = f.fit(0.1, 10, metrics=("loss", "svals"), thresholds=THR, progress=False)
    assert t.crossings["step"].shape == (3, 0)
    assert t.crossings["svals"].shape == (3, 0, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("other", ["depth", "dtype"])
def test_crossings_of_another_model_are_refused_before_any_step(backend, other):
    f = _model(backend, batch=3, depth=2)
    W0 = [W.copy() for W in f.factors]
    g = _model(batch=3, depth=3) if other == "depth" else _model(batch=3, depth=2, dtype="float32")
    c = g.crossings(THR)
    with pytest.raises((ValueError, TypeError)):
        f.step(0.1, 300, crossings=c)
    assert f.steps_done == 0
    for a, b in zip(f.factors, W0, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c.step, -1)


def test_det_of_a_diverged_problem_agrees_between_backends():
    out = {}
    for backend in BACKENDS:
        f = _model(backend, batch=3)
        f.step(np.array([0.1, 50.0, 0.03]), 20)
        assert f.status[1] == DIVERGED
        assert all(np.isfinite(W).all() for W in f.factors)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out[backend] = f.measure(("det",))["det"]
    # both give -inf where the product overflows; elsewhere Kahan's 2x2 form and LU agree
    np.testing.assert_allclose(out["cpu"], out["numpy"], rtol=1e-13, atol=0)
    assert np.isinf(out["cpu"][1])
