"""Figures of the matrix experiments (matplotlib, extra "plot"), each written as PNG and PDF.

Curves against loss come from the exact first crossings of a grid of loss thresholds (median
and IQR over seeds); curves against iteration and the individual runs come from the logged
trajectories."""

from __future__ import annotations

import os

import numpy as np

from ..sweep import threshold_label
from .paper import (
    EPSILONS,
    FAMILY_D,
    MARKERS,
    MINIMIZED,
    NORMS,
    PAPER_CONFIGS,
    PERTURBED_DEPTHS,
    det_bound,
    erank_bound,
    legend_2x2,
    rank1_path,
)

_CMAP_RUNS = "copper"  # individual runs coloured by iteration, as in the paper's panels


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("figures need matplotlib: pip install 'implicitreg[plot]'") from exc
    return plt


def _save(fig, figdir: str, name: str) -> list[str]:
    os.makedirs(figdir, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(figdir, f"{name}.{ext}")
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    _plt().close(fig)
    return paths


def _thresholds(res) -> np.ndarray:
    return np.asarray(res.configs[0]["thresholds"], dtype=np.float64)


def crossing_curve(res, idx, metric: str, transform=np.abs):
    """(thresholds, median, q1, q3) of transform(metric) at the first crossing of each
    threshold, over rows idx; NaN where fewer than half of the seeds got there."""
    thr = _thresholds(res)
    med, q1, q3 = (np.full(thr.size, np.nan) for _ in range(3))
    for k, t in enumerate(thr):
        v = transform(res.columns[f"{metric}@{threshold_label(t)}"][idx])
        v = v[np.isfinite(v)]
        if v.size * 2 >= len(idx) and v.size:
            q1[k], med[k], q3[k] = np.percentile(v, [25, 50, 75])
    return thr, med, q1, q3


def _band(ax, x, med, q1, q3, color, label, **kw):
    ax.plot(x, med, color=color, lw=2, label=label, **kw)
    ax.fill_between(x, q1, q3, color=color, alpha=0.2, lw=0)


def _runs(ax, res, idx, metric, n_runs, norm, until=None, transform=np.abs):
    """A few individual runs, |metric| against loss, coloured by iteration."""
    from matplotlib.collections import LineCollection

    for row in idx[:n_runs]:
        t, col = res.trajectory_of(int(row))
        loss, y, steps = t["loss"][:, col], transform(t[metric][:, col]), t.steps
        keep = np.isfinite(loss) & np.isfinite(y) & (loss > 0)
        if until is not None:
            below = np.nonzero(loss < until)[0]
            if below.size:
                keep[below[0] + 1 :] = False
        pts = np.column_stack([loss[keep], y[keep]])
        if len(pts) < 2:
            continue
        lc = LineCollection(
            np.stack([pts[:-1], pts[1:]], axis=1), cmap=_CMAP_RUNS, norm=norm, lw=0.8, alpha=0.8
        )
        lc.set_array(np.maximum(steps[keep][1:], 1))
        ax.add_collection(lc)


def _loss_axis(ax, lowest):
    ax.set_xscale("log")
    ax.set_xlim(1.0, lowest)  # inverted: the loss falls to the right, as in the paper
    ax.set_xlabel("loss")


def _iterations_norm(res, idx):
    from matplotlib.colors import LogNorm

    top = max(int(np.nanmax(res.columns["steps"][idx])), 10)
    return LogNorm(vmin=1, vmax=top)


def figure_paper_2x2(res, figdir: str) -> list[str]:

    plt = _plt()
    depths = sorted({d for d, _, _ in PAPER_CONFIGS if res.rows(depth=d).size})
    fig, axes = plt.subplots(
        1, len(depths), figsize=(5.2 * len(depths), 4.4), squeeze=False, layout="constrained"
    )
    colors = plt.get_cmap("tab10").colors
    for ax, depth in zip(axes[0], depths, strict=True):
        norm = _iterations_norm(res, res.rows(depth=depth))
        ci, top = 0, 0.0
        for d, lr, scale in PAPER_CONFIGS:
            if d != depth:
                continue
            for balanced in (False, True):
                idx = res.rows(
                    depth=d, lr=lr, scale=scale, init="balanced" if balanced else "normal"
                )
                if idx.size == 0:
                    continue
                thr, med, q1, q3 = crossing_curve(res, idx, "entry:0,0")
                color = colors[ci % len(colors)]
                ci += 1
                top = max(top, np.nanmax(q3, initial=0.0))
                _band(
                    ax,
                    thr,
                    med,
                    q1,
                    q3,
                    color,
                    legend_2x2(d, lr, scale, balanced),
                    ls="-" if balanced else "--",
                )
                mk = np.isin(thr, MARKERS)
                ax.plot(thr[mk], med[mk], "o", color=color, ms=5)
                _runs(ax, res, idx, "entry:0,0", 2, norm, until=1e-4)
        grid = np.geomspace(0.5, 1e-4, 200)
        ax.plot(grid, rank1_path(grid), "k:", lw=1, label=r"rank-1 path $1/\sqrt{2\ell}$")
        b = det_bound(grid)
        ax.plot(
            grid[b > 0], b[b > 0], color="0.5", ls="-.", lw=1, label=r"det$>0$ bound $(1-s)^2/s$"
        )
        _loss_axis(ax, 1e-4)
        ax.set_ylim(0, 1.15 * top if top > 0 else None)  # the runs' range, as in the paper
        ax.set_ylabel("|unobserved entry|  |w11|")
        ax.set_title(f"depth {depth}")
        ax.legend(fontsize=7, loc="upper left")
        fig.colorbar(
            plt.cm.ScalarMappable(norm=norm, cmap=_CMAP_RUNS),
            ax=ax,
            label="iterations (individual runs)",
        )
    fig.suptitle(
        f"Canonical 2x2 completion: median and IQR over {res.meta['seeds']} seeds, "
        "markers at loss 1.3e-1 ... 1.3e-4"
    )
    return _save(fig, figdir, "paper-2x2")


def figure_perturbed(res, figdir: str) -> list[str]:

    plt = _plt()
    depths = [d for d, _, _ in PERTURBED_DEPTHS if res.rows(depth=d).size]
    fig, axes = plt.subplots(
        2, len(depths), figsize=(5 * len(depths), 8), squeeze=False, layout="constrained"
    )
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(EPSILONS)))
    lowest = float(_thresholds(res)[-1])
    for j, depth in enumerate(depths):
        top, bottom = axes[0, j], axes[1, j]
        for eps, color in zip(EPSILONS, colors, strict=True):
            idx = res.rows(depth=depth, eps=eps)
            if idx.size == 0:
                continue
            thr, med, q1, q3 = crossing_curve(res, idx, "entry:0,0", transform=lambda v: v)
            _band(top, thr, med, q1, q3, color, f"eps = {eps:g}")
            t, _ = res.trajectory_of(int(idx[0]))
            cols = [res.trajectory_of(int(r))[1] for r in idx]
            w = t["entry:0,0"][:, cols]
            q = np.nanpercentile(w, [25, 50, 75], axis=1)
            steps = np.maximum(t.steps, 1)
            _band(bottom, steps, q[1], q[0], q[2], color, f"eps = {eps:g}")
            if eps > 0:
                for ax in (top, bottom):
                    ax.axhline(-1 / eps, color=color, ls=":", lw=1)
        _loss_axis(top, lowest)
        top.set_ylabel("w11 (signed)")
        top.set_title(f"depth {depth}: w11 vs loss (dotted: -1/eps)")
        bottom.set_xscale("log")
        bottom.set_xlabel("iteration")
        bottom.set_ylabel("w11 (signed)")
        bottom.set_title(f"depth {depth}: w11 vs iteration")
        for ax in (top, bottom):
            lo, hi = ax.get_ylim()  # w11 -> -1/eps, or +-inf for eps = 0: clip at +-110
            ax.set_ylim(max(-110, lo), min(110, max(hi, 5)))
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"Perturbed 2x2 (-2, 0.5, eps), det(W(0)) < 0: median and IQR over "
        f"{res.meta['seeds']} seeds"
    )
    return _save(fig, figdir, "perturbed-2x2")


