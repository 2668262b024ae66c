"""DeepFactorization.fit and the Trajectory it returns: log schedules, early stop, metrics,
first_below, steps_to_tol, DataFrame export and save / load."""

from __future__ import annotations

import json

import numpy as np
import pytest

import implicitreg as ir
from conftest import BACKENDS, CONVERGED, RUNNING, TRAJ_RUNNING, explicit_product

LR = np.array([0.1, 0.06, 0.03, 0.01, 0.004])  # the last ones do not converge in 400 steps


def _model(backend="cpu", dtype="float64", widths=None):
    p = ir.problems.paper_2x2(len(LR))
    return ir.DeepFactorization.init(
        p, 2, widths=widths, scale=0.3, seed=0, backend=backend, dtype=dtype
    )


def _replay(points, backend="cpu", tol=None, dtype="float64"):
    """loss and E[0,0] at each of `points`, by plain step() calls on a fresh model."""
    f = _model(backend, dtype)
    loss, e00 = [], []
    for p in points:
        f.step(LR, int(p) - f.steps_done, tol)
        loss.append(f.loss().astype(np.float64))
        e00.append(f.product()[:, 0, 0].astype(np.float64))
    return np.array(loss), np.array(e00), f


@pytest.mark.parametrize("k,max_steps", [(50, 400), (70, 400), (1, 30), (400, 400), (1000, 400)])
def test_every_logs_at_multiples_and_the_end(backend, k, max_steps):
    t = _model(backend).fit(
        LR, max_steps, log=ir.every(k), metrics=("loss", "entry:0,0"), progress=False
    )
    expected = sorted(set(range(0, max_steps + 1, k)) | {max_steps})
    np.testing.assert_array_equal(t.steps, expected)
    loss, e00, f = _replay(expected, backend)
    np.testing.assert_array_equal(t["loss"], loss)
    np.testing.assert_array_equal(t["entry:0,0"], e00)
    assert t["loss"].shape == (len(expected), len(LR)) and t["loss"].dtype == np.float64


@pytest.mark.parametrize("n,max_steps", [(10, 400), (30, 1000), (5, 3), (1, 50)])
def test_geometric_logs_log_spaced(n, max_steps):
    t = _model().fit(LR, max_steps, log=ir.geometric(n), progress=False)
    s = t.steps
    assert s[0] == 0 and s[-1] == max_steps
    assert (np.diff(s) > 0).all()
    assert len(s) <= n + 2
    expected = np.unique(np.r_[0, np.geomspace(1, max_steps, n).round(), max_steps]).astype(int)
    np.testing.assert_array_equal(s, expected)
    loss, _, _ = _replay(s)
    np.testing.assert_array_equal(t["loss"], loss)
    if n >= 10:  # dense early, sparse late
        gaps = np.diff(s[1:])
        assert gaps[0] < gaps[-1]


def test_default_log_has_about_1000_rows():
    t = _model().fit(LR, 5000, progress=False)
    np.testing.assert_array_equal(t.steps, np.arange(0, 5001, 5))


def test_fit_zero_steps_logs_the_start():
    f = _model()
    t = f.fit(LR, 0, log=ir.every(10), progress=False)
    np.testing.assert_array_equal(t.steps, [0])
    np.testing.assert_array_equal(t["loss"][0], f.loss())
    assert f.steps_done == 0


def test_fit_continues_from_steps_done():
    f = _model()
    f.fit(LR, 100, log=ir.every(50), progress=False)
    t = f.fit(LR, 100, log=ir.every(40), progress=False)
    np.testing.assert_array_equal(t.steps, [100, 140, 180, 200])
    assert f.steps_done == 200
    loss, _, _ = _replay([100, 140, 180, 200])
    np.testing.assert_array_equal(t["loss"], loss)


