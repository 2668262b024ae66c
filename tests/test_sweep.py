"""implicitreg.sweep: grids of configs (expand), batching, equivalence with direct fits, the
tidy table, results directories (save / load / refusals) and resume after a crash."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import implicitreg as ir
import implicitreg.ops
from conftest import CONVERGED, TRAJ_RUNNING
from implicitreg.sweep import (
    DEFAULTS,
    MODEL_DEFAULTS,
    MODEL_KEYS,
    PROBLEMS,
    SweepResult,
    expand,
    load_sweep,
    sweep,
)

# A tiny, fast base: the canonical 2x2 problem, a few steps, every metric logged at a few
# points. Configs override what they need.
FAST = {
    "problem": "paper_2x2",
    "depth": 2,
    "scale": 0.3,
    "scale_by": "factor",
    "lr": 0.05,
    "max_steps": 40,
    "log": "every:10",
    "thresholds": (0.5, 0.1),
}


def _sweep(base=None, grid=None, seeds=2, **kw):
    return sweep({**FAST, **(base or {})}, grid, seeds=seeds, progress=False, **kw)


def _steps(traj):
    """The sweep's "steps" column, computed from a direct fit's trajectory."""
    return np.where(traj.frozen_at >= 0, traj.frozen_at, traj.steps[-1])


def _assert_columns_equal(a: dict, b: dict):
    assert list(a) == list(b) or set(a) == set(b), (sorted(a), sorted(b))
    for k in a:
        assert a[k].dtype.kind == b[k].dtype.kind, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"column {k!r}")


def _assert_sweeps_equal(res, ref, out):
    """res equals ref in columns and trajectories, and so does what was written to out."""
    for got in (res, load_sweep(out)):
        _assert_columns_equal(got.columns, ref.columns)
        assert len(got.trajectories) == len(ref.trajectories)
        for ta, tb in zip(got.trajectories, ref.trajectories, strict=True):
            _assert_trajectories_equal(ta, tb)


def _assert_trajectories_equal(ta, tb):
    np.testing.assert_array_equal(ta.steps, tb.steps)
    assert ta.metrics == tb.metrics
    for name in ta.metrics:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)
    np.testing.assert_array_equal(ta.status, tb.status)
    np.testing.assert_array_equal(ta.frozen_at, tb.frozen_at)
    assert (ta.crossings is None) == (tb.crossings is None)
    if ta.crossings is not None:
        assert set(ta.crossings) == set(tb.crossings)
        for k in ta.crossings:
            np.testing.assert_array_equal(ta.crossings[k], tb.crossings[k], err_msg=k)


# --------------------------------------------------------------------------------- expand


def test_expand_dict_grid_is_the_cartesian_product():
    configs = expand({"depth": 4, "lr": 0.5}, {"lr": [1e-2, 2e-2, 3e-2], "scale": [1e-3, 1e-2]})
    assert len(configs) == 6
    # itertools.product order: the first key varies slowest
    assert [(c["lr"], c["scale"]) for c in configs] == [
        (1e-2, 1e-3),
        (1e-2, 1e-2),
        (2e-2, 1e-3),
        (2e-2, 1e-2),
        (3e-2, 1e-3),
        (3e-2, 1e-2),
    ]
    for c in configs:  # the keys that paper_2x2 and the matrix model read, no others
        assert set(c) == {
            "model",
            "problem",
            "lr",
            "max_steps",
            "tol",
            "log",
            "metrics",
            "thresholds",
            "dtype",
            *(k for k in MODEL_KEYS["dmf"] if k != "min_norms"),  # none: recorded by omission
        }
        assert c["depth"] == 4  # from base
        assert c["problem"] == DEFAULTS["problem"]  # from DEFAULTS
    # a plain value in a grid dict is a single choice
    configs = expand({}, {"lr": [1e-2, 2e-2], "depth": 5})
    assert [c["depth"] for c in configs] == [5, 5]
    # no grid: the base alone
    (only,) = expand({"lr": 0.25})
    assert only["lr"] == 0.25 and only["max_steps"] == DEFAULTS["max_steps"]


def test_expand_list_of_dicts_concatenates():
    configs = expand({}, [{"depth": [2, 3]}, {"depth": 4, "lr": [1e-2, 1e-3]}, {}])
    assert [(c["depth"], c["lr"]) for c in configs] == [
        (2, DEFAULTS["lr"]),
        (3, DEFAULTS["lr"]),
        (4, 1e-2),
        (4, 1e-3),
        (DEFAULTS["depth"], DEFAULTS["lr"]),
    ]


def test_expand_metrics_and_thresholds_are_values_not_axes():
    configs = expand(
        {}, {"metrics": ("loss", "det", "erank"), "thresholds": [1e-1, 1e-3], "lr": [1e-2, 2e-2]}
    )
    assert len(configs) == 2
    for c in configs:
        assert c["metrics"] == ("loss", "det", "erank")
        assert c["thresholds"] == (1e-1, 1e-3)
    # "loss" is always measured (first)
    (c,) = expand({"metrics": ["det"]})
    assert c["metrics"] == ("loss", "det")
    (c,) = expand({"metrics": "det"})
    assert c["metrics"] == ("loss", "det")


def test_expand_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown key") as e:
        expand({"learning_rate": 0.1})
    msg = str(e.value)
    assert "'learning_rate'" in msg
    for k in DEFAULTS:
        assert k in msg
    with pytest.raises(ValueError, match="'nope'"):
        expand({}, [{"lr": [1e-2]}, {"nope": [1, 2]}])


def test_expand_unknown_problem_lists_valid_problems():
    with pytest.raises(ValueError, match="problem") as e:
        expand({"problem": "paper_3x3"})
    for name in PROBLEMS:
        assert repr(name) in str(e.value)
    with pytest.raises(ValueError, match="paper_3x3"):
        expand({}, {"problem": ["paper_2x2", "paper_3x3"]})


@pytest.mark.parametrize(
    "base,grid",
    [
        ([("lr", 0.1)], None),
        ("lr=0.1", None),
        (None, None),
        ({}, "lr"),
        ({}, 3),
        ({}, [{"lr": [0.1]}, "depth"]),
    ],
)
def test_expand_bad_types(base, grid):
    with pytest.raises(TypeError):
        expand(base, grid)


def test_expand_checks_values():
    with pytest.raises(ValueError, match="depth"):
        expand({"depth": 0})
    with pytest.raises(ValueError, match="log"):
        expand({"log": "often"})
    (c,) = expand({"depth": 3.0, "log": "every:5", "widths": [4, 5]})
    assert c["depth"] == 3 and isinstance(c["depth"], int)
    assert c["widths"] == (4, 5)


# ------------------------------------------------------------------------------- batching


def test_per_problem_keys_share_one_batch():
    grid = {
        "lr": [0.05, 0.02],
        "scale": [0.3, 0.2],
        "init": ["normal", "balanced"],
        "init_det": [None, "positive"],
        "init_seed": [0, 3],
        "eps": [0.0, 0.1],
        "scale_by": ["factor", "product"],
    }
    res = _sweep({"problem": "perturbed_2x2"}, grid=grid)
    n = 2**7
    assert len(res.configs) == n
    assert len(res.meta["timings"]) == 1 and len(res.trajectories) == 1
    assert res.meta["timings"][0]["configs"] == n
    assert res.meta["timings"][0]["problems"] == 2 * n
    np.testing.assert_array_equal(res.columns["batch"], np.zeros(2 * n))
    np.testing.assert_array_equal(res.columns["index"], np.arange(2 * n))
    assert res.trajectories[0].batch == 2 * n


def test_problem_data_keys_share_one_batch():
    base = {
        "problem": "random_low_rank_completion",
        "m": 4,
        "n": 3,
        "target_rank": 1,
        "scale": 0.3,
        "lr": 0.02,
    }
    res = _sweep(base, {"n_obs": [6, 8], "problem_seed": [0, 1], "target_rank": [1, 2]}, seeds=2)
    assert len(res.meta["timings"]) == 1
    np.testing.assert_array_equal(res.columns["batch"], 0)
    res = _sweep(
        {"problem": "perturbed_2x2"}, {"eps": [0.0, 0.5], "b12": [-2.0, 1.0], "b21": [0.5, 2.0]}
    )
    assert len(res.meta["timings"]) == 1
    np.testing.assert_array_equal(res.columns["batch"], 0)


@pytest.mark.parametrize(
    "key,values",
    [
        ("depth", [2, 3]),
        ("dtype", ["float64", "float32"]),
        ("max_steps", [20, 40]),
        ("tol", [None, 1e-3]),
        ("log", ["every:10", 5]),
        ("widths", [(2,), (3,)]),
        ("metrics", None),
    ],
)
def test_shared_keys_split_batches(key, values):
    if key == "metrics":
        grid = [{"metrics": ("loss",)}, {"metrics": ("loss", "det")}]
    else:
        grid = {key: values, "lr": [0.05, 0.02]}
    res = _sweep(grid=grid)
    assert len(res.meta["timings"]) == 2 and len(res.trajectories) == 2
    b = res.columns["batch"]
    assert set(b.tolist()) == {0, 1}
    for t in res.meta["timings"]:
        assert t["problems"] == int((b == t["batch"]).sum())
    # every batch holds configs of one value of the key
    for bi in (0, 1):
        idx = np.nonzero(b == bi)[0]
        assert len(set(res.columns[key][idx].tolist())) == 1
        np.testing.assert_array_equal(res.columns["index"][idx], np.arange(idx.size))


def test_row_blocks_follow_batch_order():
    grid = [{"depth": 2, "lr": 0.05}, {"depth": 3, "lr": 0.05}, {"depth": 2, "lr": 0.02}]
    res = _sweep(grid=grid, seeds=3)
    assert [(c["depth"], c["lr"]) for c in res.configs] == [(2, 0.05), (2, 0.02), (3, 0.05)]
    np.testing.assert_array_equal(res.columns["depth"], [2] * 6 + [3] * 3)
    np.testing.assert_array_equal(res.columns["batch"], [0] * 6 + [1] * 3)
    np.testing.assert_array_equal(res.columns["index"], [0, 1, 2, 3, 4, 5, 0, 1, 2])
    np.testing.assert_array_equal(res.columns["lr"], [0.05] * 3 + [0.02] * 3 + [0.05] * 3)
    assert [t["configs"] for t in res.meta["timings"]] == [2, 1]
    assert [t["batch"] for t in res.meta["timings"]] == [0, 1]
    assert [res.trajectories[i].batch for i in (0, 1)] == [6, 3]


def test_progress_callable_gets_every_step():
    got = []
    res = sweep(
        {**FAST, "tol": 1e-2, "max_steps": 3000, "lr": 0.1},
        {"depth": [2, 3]},
        seeds=2,
        progress=got.append,
    )
    assert (res.columns["status"] == CONVERGED).all()  # early stop: fewer steps were run
    assert res.columns["steps"].max() < 3000
    assert all(n >= 0 for n in got)
    assert sum(got) == 2 * 3000


# ------------------------------------------------------------------- equivalence with fit


def test_sweep_equals_direct_fits_paper_2x2():
    thresholds = (1e-1, 1e-2)
    base = {
        "problem": "paper_2x2",
        "depth": 3,
        "scale": 1e-3,
        "scale_by": "product",
        "init_det": "positive",
        "max_steps": 3000,
        "tol": 1e-3,
        "log": 30,
        "thresholds": thresholds,
    }
    lrs = [3e-2, 1e-2]
    res = sweep(base, {"lr": lrs}, seeds=4, progress=False)
    assert len(res.meta["timings"]) == 1
    statuses = set()
    for lr in lrs:
        rows = res.rows(lr=lr)
        assert rows.size == 4
        np.testing.assert_array_equal(res.columns["seed"][rows], np.arange(4))
        f = ir.DeepFactorization.init(
            ir.problems.paper_2x2(batch=4),
            depth=3,
            scale=1e-3,
            scale_by="product",
            det="positive",
            seed=0,
        )
        t = f.fit(
            lr,
            3000,
            tol=1e-3,
            log=ir.geometric(30),
            metrics=("loss", "entry:0,0"),
            thresholds=thresholds,
            progress=False,
        )
        c = {k: v[rows] for k, v in res.columns.items()}
        np.testing.assert_array_equal(c["loss"], t["loss"][-1])
        np.testing.assert_array_equal(c["entry:0,0"], t["entry:0,0"][-1])
        np.testing.assert_array_equal(c["status"], t.status)
        np.testing.assert_array_equal(c["steps"], _steps(t))
        for k, thr in enumerate(thresholds):
            lab = {1e-1: "1e-1", 1e-2: "1e-2"}[thr]
            np.testing.assert_array_equal(c[f"step@{lab}"], t.crossings["step"][k])
            np.testing.assert_array_equal(c[f"loss@{lab}"], t.crossings["loss"][k])
            np.testing.assert_array_equal(c[f"entry:0,0@{lab}"], t.crossings["entry:0,0"][k])
        statuses |= set(c["status"].tolist())
        # the sweep's trajectory column of each row is the direct fit's, up to the end of the
        # direct fit (the batch may run on longer when the others are still running)
        traj, _ = res.trajectory_of(rows[0])
        T = t.steps.size
        np.testing.assert_array_equal(traj.steps[:T], t.steps)
        np.testing.assert_array_equal(traj["loss"][:T][:, rows], t["loss"])
    # the comparison covers both outcomes
    assert CONVERGED in statuses and TRAJ_RUNNING in statuses
    # some problem crossed 1e-2, some did not (NaN / -1 compared too)
    assert (res.columns["step@1e-2"] == -1).any() and (res.columns["step@1e-2"] > 0).any()


def test_sweep_equals_direct_fits_random_completion():
    thresholds = (1.0, 1e-1)
    base = {
        "problem": "random_low_rank_completion",
        "m": 5,
        "n": 4,
        "target_rank": 1,
        "problem_seed": 3,
        "depth": 2,
        "scale": 1e-2,
        "scale_by": "product",
        "max_steps": 400,
        "tol": 1e-4,
        "log": "every:50",
        "metrics": ("loss", "recon_error", "entry:1,2"),
        "thresholds": thresholds,
    }
    grid = {"lr": [0.05, 0.02], "n_obs": [10, 14]}
    res = sweep(base, grid, seeds=4, progress=False)
    assert len(res.meta["timings"]) == 1
    for lr in grid["lr"]:
        for n_obs in grid["n_obs"]:
            rows = res.rows(lr=lr, n_obs=n_obs)
            assert rows.size == 4
            p = ir.problems.random_low_rank_completion(5, 4, 1, n_obs, batch=4, seed=3)
            f = ir.DeepFactorization.init(p, depth=2, scale=1e-2, scale_by="product", seed=0)
            t = f.fit(
                lr,
                400,
                tol=1e-4,
                log=ir.every(50),
                metrics=base["metrics"],
                thresholds=thresholds,
                progress=False,
            )
            c = {k: v[rows] for k, v in res.columns.items()}
            for name in base["metrics"]:
                np.testing.assert_array_equal(c[name], t[name][-1], err_msg=name)
                for k, lab in enumerate(("1e0", "1e-1")):
                    np.testing.assert_array_equal(c[f"{name}@{lab}"], t.crossings[name][k])
            for k, lab in enumerate(("1e0", "1e-1")):
                np.testing.assert_array_equal(c[f"step@{lab}"], t.crossings["step"][k])
            np.testing.assert_array_equal(c["status"], t.status)
            np.testing.assert_array_equal(c["steps"], _steps(t))
            # problem data differ per seed
            assert np.unique(c["recon_error"]).size == 4
            assert np.isfinite(c["recon_error"]).all()
    # converged and still-running problems in the one batch: early freezes are compared
    assert set(res.columns["status"].tolist()) == {CONVERGED, TRAJ_RUNNING}


def test_sweep_equals_direct_fits_perturbed_eps_batch():
    """Per-problem data (eps) inside one batch, with seeds paired across configs."""
    base = {
        "problem": "perturbed_2x2",
        "depth": 2,
        "scale": 0.1,
        "lr": 0.02,
        "max_steps": 200,
        "log": "every:40",
        "metrics": ("loss", "det"),
    }
    res = sweep(base, {"eps": [0.0, 0.3]}, seeds=3, progress=False)
    assert len(res.meta["timings"]) == 1
    for eps in (0.0, 0.3):
        rows = res.rows(eps=eps)
        p = ir.problems.perturbed_2x2(-2.0, 0.5, eps, batch=3)
        f = ir.DeepFactorization.init(p, depth=2, scale=0.1, scale_by="product", seed=0)
        t = f.fit(
            0.02,
            200,
            log=ir.every(40),
            metrics=("loss", "det"),
            thresholds=MODEL_DEFAULTS["dmf"]["thresholds"],
            progress=False,
        )
        np.testing.assert_array_equal(res.columns["loss"][rows], t["loss"][-1])
        np.testing.assert_array_equal(res.columns["det"][rows], t["det"][-1])
        np.testing.assert_array_equal(res.columns["step@1e-4"][rows], t.crossings["step"][3])
    assert not np.array_equal(
        res.columns["loss"][res.rows(eps=0.0)], res.columns["loss"][res.rows(eps=0.3)]
    )


@pytest.mark.parametrize("optimizer", ["group_rmsprop", "adam"])
def test_a_matrix_sweep_trains_with_the_optimizer_it_names(optimizer):
    base = {
        "problem": "perturbed_2x2",
        "eps": 0.3,
        "depth": 2,
        "scale": 0.1,
        "lr": 0.02,
        "max_steps": 200,
        "log": "every:40",
        "metrics": ("loss",),
        "thresholds": (),
    }
    res = sweep({**base, "optimizer": optimizer}, seeds=3, progress=False)
    assert res.configs[0]["optimizer"] == optimizer
    p = ir.problems.perturbed_2x2(-2.0, 0.5, 0.3, batch=3)
    f = ir.DeepFactorization.init(p, depth=2, scale=0.1, scale_by="product", seed=0)
    t = f.fit(0.02, 200, log=ir.every(40), metrics=("loss",), progress=False, optimizer=optimizer)
    np.testing.assert_array_equal(res.columns["loss"], t["loss"][-1])
    # gradient descent, the matrix model's default, is recorded by omission: a config
    # written before there was a choice is the same config
    gd = sweep(base, seeds=3, progress=False)
    assert "optimizer" not in gd.configs[0]
    assert sweep({**base, "optimizer": "gd"}, seeds=3, progress=False).configs == gd.configs
    assert not np.array_equal(gd.columns["loss"], res.columns["loss"])


# ------------------------------------------------------------------------------ the table


def test_tidy_table():
    thresholds = (1e-1, 1.3e-2)
    res = _sweep(
        {"thresholds": thresholds, "max_steps": 300, "metrics": ("loss", "svals")},
        {"lr": [0.05, 0.1], "depth": [2, 3]},
        seeds=3,
    )
    n = 4 * 3
    cols = res.columns
    assert isinstance(res, SweepResult)
    for k in res.configs[0]:  # every key the config reads
        assert k in cols, k
    for k in (
        "seed",
        "status",
        "steps",
        "batch",
        "index",
        "loss",
        "svals:0",
        "svals:1",
        "step@1e-1",
        "loss@1e-1",
        "svals@1e-1:0",
        "step@1.3e-2",
        "loss@1.3e-2",
        "svals@1.3e-2:1",
    ):
        assert k in cols, k
    for k, v in cols.items():
        assert v.shape == (n,), k
    np.testing.assert_array_equal(cols["seed"], np.tile(np.arange(3), 4))
    assert set(cols["status"].tolist()) <= {"converged", "diverged", "max_steps"}
    assert cols["step@1e-1"].dtype.kind == "i"
    # one row per (config, seed): every (depth, lr, seed) once
    keys = set(zip(cols["depth"].tolist(), cols["lr"].tolist(), cols["seed"].tolist(), strict=True))
    assert len(keys) == n
    assert repr(res) == f"SweepResult(rows={n}, configs=4, batches=2)"

    # rows(): float match to 1e-12, int match, combined
    r = res.rows(lr=0.1)
    assert r.size == 6 and (cols["lr"][r] == 0.1).all()
    r = res.rows(lr=0.1 * (1 + 1e-14), depth=3)
    assert r.size == 3 and (cols["depth"][r] == 3).all() and (cols["lr"][r] == 0.1).all()
    assert res.rows(lr=0.07).size == 0
    np.testing.assert_array_equal(res.rows(), np.arange(n))
    np.testing.assert_array_equal(res.rows(problem="paper_2x2"), np.arange(n))

    # trajectory_of(): the column of the batch's trajectory holding the row
    for row in range(n):
        traj, col = res.trajectory_of(row)
        assert traj is res.trajectories[cols["batch"][row]]
        assert col == cols["index"][row]
        assert traj["loss"][-1, col] == cols["loss"][row]
        np.testing.assert_array_equal(
            traj["svals"][-1, col], [cols["svals:0"][row], cols["svals:1"][row]]
        )
        assert traj.crossings["step"][1, col] == cols["step@1.3e-2"][row]

    df = res.table
    assert len(df) == n
    assert list(df.columns) == list(cols)
    np.testing.assert_array_equal(df["loss"].to_numpy(), cols["loss"])


def test_missing_columns_are_nan_in_other_batches():
    res = _sweep(grid=[{"depth": 2, "metrics": ("loss", "fro")}, {"depth": 3}])
    b = res.columns["batch"]
    assert res.columns["fro"].dtype.kind == "f"
    assert np.isfinite(res.columns["fro"][b == 0]).all()
    assert np.isnan(res.columns["fro"][b == 1]).all()
    assert np.isnan(res.columns["fro@5e-1"][b == 1]).all()
    assert np.isfinite(res.columns["entry:0,0"][b == 1]).all()
    assert np.isnan(res.columns["entry:0,0"][b == 0]).all()


# -------------------------------------------------------------------- results directory


def test_out_dir_round_trip(tmp_path):
    out = tmp_path / "run"
    res = _sweep(grid={"depth": [2, 3], "lr": [0.05, 0.02]}, out=out, name="mine")
    assert (out / "manifest.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "mine"
    assert (out / "results.npz").is_file() and (out / "results.csv").is_file()
    names = sorted(p.name for p in (out / "batches").iterdir())
    assert names == ["000.npz", "000.trajectory.npz", "001.npz", "001.trajectory.npz"]

    back = load_sweep(out)
    _assert_columns_equal(back.columns, res.columns)
    assert len(back.trajectories) == 2
    for ta, tb in zip(back.trajectories, res.trajectories, strict=True):
        _assert_trajectories_equal(ta, tb)
    assert len(back.configs) == len(res.configs)
    assert [c["depth"] for c in back.configs] == [c["depth"] for c in res.configs]
    assert back.meta["seeds"] == 2 and back.meta["name"] == "mine"
    assert len(back.meta["timings"]) == 2

    with open(out / "results.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert len(table) == 1 + len(res.columns["seed"])
    col = list(res.columns).index("metrics")
    for i, line in enumerate(table[1:]):
        assert len(line) == len(res.columns)  # the cell with commas is one cell
        assert "loss,entry:0,0" in line[col]
        assert float(line[list(res.columns).index("loss")]) == res.columns["loss"][i]

    # SweepResult.save to another directory reads back the same
    res.save(tmp_path / "copy")
    again = load_sweep(tmp_path / "copy")
    _assert_columns_equal(again.columns, res.columns)
    for ta, tb in zip(again.trajectories, res.trajectories, strict=True):
        _assert_trajectories_equal(ta, tb)


def test_out_dir_refusals(tmp_path):
    out = tmp_path / "run"
    _sweep(out=out)
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match="resume"):
        _sweep(out=out)
    # resume with other configs, or other seeds, or another backend: another sweep
    with pytest.raises(ValueError, match="another sweep"):
        _sweep({"lr": 0.03}, out=out, resume=True)
    with pytest.raises(ValueError, match="another sweep"):
        _sweep(out=out, resume=True, seeds=3)
    with pytest.raises(ValueError, match="another sweep"):
        _sweep(out=out, resume=True, backend="numpy")
    assert sorted(os.listdir(out)) == before
    # resume of the same finished sweep: everything read back
    res = _sweep(out=out, resume=True)
    _assert_columns_equal(res.columns, load_sweep(out).columns)


def test_out_dir_with_other_files_is_refused(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    for resume in (False, True):
        with pytest.raises(ValueError, match="not empty"):
            _sweep(out=out, resume=resume)
    assert os.listdir(out) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine\n"


def test_out_dir_corrupt_or_foreign_manifest(tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "manifest.json").write_text("{not json")
    for resume in (False, True):
        with pytest.raises(ValueError, match="corrupt"):
            _sweep(out=out, resume=resume)
    assert (out / "manifest.json").read_text() == "{not json"
    (out / "manifest.json").write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(ValueError, match="not implicitreg"):
        _sweep(out=out, resume=True)
    assert os.listdir(out) == ["manifest.json"]


def test_out_dir_empty_existing_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    res = _sweep(out=out)
    _assert_columns_equal(load_sweep(out).columns, res.columns)


# ------------------------------------------------------------------------------- resume


def test_resume_after_crash_equals_uninterrupted(tmp_path, monkeypatch):
    base = {
        **FAST,
        "max_steps": 300,
        "log": "every:20",
        "tol": 1e-3,
        "lr": 0.05,
        "metrics": ("loss", "entry:0,0", "det"),
        "thresholds": (0.5, 1e-2),
    }
    grid = {"depth": [2, 3, 4], "scale": [0.3, 0.1]}
    a = sweep(base, grid, seeds=3, progress=False, out=tmp_path / "A")
    assert len(a.trajectories) == 3
    # the batch of depth 3 runs long enough to be cut in the middle
    rows0, rows1 = a.trajectories[0].steps.size, a.trajectories[1].steps.size
    assert rows1 >= 6
    assert len(set(a.columns["status"].tolist())) > 1  # some converge, some run on

    real = implicitreg.ops.dmf_measure
    calls = [0]
    # fit() measures once per logged row, and once more for the threshold crossings
    crash_at = rows0 + 1 + 4  # measuring the 4th row of batch 1, after 3 were logged

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] == crash_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "B"
    monkeypatch.setattr(implicitreg.ops, "dmf_measure", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep(base, grid, seeds=3, progress=False, out=out, checkpoint_every=0)
    monkeypatch.undo()
    assert calls[0] == crash_at
    batches = out / "batches"
    assert (batches / "000.npz").is_file() and (batches / "000.trajectory.npz").is_file()
    assert (batches / "001.ckpt.npz").is_file()
    assert not (batches / "001.npz").exists() and not (batches / "002.npz").exists()
    assert not (out / "results.npz").exists()

    # the checkpoint holds the rows logged before the crash
    ckpt = np.load(batches / "001.ckpt.npz")
    np.testing.assert_array_equal(ckpt["rows"], a.trajectories[1].steps[:3])

    with pytest.raises(ValueError, match="resume"):
        sweep(base, grid, seeds=3, progress=False, out=out, checkpoint_every=0)
    # the resumed run measures only what was left: batch 1 from its 4th row, then batch 2
    resumed = [0]

    def counting(*args, **kwargs):
        resumed[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(implicitreg.ops, "dmf_measure", counting)
    b = sweep(base, grid, seeds=3, progress=False, out=out, resume=True, checkpoint_every=0)
    monkeypatch.undo()
    assert resumed[0] == (rows1 - 3 + 1) + (a.trajectories[2].steps.size + 1)
    assert not (batches / "001.ckpt.npz").exists()
    assert not any(p.name.endswith(".ckpt.npz") for p in batches.iterdir())
    assert len(b.trajectories) == 3
    _assert_sweeps_equal(b, a, out)
    assert [t["configs"] for t in b.meta["timings"]] == [2, 2, 2]


def test_checkpoint_is_removed_after_each_batch(tmp_path):
    out = tmp_path / "run"
    _sweep(grid={"depth": [2, 3]}, out=out, checkpoint_every=0)
    assert sorted(p.name for p in (out / "batches").iterdir()) == [
        "000.npz",
        "000.trajectory.npz",
        "001.npz",
        "001.trajectory.npz",
    ]


# ------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "seeds,exc",
    [(0, ValueError), (-2, ValueError), (2.5, TypeError), ("4", TypeError), (True, TypeError)],
)
def test_bad_seeds(seeds, exc, tmp_path):
    with pytest.raises(exc, match="seeds"):
        sweep(FAST, seeds=seeds, progress=False, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_bad_executor(tmp_path):
    with pytest.raises(ValueError, match="executor"):
        sweep(FAST, seeds=2, progress=False, executor="dask", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_executor_ray_without_ray_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(RuntimeError, match=r"pip install 'implicitreg\[ray\]'"):
        sweep(FAST, seeds=2, progress=False, executor="ray", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bad_config_is_refused_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        sweep(FAST, [{"lr": [0.1]}, {"lrr": [0.1]}], seeds=2, progress=False, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------- config values and metrics in one table


def test_config_seed_and_row_seed_are_both_kept():
    res = _sweep(grid={"init_seed": [0, 7]}, seeds=2)
    assert not np.array_equal(res.columns["loss"][:2], res.columns["loss"][2:])  # other runs
    np.testing.assert_array_equal(res.columns["init_seed"], [0, 0, 7, 7])
    np.testing.assert_array_equal(res.columns["seed"], [0, 1, 0, 1])
    np.testing.assert_array_equal(res.rows(init_seed=7), [2, 3])


def test_rows_matches_none():
    res = _sweep(grid={"init_det": [None, "positive"]})
    np.testing.assert_array_equal(res.rows(init_det="positive"), [2, 3])
    np.testing.assert_array_equal(res.rows(init_det=None), [0, 1])
    with pytest.raises(KeyError, match="no column"):
        res.rows(nope=1)


def test_widths_like_init():
    (c,) = expand({"depth": 3, "widths": 4})
    assert c["widths"] == 4
    (c,) = expand({"depth": 3}, {"widths": (4, 5)})  # a tuple is one value, not an axis
    assert c["widths"] == (4, 5)
    assert len(expand({"depth": 3}, {"widths": [(4, 5), (2, 2)]})) == 2


def test_csv_header_and_cells(tmp_path):
    res = _sweep(out=tmp_path / "run")
    with open(tmp_path / "run" / "results.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == list(res.columns)
    assert all(len(line) == len(table[0]) for line in table)
    names = list(res.columns)
    for k in ("problem", "status", "init_det", "metrics"):
        j = names.index(k)
        assert [line[j] for line in table[1:]] == res.columns[k].tolist(), k
    j = names.index("loss")
    np.testing.assert_array_equal([float(line[j]) for line in table[1:]], res.columns["loss"])


@pytest.mark.parametrize("metric", ["det", "rank"])
def test_metric_columns_never_hide_config_values(metric):
    res = _sweep(
        {
            "problem": "random_low_rank_completion",
            "m": 4,
            "n": 4,
            "n_obs": 10,
            "init_det": "positive",
            "target_rank": 1,
            "metrics": ("loss", metric),
        }
    )
    np.testing.assert_array_equal(res.columns[metric], res.trajectories[0][metric][-1])
    assert res.rows(init_det="positive").size == len(res.columns["loss"])
    assert res.rows(target_rank=1).size == len(res.columns["loss"])


def test_empty_grid_is_refused():
    with pytest.raises(ValueError, match="grid"):
        expand({}, [])


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"scale": -1.0}, "scale"),
        ({"lr": 0.0}, "lr"),
        ({"metrics": ("loss", "entry:5,5")}, "entry"),
        ({"thresholds": (1e-3, 1e-1)}, "thresholds"),
        ({"init": "orthogonal"}, "init"),
    ],
)
def test_a_bad_value_in_a_late_batch_is_refused_before_anything_runs(tmp_path, bad, match):
    grid = [{"depth": 2}, {"depth": 3, **bad}]  # the bad config is in the second batch
    with pytest.raises((ValueError, TypeError), match=match):
        sweep(FAST, grid, seeds=2, progress=False, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_an_unavailable_backend_is_refused_before_the_directory_is_claimed(tmp_path):
    with pytest.raises(RuntimeError, match="cuda"):
        sweep(FAST, seeds=2, backend="cuda", progress=False, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------- model "cp"

CP = {
    "model": "cp",
    "problem": "random_cp_completion",
    "order": 3,
    "dim": 4,
    "target_rank": 1,
    "optimizer": "group_rmsprop",
    "lr": 1e-2,
    "tol": 1e-6,
    "patience": 1,
    "check_every": 20,
    "max_steps": 400,
    "log": 20,
    "metrics": ("loss", "recon_error"),
    "thresholds": (),
    "rank_restarts": 1,
    "baseline": True,
}


def test_cp_sweep_equals_direct_fits():
    res = sweep(CP, {"n_obs": [30, 50], "scale": [1e-2, 1e-3]}, seeds=3, progress=False)
    assert len(res.meta["timings"]) == 1  # n_obs and scale are per problem: one batch
    for n_obs in (30, 50):
        for scale in (1e-2, 1e-3):
            rows = res.rows(n_obs=n_obs, scale=scale)
            T, orders = ir.problems.random_cp_tensor((4, 4, 4), 1, batch=3, seed=0)
            q = ir.tensor_completion(T, ir.problems.observe_first(orders, n_obs, (4, 4, 4)))
            c = ir.CPFactorization.init(q, scale=scale, seed=0)
            t = c.fit(
                1e-2,
                400,
                tol=1e-6,
                patience=1,
                check_every=20,
                log=ir.geometric(20),
                progress=False,
            )
            np.testing.assert_array_equal(res.columns["recon_error"][rows], t["recon_error"][-1])
            np.testing.assert_array_equal(res.columns["status"][rows], t.status)
            np.testing.assert_array_equal(
                res.columns["tensor_rank"][rows], ir.tensor_rank(c.tensor())
            )
            mem = ir.baselines.memorizer(q).reshape(3, -1)
            np.testing.assert_allclose(
                res.columns["memorizer_error"][rows],
                np.linalg.norm(mem - T.reshape(3, -1), axis=1),
                rtol=1e-12,
            )


def test_cp_config_mismatches_are_refused():
    with pytest.raises(ValueError, match="model"):
        expand({**CP, "problem": "paper_2x2"})
    with pytest.raises(ValueError, match="model"):
        expand({"problem": "random_cp_completion"})
    with pytest.raises(ValueError, match="thresholds"):
        sweep({**CP, "thresholds": (1e-1,)}, seeds=1, progress=False)
    with pytest.raises(ValueError, match="metrics"):
        sweep({**CP, "metrics": ("loss", "entry:0,0")}, seeds=1, progress=False)


def test_cp_sweep_resumes_after_a_crash_exactly(tmp_path, monkeypatch):
    grid = {"n_obs": [30, 50], "scale": [1e-2, 1e-3]}
    ref = sweep(CP, grid, seeds=2, progress=False)
    real, calls = ir.CPFactorization.measure, [0]

    def crash(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 6:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ir.CPFactorization, "measure", crash)
    with pytest.raises(KeyboardInterrupt):
        sweep(CP, grid, seeds=2, progress=False, out=tmp_path, checkpoint_every=0)
    assert (tmp_path / "batches" / "000.ckpt.npz").exists()
    monkeypatch.setattr(ir.CPFactorization, "measure", real)
    res = sweep(CP, grid, seeds=2, progress=False, out=tmp_path, resume=True)
    for k, v in ref.columns.items():
        np.testing.assert_array_equal(res.columns[k], v, err_msg=k)
    np.testing.assert_array_equal(res.trajectories[0].steps, ref.trajectories[0].steps)
    assert not (tmp_path / "batches" / "000.ckpt.npz").exists()


# ------------------------------------------------------------- kill -9 and corrupt files

_KILL_BASE = {
    "problem": "paper_2x2",
    "scale": 0.3,
    "scale_by": "factor",
    "lr": 1e-4,
    "max_steps": 300_000,
    "log": "every:3000",
    "metrics": ("loss", "entry:0,0"),
    "thresholds": (0.5,),
}
_KILL_GRID = {"depth": [2, 3, 4]}
_KILL_SCRIPT = """
import sys
import implicitreg as ir
ir.sweep(eval(sys.argv[1]), eval(sys.argv[2]), seeds=64, progress=False, out=sys.argv[3],
         checkpoint_every=0)