def figure_family(res, figdir: str) -> list[str]:

    plt = _plt()
    ds = [d for d in FAMILY_D if res.rows(d=d).size]
    fig, axes = plt.subplots(
        1, len(ds), figsize=(5 * len(ds), 4.2), squeeze=False, layout="constrained"
    )
    for ax, d in zip(axes[0], ds, strict=True):
        norm = _iterations_norm(res, res.rows(d=d))
        for init, color in (("normal", "C0"), ("balanced", "C1")):
            idx = res.rows(d=d, init=init)
            thr, med, q1, q3 = crossing_curve(res, idx, "entry:0,0")
            _band(ax, thr, med, q1, q3, color, f"{init} init")
            _runs(ax, res, idx, "entry:0,0", 2, norm, until=1e-4)
        grid = np.geomspace(0.5, 1e-4, 200)
        ax.plot(grid, rank1_path(grid), "k:", lw=1, label=r"$1/\sqrt{2\ell}$")
        _loss_axis(ax, 1e-4)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("|w11|")
        ax.set_title(f"d = {d}, depth 3")
        ax.legend(fontsize=8, loc="upper left")
        fig.colorbar(
            plt.cm.ScalarMappable(norm=norm, cmap=_CMAP_RUNS),
            ax=ax,
            label="iterations (individual runs)",
        )
    fig.suptitle(f"d x d family: median and IQR over {res.meta['seeds']} seeds")
    return _save(fig, figdir, "family-dxd")


