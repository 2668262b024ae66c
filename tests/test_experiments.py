"""The named experiments (implicitreg.experiments): each quick variant lands in the windows
the theory gives (PAPER.md §2.4-2.5), writes its report and figures, and resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

import implicitreg.ops
from implicitreg.experiments import EXPERIMENTS, get, replot, reproduce
from implicitreg.experiments.paper import (
    MINIMIZED,
    NORM_MINIMA,
    NORMS,
    PAPER_CONFIGS,
    det_bound,
    erank_bound,
    loss_grid,
    rank1_path,
)
from implicitreg.sweep import load_sweep

pytest.importorskip("matplotlib", reason="figures need matplotlib (extra 'plot')")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every experiment's quick variant, run once into its own directory."""
    out = {}
    for name in EXPERIMENTS:
        d = tmp_path_factory.mktemp(name)
        res, rows = reproduce(name, quick=True, out=d, progress=False)
        out[name] = (d, res, rows)
    return out


def _w11(res, t, idx):
    return np.abs(res.columns[f"entry:0,0@{t}"][idx])


def test_paper_2x2_windows(runs):
    _, res, _ = runs["paper-2x2"]
    c = res.columns
    assert (c["status"] == "converged").all()
    for depth, lr, scale in PAPER_CONFIGS:
        for init in ("normal", "balanced"):
            idx = res.rows(depth=depth, lr=lr, scale=scale, init=init)
            assert idx.size == res.meta["seeds"]
            w = _w11(res, "1e-4", idx)
            pos = c["det@1e-4"][idx] > 0
            # PAPER.md §2.4: while det > 0, |w11| > (1-s)^2/s = 68.72 at loss < 1e-4
            assert (w[pos] > det_bound(1e-4)).all()
            if depth == 2:  # det flips under GD: the plateau of the paper's depth-2 panel
                assert (w < 10).all()
                assert 5 < np.median(w) < 10 if init == "balanced" else np.median(w) < 2
            elif init == "balanced":  # on the rank-1 path 1/sqrt(2 loss), det > 0 kept
                assert pos.all()
                for t, lab in ((1e-2, "1e-2"), (1e-3, "1e-3"), (1e-4, "1e-4")):
                    np.testing.assert_allclose(_w11(res, lab, idx), rank1_path(t), rtol=0.03)
    # the first crossing is exact: its loss is below the threshold
    assert (c["loss@1e-4"] < 1e-4).all() and (c["loss@1.3e-2"] < 1.3e-2).all()


def test_perturbed_2x2_limits(runs):
    _, res, _ = runs["perturbed-2x2"]
    c = res.columns
    for eps in (0.05, 0.1, 0.5):
        idx = res.rows(depth=3, eps=eps)
        # balanced depth 3 from det < 0 converges to the rank-1 solution w11 = -1/eps
        np.testing.assert_allclose(c["entry:0,0"][idx], -1 / eps, rtol=0.02)
    neg = (c["det@1e-4"] < 0) & np.isfinite(c["entry:0,0@1e-4"])
    assert neg.sum() >= 20
    bound = det_bound(1e-4, 2.0, 0.5, c["eps"][neg])
    assert (c["entry:0,0@1e-4"][neg] < -bound).all()  # PAPER.md §2.5


def test_family_dxd_grows(runs):
    _, res, _ = runs["family-dxd"]
    c = res.columns
    assert (c["status"] == "converged").all()
    for d in (3, 4, 5):
        idx = res.rows(d=d, init="balanced")
        np.testing.assert_allclose(_w11(res, "1e-4", idx), rank1_path(1e-4), rtol=0.01)
        for init in ("normal", "balanced"):
            idx = res.rows(d=d, init=init)
            med = [np.median(_w11(res, t, idx)) for t in ("1e-2", "1e-3", "1e-4")]
            assert med[0] < med[1] < med[2]


def test_norms_vs_rank_bounds(runs):
    _, res, _ = runs["norms-vs-rank"]
    c = res.columns
    for t, lab in ((1e-2, "1e-2"), (1e-3, "1e-3"), (1e-4, "1e-4")):
        pos = c[f"det@{lab}"] > 0
        assert pos.sum() >= res.meta["seeds"]  # the balanced runs keep det > 0
        for name in NORMS:
            assert (c[f"{name}@{lab}"][pos] > det_bound(t)).all()
        assert (c[f"erank@{lab}"][pos] < erank_bound(t)).all()
        assert (c[f"dist_rank:1@{lab}"][pos] < np.sqrt(2 * t)).all()
    idx = res.rows(init="balanced")
    for name in NORMS:  # every norm grows as the loss falls
        med = [np.median(c[f"{name}@{lab}"][idx]) for lab in ("1e-1", "1e-2", "1e-3", "1e-4")]
        assert np.all(np.diff(med) > 0)
    for name, norm in MINIMIZED.items():  # the fit each norm picks: its closed-form minimum
        np.testing.assert_allclose(c[f"min_{norm}"], NORM_MINIMA[name], rtol=1e-7)
        assert (c[f"{name}@1e-4"] > c[f"min_{norm}"]).all()  # gradient descent's: above it


def test_deep_vs_nuclear_depth_beats_the_nuclear_norm(runs):
    _, res, _ = runs["deep-vs-nuclear"]
    c = res.columns
    n_obs = int(c["n_obs"].max())
    block = res.rows(n_obs=n_obs)
    # certified; ADMM can crawl on a degenerate (exactly recoverable) problem: 1e-6 at worst
    assert (c["min_nuclear_gap"] < 1e-6).all()
    # the same problems in every config: the same minimizer
    for seed in range(res.meta["seeds"]):
        rows = block[c["seed"][block] == seed]
        assert np.ptp(c["min_nuclear_recon_error"][rows]) == 0
    nuc = np.median(c["min_nuclear_recon_error"][block])
    deep = np.median(c["recon_error"][res.rows(n_obs=n_obs, depth=3)])
    assert deep < 0.5 * nuc  # as Arora et al. (2019) found: depth 3 recovers better