"""


def _package_env() -> dict:
    """The environment of a child Python that imports this very implicitreg."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(ir.__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(tmp_path):
    """A real kill -9 (no Python cleanup, no finally) in the middle of a batch: the finished
    batch survives, the running one resumes from its last checkpoint, and the results equal
    those of a run never interrupted."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, repr(_KILL_BASE), repr(_KILL_GRID), str(out)],
        env=_package_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    batches = out / "batches"
    deadline = time.monotonic() + 120
    try:
        # kill once batch 0 is written and batch 1 is part way (has checkpointed)
        while not ((batches / "000.npz").exists() and (batches / "001.ckpt.npz").exists()):
            assert proc.poll() is None, (
                f"the sweep ended before it could be killed: {proc.communicate()}"
            )
            assert time.monotonic() < deadline, "the sweep never reached batch 1"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert (batches / "000.npz").exists() and not (batches / "002.npz").exists()
    assert not (out / "results.npz").exists()
    ckpt_rows = np.load(batches / "001.ckpt.npz")["rows"].size

    ref = sweep(_KILL_BASE, _KILL_GRID, seeds=64, progress=False)
    steps = []
    res = sweep(
        _KILL_BASE,
        _KILL_GRID,
        seeds=64,
        progress=steps.append,
        out=out,
        resume=True,
        checkpoint_every=0,
    )
    # batch 0 was read back, batch 1 went on from its checkpoint, batch 2 ran whole
    assert 0 < ckpt_rows < ref.trajectories[1].steps.size
    _assert_sweeps_equal(res, ref, out)
    assert sum(steps) == 3 * _KILL_BASE["max_steps"]
    names = sorted(os.listdir(batches))
    assert names == [f"{i:03d}.{s}" for i in range(3) for s in ("npz", "trajectory.npz")]


@pytest.mark.parametrize("which", ["npz", "trajectory.npz"])
@pytest.mark.parametrize("content", ["garbage", "truncated", "foreign"])
def test_corrupt_or_foreign_batch_file_is_a_clear_error(tmp_path, which, content):
    out = tmp_path / "run"
    _sweep(grid={"depth": [2, 3]}, out=out)
    path = out / "batches" / f"001.{which}"
    if content == "garbage":
        path.write_bytes(b"not an npz at all")
    elif content == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        with open(path, "wb") as fh:  # a whole .npz, of another program
            np.savez(fh, meta=np.array('{"format": "someone.else/1"}'), x=np.zeros(3))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"batch 1 .*cannot be read back.*Delete both"):
        _sweep(grid={"depth": [2, 3]}, out=out, resume=True)
    assert path.read_bytes() == before  # never overwritten
    # the advice works: without the batch's files, it runs again
    for s in ("npz", "trajectory.npz"):
        (out / "batches" / f"001.{s}").unlink(missing_ok=True)
    res = _sweep(grid={"depth": [2, 3]}, out=out, resume=True)
    _assert_columns_equal(res.columns, _sweep(grid={"depth": [2, 3]}).columns)


def test_resume_removes_the_temporary_files_of_a_killed_write(tmp_path):
    out = tmp_path / "run"
    ref = _sweep(grid={"depth": [2, 3]}, out=out)
    (out / "batches" / "001.npz").unlink()
    (out / "batches" / "001.npz.tmp-12345.npz").write_bytes(b"half a file")
    (out / "results.npz.tmp-12345.npz").write_bytes(b"half a file")
    res = _sweep(grid={"depth": [2, 3]}, out=out, resume=True)
    _assert_columns_equal(res.columns, ref.columns)
    assert not [f for d in (out, out / "batches") for f in os.listdir(d) if ".tmp-" in f]


def test_close_thresholds_get_columns_of_their_own_that_read_back():
    """Threshold columns are named by the shortest label that reads back as the threshold:
    0.1 and 0.099999999 do not share (and overwrite) one column."""
    t = (0.1, 0.099999999, 0.01)
    res = ir.sweep(
        {"problem": "paper_2x2", "max_steps": 20, "thresholds": t, "metrics": ("loss",)},
        seeds=1,
        progress=False,
    )
    labels = [c.split("@")[1] for c in res.columns if c.startswith("step@")]
    assert labels == ["1e-1", "9.9999999e-2", "1e-2"]
    assert [float(x) for x in labels] == list(t)


@pytest.mark.parametrize(
    "bad",
    [
        {"progress": "yes"},
        {"checkpoint_every": -1},
        {"resume": "yes"},
        {"name": 3},
        {"seeds": 0},
        {"executor": "threads"},
    ],
)
def test_bad_arguments_are_refused_before_the_directory_is_claimed(tmp_path, bad):
    base = {"problem": "paper_2x2", "max_steps": 5}
    out = tmp_path / "run"
    name = next(iter(bad))
    with pytest.raises((TypeError, ValueError), match=f"^{name}: "):
        ir.sweep(base, **{"seeds": 1, "progress": False, "out": out, **bad})
    assert not out.exists()
    ir.sweep(base, seeds=1, progress=False, out=out)  # the corrected call takes the directory
    assert (out / "manifest.json").exists()


_LONG_SWEEP = (
    "import implicitreg as ir, sys; ir.sweep({'problem': 'paper_2x2', 'max_steps': "
    "1000000, 'tol': None, 'log': 'every:500000'}, seeds=256, progress=False, "
    "out=sys.argv[1], checkpoint_every=0)"
)


def test_a_second_process_on_a_results_directory_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", _LONG_SWEEP, str(out)])
    try:
        deadline = time.monotonic() + 60
        while not (out / ".lock").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(
            ValueError, match=f"^out: {out} is being written by process {first.pid} on "
        ):
            ir.sweep(
                {"problem": "paper_2x2", "max_steps": 1000000, "tol": None, "log": "every:500000"},
                seeds=256,
                progress=False,
                out=out,
                resume=True,
                checkpoint_every=0,
            )
    finally:
        first.kill()
        first.wait()
    # killed: its lock is stale, and the resumed sweep takes it over and finishes
    assert (out / ".lock").exists()
    res = ir.sweep(
        {"problem": "paper_2x2", "max_steps": 1000000, "tol": None, "log": "every:500000"},
        seeds=256,
        progress=False,
        out=out,
        resume=True,
        checkpoint_every=0,
    )
    assert len(res.columns["seed"]) == 256 and not (out / ".lock").exists()


def test_one_default_per_setting_in_every_layer():
    """The paper's settings are the defaults of the models, the sweep and the command line."""
    import inspect

    from implicitreg.cli import _parser
    from implicitreg.init import init_factors

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    for fn in (ir.CPFactorization.step, ir.CPFactorization.fit):
        assert default(fn, "optimizer") == MODEL_DEFAULTS["cp"]["optimizer"] == "group_rmsprop"
    for fn in (ir.DeepFactorization.step, ir.DeepFactorization.fit):
        assert default(fn, "optimizer") == MODEL_DEFAULTS["dmf"]["optimizer"] == "gd"
    assert DEFAULTS["optimizer"] is None  # the model's
    for fn in (ir.DeepFactorization.init, init_factors):
        assert default(fn, "scale_by") == DEFAULTS["scale_by"] == "product"
    run = _parser().parse_args(["run"])
    assert run.scale_by == DEFAULTS["scale_by"]