def figure_norms_vs_rank(res, figdir: str) -> list[str]:

    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), layout="constrained")
    grid = np.geomspace(0.2, 1e-4, 200)
    colors = dict(zip(NORMS, ("C0", "C1", "C2", "C3", "C4"), strict=True))
    panels = (("norms", NORMS), ("erank", ("erank",)), ("dist_rank:1", ("dist_rank:1",)))
    for init, ls in (("balanced", "-"), ("normal", "--")):
        idx = res.rows(init=init)
        if idx.size == 0:
            continue
        t, _ = res.trajectory_of(int(idx[0]))
        cols = [res.trajectory_of(int(r))[1] for r in idx]
        steps = np.maximum(t.steps, 1)
        for j, (_, names) in enumerate(panels):
            for name in names:
                color = colors.get(name, "C0")
                label = f"{name} ({init})"
                thr, med, q1, q3 = crossing_curve(res, idx, name, transform=lambda v: v)
                _band(axes[0, j], thr, med, q1, q3, color, label, ls=ls)
                q = np.nanpercentile(t[name][:, cols], [25, 50, 75], axis=1)
                _band(axes[1, j], steps, q[1], q[0], q[2], color, label, ls=ls)
    for name, norm in MINIMIZED.items():  # the fit each norm picks: a level, not a curve
        if f"min_{norm}" in res.columns:
            level = float(np.median(res.columns[f"min_{norm}"]))
            for i in range(2):
                axes[i, 0].axhline(level, color=colors[name], lw=0.8, ls=":")
            axes[0, 0].plot([], [], color=colors[name], lw=0.8, ls=":", label=f"{norm} minimizer")
    b = det_bound(grid)
    axes[0, 0].plot(grid[b > 0], b[b > 0], "k:", lw=1.5, label="lower bound (1-s)^2/s")
    axes[0, 1].plot(grid, erank_bound(grid), "k:", lw=1.5, label="upper bound (det>0)")
    axes[0, 2].plot(grid, np.sqrt(2 * grid), "k:", lw=1.5, label=r"upper bound $\sqrt{2\ell}$")
    titles = ("norms and quasi-norms", "effective rank", "distance to rank 1")
    for j in range(3):
        _loss_axis(axes[0, j], 1e-4)
        axes[1, j].set_xscale("log")
        axes[1, j].set_xlabel("iteration")
        for i in range(2):
            axes[i, j].set_title(titles[j] + (" vs loss" if i == 0 else " vs iteration"))
            axes[i, j].legend(fontsize=6)
    for i in range(2):
        axes[i, 0].set_yscale("log")
        axes[i, 2].set_yscale("log")
        axes[i, 1].set_ylim(0.95, 2.05)
    axes[0, 0].set_ylim(bottom=0.1)  # the first crossings of losses near 1 are at the tiny init
    fig.suptitle(
        f"Canonical 2x2, depth 3: every norm grows while the rank falls "
        f"(median and IQR over {res.meta['seeds']} seeds)"
    )
    return _save(fig, figdir, "norms-vs-rank")