def test_random_completion_depth_lowers_rank_and_error(runs):
    _, res, _ = runs["random-completion"]
    c = res.columns
    n_obs = int(c["n_obs"].max())
    err = {d: np.median(c["recon_error"][res.rows(depth=d, n_obs=n_obs)]) for d in (1, 2, 3, 4)}
    erank = {d: np.median(c["erank"][res.rows(depth=d, n_obs=n_obs)]) for d in (1, 2, 3, 4)}
    assert err[1] > 0.3 and err[3] < 0.05 and err[4] < 0.05
    assert erank[3] < 0.5 * erank[1]
    assert abs(erank[3] - c["target_rank"][0]) < 0.5


def test_tensor_completion_recovers_rank_one_from_small_init(runs):
    _, res, _ = runs["tensor-completion"]
    c = res.columns
    assert (c["status"] == "converged").all()
    for n in (200, 300):  # the regime: init 1e-3, order 3, n >= 200
        idx = res.rows(n_obs=n, scale=1e-3)
        assert np.median(c["recon_error"][idx]) < 1e-3
        assert (c["tensor_rank"][idx] == 1).all()
        # the linear baseline stays far off and of high rank
        assert (c["memorizer_error"][idx] > 0.5).all() and (c["memorizer_rank"][idx] > 5).all()
    # a smaller init gives a lower error (PAPER.md §4.8)
    for n in (200, 300):
        assert np.median(c["recon_error"][res.rows(n_obs=n, scale=1e-3)]) < np.median(
            c["recon_error"][res.rows(n_obs=n, scale=1e-2)]
        )
    _, res4, _ = runs["tensor-completion-order4"]
    assert (res4.columns["tensor_rank"] == 1).all()
    assert (res4.columns["recon_error"] < 1e-3).all()


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_report_and_figures_are_written(runs, name):
    d, res, rows = runs[name]
    text = (d / "report.txt").read_text()
    assert get(name).title in text and "median [IQR]" in text
    assert json.loads((d / "report.json").read_text())["experiment"] == name
    assert len(rows) > 0 and all(r["ours"]["of"] == res.meta["seeds"] for r in rows)
    figs = sorted((d / "figures").iterdir())
    assert {f.suffix for f in figs} == {".png", ".pdf"}
    assert all(f.stat().st_size > 10_000 for f in figs)
    # results round-trip through the directory
    back = load_sweep(d)
    assert back.columns.keys() == res.columns.keys()
    for k, v in res.columns.items():
        np.testing.assert_array_equal(back.columns[k], v)
    # the figures can be redrawn from the directory alone
    for f in figs:
        f.unlink()
    assert len(replot(d)) == len(figs)


def test_report_names_paper_values(runs):
    text = (runs["paper-2x2"][0] / "report.txt").read_text()
    assert "depth 3, lr 0.006, init 1e-05 (b)" in text and "70.5" in text and "68.72" in text


def test_resume_after_a_crash_equals_an_uninterrupted_run(runs, tmp_path, monkeypatch):
    ref_dir, ref, _ = runs["paper-2x2"]
    real, calls = implicitreg.ops.dmf_measure, [0]

    def crash_midway(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 500:  # inside the second batch (the first logs about 300 rows)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(implicitreg.ops, "dmf_measure", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        reproduce(
            "paper-2x2", quick=True, out=tmp_path, progress=False, plot=False, checkpoint_every=0
        )
    assert (tmp_path / "batches" / "000.npz").exists()
    assert (tmp_path / "batches" / "001.ckpt.npz").exists()
    monkeypatch.setattr(implicitreg.ops, "dmf_measure", real)
    with pytest.raises(ValueError, match="resume"):
        reproduce("paper-2x2", quick=True, out=tmp_path, progress=False, plot=False)
    res, rows = reproduce(
        "paper-2x2", quick=True, out=tmp_path, progress=False, plot=False, resume=True
    )
    assert not list((tmp_path / "batches").glob("*.ckpt.npz"))
    for k, v in ref.columns.items():
        np.testing.assert_array_equal(res.columns[k], v)
    for a, b in zip(res.trajectories, ref.trajectories, strict=True):
        np.testing.assert_array_equal(a.steps, b.steps)
        for k in a.data:
            np.testing.assert_array_equal(a.data[k], b.data[k])
    assert (tmp_path / "report.txt").read_text().split("\n")[:-3] == (
        ref_dir / "report.txt"
    ).read_text().split("\n")[:-3]  # all but the timings


def test_bad_names_and_values_list_the_choices():
    with pytest.raises(ValueError, match="paper-2x2.*perturbed-2x2"):
        get("paper_2x2")
    with pytest.raises(ValueError, match="backend"):
        reproduce("paper-2x2", quick=True, backend="gpu", progress=False)
    with pytest.raises(TypeError, match="dtype"):
        reproduce("paper-2x2", quick=True, dtype="float16", progress=False)


def test_loss_grid_is_decreasing_and_holds_the_markers():
    g = np.array(loss_grid(1e-4))
    assert (np.diff(g) < 0).all() and g[0] == 1.0 and g[-1] == 1e-4
    for t in (1e-1, 1e-2, 1e-3, 1.3e-1, 1.3e-4):
        assert np.isclose(g, t, rtol=1e-12, atol=0).any()