@pytest.mark.parametrize(
    "config,unused",
    [
        ({"problem": "paper_2x2", "b12": 5.0}, "'b12'"),
        ({"problem": "paper_2x2", "n_obs": 30, "m": 4}, "'m', 'n_obs'"),
        ({"model": "cp", "problem": "random_cp_completion", "depth": 3}, "'depth'"),
        ({"problem": "perturbed_2x2", "patience": 2}, "'patience'"),
    ],
)
def test_a_key_the_problem_and_model_do_not_read_is_refused_by_name(config, unused):
    with pytest.raises(
        ValueError,
        match=f"^config: {unused} not read by problem "
        f"'{config['problem']}' with model .*, which read: ",
    ):
        expand(config)
    key = unused.split(", ")[0].strip("'")
    with pytest.raises(ValueError, match=f"^config: .*'{key}'.* not read"):  # a grid axis too
        expand({k: v for k, v in config.items() if k != key}, {key: [config[key]]})


def test_results_record_only_the_keys_read():
    dmf = sweep({"problem": "paper_2x2", "max_steps": 5}, seeds=1, progress=False)
    for key in ("b12", "b21", "m", "n", "target_rank", "n_obs", "components", "optimizer"):
        assert key not in dmf.columns
    cp = sweep(
        {"model": "cp", "problem": "random_cp_completion", "dim": 3, "n_obs": 10, "max_steps": 5},
        seeds=1,
        progress=False,
    )
    for key in ("depth", "init", "widths", "scale_by", "init_det", "b12", "m"):
        assert key not in cp.columns
    assert {"order", "dim", "n_obs", "target_rank", "optimizer", "components"} <= set(cp.columns)