def figure_random_completion(res, figdir: str) -> list[str]:
    plt = _plt()
    c = res.columns
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    depths = sorted(set(c["depth"].tolist()))
    for k, n_obs in enumerate(sorted(set(c["n_obs"].tolist()))):
        for ax, name in zip(axes, ("recon_error", "erank"), strict=True):
            q = np.array(
                [
                    np.nanpercentile(c[name][res.rows(depth=d, n_obs=n_obs)], [25, 50, 75])
                    for d in depths
                ]
            )
            x = np.asarray(depths) + (k - 1) * 0.06
            ax.errorbar(
                x,
                q[:, 1],
                yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]],
                marker="o",
                capsize=3,
                label=f"{n_obs} observed",
            )
    cfg = res.configs[0]
    axes[0].set_yscale("log")
    axes[0].set_ylabel(r"$\|E - W^*\|_F / \|W^*\|_F$")
    axes[0].set_title("reconstruction error (all entries)")
    r = cfg["target_rank"]
    axes[1].axhline(r, color="k", ls=":", label=f"target rank {r}")
    axes[1].set_ylabel("effective rank")
    axes[1].set_title("effective rank of the solution")
    for ax in axes:
        ax.set_xlabel("depth")
        ax.set_xticks(depths)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Random rank-{cfg['target_rank']} {cfg['m']}x{cfg['n']} completion: median and "
        f"IQR over {res.meta['seeds']} seeds"
    )
    return _save(fig, figdir, "random-completion")


def _quartiles(res, column: str, groups: list[np.ndarray]) -> np.ndarray:
    """(len(groups), 3): 25th, 50th, 75th percentiles of a column over each group of rows."""
    out = np.full((len(groups), 3), np.nan)
    for k, rows in enumerate(groups):
        v = res.columns[column][rows] if rows.size else np.zeros(0)
        if np.isfinite(v).any():
            out[k] = np.nanpercentile(v, [25, 50, 75])
    return out


def _errorbars(ax, x, q, **kw):
    ax.errorbar(x, q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]], capsize=3, **kw)


def figure_tensor_completion(res, figdir: str) -> list[str]:
    """The paper's two panels per (order, target rank): normalized reconstruction error
    (log y) and estimated tensor rank against the number of observations, for tf at each init
    and the linear baseline, median and IQR, with the ground-truth rank."""
    plt = _plt()
    c = res.columns
    cases = sorted({(int(o), int(r)) for o, r in zip(c["order"], c["target_rank"], strict=True)})
    fig, axes = plt.subplots(
        len(cases), 2, figsize=(11, 4.2 * len(cases)), squeeze=False, layout="constrained"
    )
    styles = {1e-2: ("C1", "v", "-"), 1e-3: ("C2", "^", "-.")}
    for (order, rank), (ax_err, ax_rank) in zip(cases, axes, strict=True):
        ns = sorted(set(c["n_obs"][res.rows(order=order, target_rank=rank)].tolist()))
        per_n = [res.rows(order=order, target_rank=rank, n_obs=n) for n in ns]
        # the baseline does not depend on the init: one init's rows
        base = [r[np.isclose(c["scale"][r], c["scale"][r[0]], rtol=1e-12)] for r in per_n]
        if "memorizer_error" in c:
            kw = {"color": "C0", "marker": "o", "ls": "--", "label": "linear"}
            _errorbars(ax_err, ns, _quartiles(res, "memorizer_error", base), **kw)
            if "memorizer_rank" in c:
                _errorbars(ax_rank, ns, _quartiles(res, "memorizer_rank", base), **kw)
        for init, (color, marker, ls) in styles.items():
            sel = [r[np.isclose(c["scale"][r], init, rtol=1e-12)] for r in per_n]
            if not any(r.size for r in sel):
                continue
            kw = {"color": color, "marker": marker, "ls": ls, "label": f"tf, init {init:g}"}
            _errorbars(ax_err, ns, _quartiles(res, "recon_error", sel), **kw)
            if "tensor_rank" in c:
                _errorbars(ax_rank, ns, _quartiles(res, "tensor_rank", sel), **kw)
        ax_rank.axhline(rank, color="C3", lw=3, label="ground truth", zorder=0)
        shape = "x".join(["8"] * order)
        for ax in (ax_err, ax_rank):
            ax.set_xlabel("# of observations")
            ax.legend(fontsize=8)
            ax.set_title(f"{shape} (order {order}) rank {rank} tensor completion")
        ax_err.set_yscale("log")
        ax_err.set_ylabel("reconstruction error")
        ax_rank.set_ylabel("rank")
        ax_rank.set_ylim(bottom=0)
    fig.suptitle(f"CP tensor completion: median and IQR over {res.meta['seeds']} seeds")
    return _save(fig, figdir, res.meta.get("name", "tensor-completion"))
