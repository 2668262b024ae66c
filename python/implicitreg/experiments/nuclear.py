"""Depth against the nuclear norm (beyond the paper): matrix completion of random 100x100
rank-5 matrices by deep factorizations of depth 2, 3 and 4, trained by GroupRMSprop from small
inits, beside the minimum nuclear norm fit of the same problems, the comparison of Arora,
Cohen, Hu & Luo (NeurIPS 2019), with their settings."""

from __future__ import annotations

import numpy as np

from .figures import _plt, _save
from .registry import Experiment, register, row

DEPTHS = (2, 3, 4)
SCALES = (1e-3, 1e-4, 1e-5, 1e-6)
LRS = (1e-3, 3e-4)
# Their stop: a training mean squared error (a mean over observed entries) of 1e-6. Ours is
# 1/2 * sum over them, so the same stop is tol = 1e-6 * n_obs / 2.
TRAIN_MSE = 1e-6


def _blocks(samples, depths, scales, lrs) -> list[dict]:
    """One grid block per sample count, with its tol."""
    return [
        {
            "n_obs": [n],
            "tol": [TRAIN_MSE * n / 2],
            "depth": list(depths),
            "scale": list(scales),
            "lr": list(lrs),
        }
        for n in samples
    ]


def _mse(res, name: str, idx) -> np.ndarray:
    """Mean squared error over all entries (their test error) from the relative error
    ||E - W*||_F / ||W*||_F: times ||W*||_F^2 / (m n) = m / n (the targets have Frobenius
    norm m)."""
    c = res.columns
    return c[name][idx] ** 2 * c["m"][idx] / c["n"][idx]


def report_nuclear(res) -> list[dict]:
    rows, c = [], res.columns
    for n_obs in sorted(set(c["n_obs"].tolist())):
        block = res.rows(n_obs=n_obs)
        base = f"{n_obs} observed, minimum nuclear norm"
        # every config sees the same problems (seed b is problem b): one config's rows
        keys = ("depth", "scale", "lr")
        first = res.rows(n_obs=n_obs, **{k: c[k][block[0]].item() for k in keys})
        rows.append(row(base, "test error (MSE)", _mse(res, "min_nuclear_recon_error", first)))
        rows.append(row(base, "effective rank", c["min_nuclear_erank"][first]))
        for depth in sorted(set(c["depth"][block].tolist())):
            for scale in sorted(set(c["scale"][block].tolist()), reverse=True):
                for lr in sorted(set(c["lr"][block].tolist()), reverse=True):
                    idx = res.rows(n_obs=n_obs, depth=depth, scale=scale, lr=lr)
                    entry = f"{n_obs} observed, depth {depth}, init {scale:g}, lr {lr:g}"
                    rows.append(row(entry, "test error (MSE)", _mse(res, "recon_error", idx)))
                    rows.append(row(entry, "effective rank", c["erank"][idx]))
    return rows


def figure_nuclear(res, figdir: str) -> list[str]:
    plt = _plt()
    c = res.columns
    samples = sorted(set(c["n_obs"].tolist()))
    fig, axes = plt.subplots(
        1, len(samples), figsize=(5.5 * len(samples), 4.2), layout="constrained", squeeze=False
    )
    for ax, n_obs in zip(axes[0], samples, strict=True):
        block = res.rows(n_obs=n_obs)
        scales = sorted(set(c["scale"][block].tolist()))
        lrs = sorted(set(c["lr"][block].tolist()), reverse=True)
        for k, depth in enumerate(sorted(set(c["depth"][block].tolist()))):
            for lr, ls in zip(lrs, ("-", "--", ":"), strict=False):
                med = [
                    np.nanmedian(
                        _mse(res, "recon_error", res.rows(n_obs=n_obs, depth=depth, scale=s, lr=lr))
                    )
                    for s in scales
                ]
                ax.plot(
                    scales, med, ls, marker="o", color=f"C{k}", label=f"depth {depth}, lr {lr:g}"
                )
        nuc = np.nanmedian(_mse(res, "min_nuclear_recon_error", block))
        ax.axhline(nuc, color="k", ls=":", label="minimum nuclear norm")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("init scale (end-to-end std)")
        ax.set_ylabel("test error (MSE over all entries)")
        ax.set_title(f"{n_obs} observed entries")
        ax.legend(fontsize=7)
    cfg = res.configs[0]
    fig.suptitle(
        f"Depth against the nuclear norm: {cfg['m']}x{cfg['n']} rank-{cfg['target_rank']} "
        f"completion, median over {res.meta['seeds']} seeds"
    )
    return _save(fig, figdir, "deep-vs-nuclear")


register(
    Experiment(
        name="deep-vs-nuclear",
        title="Depth against the nuclear norm: 100x100 rank-5 completion (beyond the paper)",
        doc="""
    Random rank-5 100x100 targets (Frobenius norm 100), 2000 and 5000 entries observed;
    depths 2, 3, 4 from end-to-end init scales 1e-3 to 1e-6, GroupRMSprop (eps 1e-4) at lr
    1e-3 and 3e-4, stopped at a training mean squared error of 1e-6 (tol = 1e-6 * n_obs / 2 on
    our 1/2 * sum loss), up to 1e6 steps; beside them the minimum nuclear norm fit of the same
    problems (implicitreg.baselines.min_norm). The settings of Arora, Cohen, Hu & Luo (2019),
    who found depth 3 and 4 recovering better than the nuclear norm from 2000 entries.
    * ours: test error = mean squared error over all entries, effective rank at the end.
    """,
        base={
            "problem": "random_low_rank_completion",
            "m": 100,
            "n": 100,
            "target_rank": 5,
            "scale_by": "product",
            "optimizer": "group_rmsprop",
            "optimizer_eps": 1e-4,
            "max_steps": 1_000_000,
            "log": 100,
            "metrics": ("loss", "recon_error", "erank"),
            "thresholds": (),
            "min_norms": ("nuclear",),
        },
        grid=_blocks((2000, 5000), DEPTHS, SCALES, LRS),
        report=report_nuclear,
        figures=figure_nuclear,
        seeds=3,
        quick={
            "seeds": 2,
            "base": {"m": 20, "n": 20, "target_rank": 2, "max_steps": 20_000},
            "grid": _blocks((100, 200), DEPTHS, (1e-3, 1e-5), (1e-2,)),
        },
    )
)