def test_fit_with_tol_matches_step_with_tol_and_stops_early(backend):
    tol = 1e-6
    p = ir.problems.paper_2x2(3)
    W0 = [W[:3] for W in _model(backend).factors]
    g = ir.DeepFactorization(p, W0, backend=backend)
    g.step(LR[:3], 5000, tol)  # reference: plain steps
    f = ir.DeepFactorization(p, W0, backend=backend)
    t = f.fit(LR[:3], 100_000, tol=tol, log=ir.every(25), progress=False)
    assert (g.status == CONVERGED).all()
    np.testing.assert_array_equal(t.frozen_at, g.frozen_at)
    assert list(t.status) == [CONVERGED] * 3
    last = t.frozen_at.max()
    # it stopped at the first log point at or after the last freeze, not at 100_000
    assert t.steps[-1] == -(-last // 25) * 25
    assert f.steps_done == t.steps[-1]
    for a, b in zip(f.factors, g.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    # once frozen, a problem's logged values stay put
    for b in range(3):
        after = t.steps >= t.frozen_at[b]
        assert (t["loss"][after, b] == t["loss"][after, b][0]).all()
        assert t["loss"][after, b][0] < tol


def test_status_and_steps_to_tol():
    f = _model()
    t = f.fit(LR, 400, tol=1e-6, log=ir.every(20), progress=False)
    conv = t.status == CONVERGED
    assert 0 < conv.sum() < len(LR)
    assert set(t.status[~conv]) == {TRAJ_RUNNING}
    assert set(f.status[~conv]) == {RUNNING}
    np.testing.assert_array_equal(t.steps_to_tol[conv], t.frozen_at[conv])
    assert np.isnan(t.steps_to_tol[~conv]).all()
    np.testing.assert_array_equal(t.frozen_at[~conv], -1)
    assert t.steps[-1] == 400


def test_trajectory_is_a_snapshot_of_the_end_of_fit():
    """Training the model further must not rewrite a Trajectory already returned."""
    f = _model()
    t = f.fit(LR, 100, tol=1e-6, log=ir.every(50), progress=False)
    status, frozen_at = t.status.copy(), t.frozen_at.copy()
    assert (frozen_at == -1).any()
    f.step(LR, 2000, tol=1e-6)
    assert (f.frozen_at != frozen_at).any()  # something converged since
    np.testing.assert_array_equal(t.status, status)
    np.testing.assert_array_equal(t.frozen_at, frozen_at)


def test_first_below_matches_manual_computation():
    t = _model().fit(
        LR, 400, log=ir.every(10), metrics=("loss", "entry:0,0", "det"), progress=False
    )
    for thr in (1e-1, 1e-3, 1e-6):
        got = t.first_below("loss", thr)
        assert set(got) == {"step", "loss", "entry:0,0", "det"}
        for b in range(len(LR)):
            rows = np.flatnonzero(t["loss"][:, b] < thr)
            if rows.size:
                r = rows[0]
                assert got["step"][b] == t.steps[r]
                for name in ("loss", "entry:0,0", "det"):
                    assert got[name][b] == t[name][r, b]
            else:
                assert got["step"][b] == -1
                assert all(np.isnan(got[name][b]) for name in ("loss", "entry:0,0", "det"))
    got = t.first_below("loss", 1e-6)
    assert (got["step"] == -1).any() and (got["step"] >= 0).any()
    # by another metric
    got = t.first_below("entry:0,0", -0.1)
    hit = (t["entry:0,0"] < -0.1).any(axis=0)
    np.testing.assert_array_equal(got["step"] >= 0, hit)


def test_metric_names_are_deduplicated_and_a_string_is_one_metric():
    t = _model().fit(
        LR, 20, log=ir.every(10), metrics=("loss", "loss", "entry:1,1"), progress=False
    )
    assert t.metrics == ["loss", "entry:1,1"]
    u = _model().fit(LR, 20, log=ir.every(10), metrics="entry:0,1", progress=False)
    assert u.metrics == ["entry:0,1"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_det_metric_is_float64_product_of_factor_dets(dtype):
    f = _model(dtype=dtype)
    t = f.fit(LR, 200, log=ir.every(100), metrics=("det",), progress=False)
    assert t["det"].dtype == np.float64
    expected = np.ones(len(LR))
    for W in f.factors:
        expected = expected * np.linalg.det(W.astype(np.float64))
    # the core's LU and LAPACK's round differently in the last bits
    np.testing.assert_allclose(t["det"][-1], expected, rtol=1e-13, atol=0)
    np.testing.assert_array_equal(f.det(), expected)
    assert f.det().dtype == np.float64


def test_det_metric_with_non_square_factors():
    f = _model(widths=[3])
    t = f.fit(LR, 200, log=ir.every(100), metrics=("det",), progress=False)
    np.testing.assert_allclose(t["det"][-1], np.linalg.det(explicit_product(f.factors)), rtol=1e-12)


def test_to_dataframe():
    pd = pytest.importorskip("pandas")
    t = _model().fit(
        LR, 100, log=ir.every(50), metrics=("loss", "entry:0,0", "det"), progress=False
    )
    df = t.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == [
        "step",
        "problem",
        "loss",
        "entry:0,0",
        "det",
        "status",
        "frozen_at",
    ]
    assert (t.frozen_at == -1).all()  # nothing froze: every (step, problem) is a row
    T, B = t.steps.size, t.batch
    assert len(df) == T * B
    np.testing.assert_array_equal(df["step"], np.repeat(t.steps, B))
    np.testing.assert_array_equal(df["problem"], np.tile(np.arange(B), T))
    for name in ("loss", "entry:0,0", "det"):
        np.testing.assert_array_equal(df[name].to_numpy().reshape(T, B), t[name])
    np.testing.assert_array_equal(df["status"].to_numpy().reshape(T, B)[-1], t.status)


def test_to_dataframe_ends_a_frozen_problem_at_its_frozen_state():
    pytest.importorskip("pandas")
    p = ir.problems.paper_2x2(6)
    f = ir.DeepFactorization.init(p, 3, scale=0.5, scale_by="factor", seed=1)
    lr = np.array([0.05, 0.03, 0.02, 0.01, 0.005, 1e-4])
    t = f.fit(lr, 400, tol=1e-3, log=ir.every(50), metrics=("loss",), progress=False)
    frozen = t.frozen_at >= 0
    assert frozen.any() and not frozen.all()
    df = t.to_dataframe()
    for b in range(t.batch):
        rows = df[df["problem"] == b]
        assert (rows["frozen_at"] == t.frozen_at[b]).all()
        if t.frozen_at[b] < 0:
            np.testing.assert_array_equal(rows["step"], t.steps)
        else:  # up to the first logged step at or after the freeze, which shows it frozen
            last = t.steps[t.steps >= t.frozen_at[b]][0]
            np.testing.assert_array_equal(rows["step"], t.steps[t.steps <= last])
            assert rows["loss"].iloc[-1] == t["loss"][-1, b] < 1e-3
    assert len(df) < t.steps.size * t.batch


def test_a_completed_fit_removes_its_checkpoint_unless_kept(tmp_path):
    path = tmp_path / "fit.ckpt.npz"
    kw = dict(
        lr=LR, max_steps=200, log=ir.every(50), progress=False, checkpoint=path, checkpoint_every=0
    )
    whole = _model().fit(**kw)
    assert not path.exists()
    kept = _model().fit(**kw, keep_checkpoint=True)
    assert path.exists()
    again = _model().fit(**kw, keep_checkpoint=True)  # done: read back at once
    for t in (kept, again):
        np.testing.assert_array_equal(t["loss"], whole["loss"])
    with pytest.raises(TypeError, match="^keep_checkpoint"):
        _model().fit(**kw, keep_checkpoint="yes")


@pytest.mark.parametrize("suffix", [".npz", ".out"])
def test_save_load_roundtrip(tmp_path, suffix):
    t = _model().fit(
        LR,
        200,
        tol=1e-6,
        log=ir.geometric(20),
        metrics=("loss", "entry:0,0", "det"),
        progress=False,
    )
    path = tmp_path / f"traj{suffix}"
    t.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    u = ir.load(str(path))
    np.testing.assert_array_equal(u.steps, t.steps)
    np.testing.assert_array_equal(u.status, t.status)
    np.testing.assert_array_equal(u.frozen_at, t.frozen_at)
    np.testing.assert_array_equal(u.steps_to_tol, t.steps_to_tol)
    assert u.metrics == t.metrics
    for name in t.metrics:
        np.testing.assert_array_equal(u[name], t[name])
        assert u[name].dtype == t[name].dtype
    assert u.meta == json.loads(json.dumps(t.meta))
    assert u.meta["lr"] == LR.tolist() and u.meta["tol"] == 1e-6
    assert u.meta["backend"] == "cpu" and u.meta["dims"] == [2, 2, 2]
    for thr in (1e-2, 1e-5):
        a, b = t.first_below("loss", thr), u.first_below("loss", thr)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_fit_numpy_backend_equals_cpu(dtype):
    ts = [
        _model(b, dtype).fit(
            LR,
            300,
            tol=1e-6,
            log=ir.every(30),
            metrics=("loss", "entry:0,0", "det"),
            progress=False,
        )
        for b in BACKENDS
    ]
    a, b = ts
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.frozen_at, b.frozen_at)
    rtol = 1e-11 if dtype == "float64" else 2e-4
    for name in ("entry:0,0", "det"):
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=rtol * 100, atol=rtol)


def test_progress_bar_does_not_change_the_result():
    pytest.importorskip("tqdm")
    a = _model().fit(LR, 100, log=ir.every(25), progress=True)
    b = _model().fit(LR, 100, log=ir.every(25), progress=False)
    np.testing.assert_array_equal(a["loss"], b["loss"])


def test_a_log_that_cannot_fit_in_memory_is_refused_before_work():
    p = ir.problems.paper_2x2(batch=1 << 20)
    f = ir.DeepFactorization(p, [np.eye(2) * 0.1] * 2)
    with pytest.raises(ValueError, match=r"log: .* GiB.*log at most \d+ rows"):
        f.fit(1e-3, 10**9, log=ir.every(1), metrics=("loss", "det"))
    assert f.steps_done == 0


@pytest.mark.parametrize("k, max_steps", [(1, 0), (1, 7), (3, 9), (3, 10), (1000, 999), (7, 7)])
def test_every_rows_counts_its_points(k, max_steps):
    log = ir.every(k)
    assert log.rows(max_steps) == log.points(max_steps).size


@pytest.mark.parametrize("n, max_steps", [(1, 0), (5, 3), (50, 10**6)])
def test_geometric_rows_bounds_its_points(n, max_steps):
    log = ir.geometric(n)
    assert log.points(max_steps).size <= log.rows(max_steps)


# ---------------------------------------------------------------------- what a sweep asks


@pytest.mark.parametrize(
    "bad,error",
    [
        ({"lr": -1.0}, "^lr: "),
        ({"max_steps": -1}, "^max_steps: "),
        ({"optimizer": "sgd"}, "^optimizer: "),
        ({"metrics": ("loss", "bogus")}, "^metrics: unknown metric 'bogus'"),
        ({"thresholds": (1e-3, 1e-2)}, "^thresholds: "),
        ({"log": "often"}, "log"),
    ],
)
def test_check_fit_refuses_what_fit_refuses_and_does_no_work(bad, error):
    model = ir.DeepFactorization.init(ir.problems.paper_2x2(batch=3), scale=0.3)
    start = [W.copy() for W in model.factors]
    args = {"lr": 1e-2, "max_steps": 10, **bad}
    with pytest.raises((ValueError, TypeError), match=error) as by_check:
        model.check_fit(**args)
    with pytest.raises(type(by_check.value), match=error) as by_fit:
        model.fit(progress=False, **args)
    assert str(by_fit.value) == str(by_check.value)
    assert model.steps_done == 0
    for W, W0 in zip(model.factors, start, strict=True):
        np.testing.assert_array_equal(W, W0)
    model.check_fit(1e-2, 10, thresholds=(1e-1, 1e-2), optimizer="adam")  # a good call passes


def test_cp_check_fit_refuses_what_fit_refuses():
    p = ir.tensor_completion(np.ones((2, 2, 2)), np.ones((2, 2, 2), bool), batch=2)
    model = ir.CPFactorization.init(p, rank=2)
    for bad, error in [
        ({"patience": 2}, "^patience: needs a tol"),
        ({"metrics": ("svals",)}, "^metrics: unknown metric"),
        ({"check_every": 0, "patience": 1, "tol": 1e-6}, "^check_every: "),
    ]:
        for call in (model.check_fit, lambda **a: model.fit(progress=False, **a)):
            with pytest.raises(ValueError, match=error):
                call(lr=1e-2, max_steps=10, **bad)
    assert model.steps_done == 0


def test_bytes_per_problem_counts_the_models_arrays():
    """paper_2x2, depth 3, float64: targets (32 B) and masks (4 B); three 2x2 factors (96 B)
    and the per-problem state (status, frozen_at, the optimizers' mean and count: 25 B)."""
    model = ir.DeepFactorization.init(ir.problems.paper_2x2(batch=5), depth=3)
    got = model.bytes_per_problem(metrics=("loss",), log=ir.every(10), max_steps=100)
    # the log: 11 rows of one metric; measure(): product 4, svals 2, loss 1, the row 1 (x 8 B)
    assert got == {
        "problem": 36,
        "host": 36 + 96 + 25 + 8 * 11,
        "device": 36 + 96 + 25 + (4 + 2 + 1) * 8 + 8,
    }
    two = model.bytes_per_problem(
        metrics=("loss", "erank"),
        thresholds=(1e-2, 1e-3),
        log=ir.every(10),
        max_steps=100,
        optimizer="adam",
    )
    moments = 2 * 96
    # each threshold: a snapshot of the factors and the metrics measured there
    assert two["host"] == 36 + 96 + 25 + moments + 2 * (96 + 8 * 3) + 8 * 2 * 11
    assert two["device"] == 36 + 96 + 25 + moments + 2 * (96 + 8) + 7 * 8 + 8 * 2
    f32 = ir.DeepFactorization.init(ir.problems.paper_2x2(batch=5), dtype="float32")
    assert (
        f32.bytes_per_problem()["device"] - f32.bytes_per_problem()["problem"]
        < got["device"] - got["problem"]
    )


def test_cp_bytes_per_problem_counts_the_models_arrays():
    p = ir.tensor_completion(np.ones((2, 2, 3, 4)), np.ones((2, 2, 3, 4), bool))  # B = 2
    model = ir.CPFactorization.init(p, rank=5)
    gd = model.bytes_per_problem(metrics=("loss",), optimizer="gd")
    adam = model.bytes_per_problem(metrics=("loss",), optimizer="adam")
    size = (2 + 3 + 4) * 5 * 8  # the factors
    assert adam["host"] - gd["host"] == adam["device"] - gd["device"] == 2 * size
    assert gd["problem"] == 24 * (8 + 1 + 8)
    norms = model.bytes_per_problem(metrics=("loss", "component_norms"))
    assert norms["host"] - model.bytes_per_problem(metrics=("loss",))["host"] == 8 * 5


def test_the_sweep_reaches_into_no_private_member_of_the_models():
    """sweep/ asks the models through check_fit and bytes_per_problem: none of the models'
    private names (their methods and module functions) is read there."""
    import ast
    from pathlib import Path

    root = Path(ir.__file__).parent
    private = set()
    for path in (root / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, (ast.FunctionDef, ast.ClassDef))
                and node.name.startswith("_")
                and not node.name.startswith("__")
            ):
                private.add(node.name)
    assert {"_lr", "_tol", "_optimizer_settings", "_fit_settings"} <= private
    used = set()
    for path in (root / "sweep").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.ImportFrom):
                used |= {a.name for a in node.names}
    assert not used & private, sorted(used & private)
