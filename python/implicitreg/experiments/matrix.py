"""The matrix-factorization experiments: the paper's canonical 2x2 problem,
its perturbed and d x d variants, every norm against rank, and
low-rank completion of random matrices (beyond the paper)."""

from __future__ import annotations

import numpy as np

from ..sweep import threshold_label
from .figures import (
    figure_family,
    figure_norms_vs_rank,
    figure_paper_2x2,
    figure_perturbed,
    figure_random_completion,
)
from .paper import (
    EPSILONS,
    FAMILY_D,
    MARKERS,
    MINIMIZED,
    NORM_MINIMA,
    NORMS,
    PAPER_CONFIGS,
    PAPER_VALUES,
    PERTURBED_DEPTHS,
    PERTURBED_REFERENCE,
    REPORTED,
    det_bound,
    erank_bound,
    legend_2x2,
    loss_grid,
    rank1_path,
)
from .registry import Experiment, register, row


def _share(entry, quantity, flags) -> dict:
    """A row giving the share of seeds where `flags` holds (NaN flags: seed not there)."""
    f = np.asarray(flags, dtype=np.float64)
    there = f[np.isfinite(f)]
    return {
        "entry": entry,
        "quantity": quantity,
        "paper": None,
        "theory": None,
        "ours": {
            "share": float(there.mean()) if there.size else np.nan,
            "n": int(there.size),
            "of": int(f.size),
        },
    }


# ------------------------------------------------------------------------------ paper-2x2


def report_paper_2x2(res) -> list[dict]:
    rows = []
    c = res.columns
    for depth, lr, scale in PAPER_CONFIGS:
        for balanced in (False, True):
            idx = res.rows(
                depth=depth, lr=lr, scale=scale, init="balanced" if balanced else "normal"
            )
            if idx.size == 0:
                continue
            entry = legend_2x2(depth, lr, scale, balanced)
            paper = PAPER_VALUES[(depth, lr, scale, balanced)]
            for t, p in zip(MARKERS + (1e-4,), paper, strict=True):
                lab = threshold_label(t)
                rows.append(
                    row(
                        entry,
                        f"|w11| at loss<{lab}",
                        np.abs(c[f"entry:0,0@{lab}"][idx]),
                        p,
                        f"> {det_bound(t):.4g} if det>0",
                    )
                )
            det = c["det@1e-4"][idx]
            rows.append(
                _share(entry, "det>0 at loss<1e-4", np.where(np.isfinite(det), det > 0, np.nan))
            )
    return rows


register(
    Experiment(
        name="paper-2x2",
        title="Canonical 2x2 completion: |unobserved entry| vs loss, depths 2-4",
        doc="""
    Observed (0,1) = 1, (1,0) = 1, (1,1) = 0; GD from det(W(0)) > 0 (enforced for balanced
    init too), every (lr, init, balanced) of the paper's figure, to loss 1e-4.
    * paper: values read off the paper's single float32 runs; ours: median [IQR] over seeds.
    * theory: |w11| > (1-s)^2/s, s = sqrt(2 loss), holds while det(W) > 0;
      depth 2 (and unbalanced runs) may flip det under GD and plateau below it.
    """,
        base={
            "problem": "paper_2x2",
            "init_det": "positive",
            "scale_by": "product",
            "tol": 1e-4,
            "max_steps": 10_000_000,
            "log": 400,
            "metrics": ("loss", "entry:0,0", "det"),
            "thresholds": loss_grid(1e-4),
        },
        grid=[
            {"depth": d, "lr": lr, "scale": s, "init": ["normal", "balanced"]}
            for d, lr, s in PAPER_CONFIGS
        ],
        report=report_paper_2x2,
        figures=figure_paper_2x2,
        seeds=32,
        quick={"seeds": 8},
    )
)


# -------------------------------------------------------------------------- perturbed-2x2


def report_perturbed(res) -> list[dict]:
    rows, c = [], res.columns
    for depth, _, _ in PERTURBED_DEPTHS:
        for eps in EPSILONS:
            idx = res.rows(depth=depth, eps=eps)
            if idx.size == 0:
                continue
            entry = f"depth {depth}, eps {eps:g}"
            ref = PERTURBED_REFERENCE[eps] if depth == 3 else (None, None)
            rows.append(
                row(
                    entry,
                    "w11 at loss<1e-4",
                    c["entry:0,0@1e-4"][idx],
                    ref[0],
                    f"< -{det_bound(1e-4, 2.0, 0.5, eps):.4g} if det<0",
                )
            )
            end = int(res.configs[0]["max_steps"])
            rows.append(
                row(
                    entry,
                    f"w11 after {end:.3g} steps",
                    c["entry:0,0"][idx],
                    ref[1],
                    "-1/eps = " + (f"{-1 / eps:.4g}" if eps else "-inf") + " (limit)",
                )
            )
    return rows


register(
    Experiment(
        name="perturbed-2x2",
        title="Perturbed observations (-2, 0.5, eps): w11 -> -1/eps from det(W(0)) < 0",
        doc="""
    Observed (0,1) = -2, (1,0) = 0.5, (1,1) = eps; balanced init with det(W(0)) < 0, trained
    past loss 1e-4 (no tolerance) so that the limit shows.
    * paper: a float32 measurement of that setting (depth 3 only; not the paper's figure).
    * theory: at loss l, |w11| > (2-s)(0.5-s)/(eps+s) while det < 0; the reachable solutions
      need w11 < -1/eps, whose norm is about 1/eps against sqrt(4.25 + eps^2) at the minimum.
    """,
        base={
            "problem": "perturbed_2x2",
            "init_det": "negative",
            "init": "balanced",
            "scale_by": "product",
            "tol": None,
            "max_steps": 1_690_000,
            "log": 400,
            "metrics": ("loss", "entry:0,0", "det"),
            "thresholds": loss_grid(1e-8, 5),
        },
        grid=[
            {"depth": d, "lr": lr, "scale": s, "eps": list(EPSILONS)}
            for d, lr, s in PERTURBED_DEPTHS
        ],
        report=report_perturbed,
        figures=figure_perturbed,
        seeds=32,
        quick={"seeds": 4, "base": {"max_steps": 600_000}},
    )
)


# ------------------------------------------------------------------------------ family-dxd


def report_family(res) -> list[dict]:
    rows, c = [], res.columns
    for d in FAMILY_D:
        for init in ("normal", "balanced"):
            idx = res.rows(d=d, init=init)
            if idx.size == 0:
                continue
            entry = f"d {d}, depth 3, {init}"
            for t in REPORTED:
                lab = threshold_label(t)
                rows.append(
                    row(
                        entry,
                        f"|w11| at loss<{lab}",
                        np.abs(c[f"entry:0,0@{lab}"][idx]),
                        None,
                        f"rank-1 path {rank1_path(t):.4g}",
                    )
                )
    return rows


register(
    Experiment(
        name="family-dxd",
        title="The d x d family: blockdiag([[0,1],[1,0]], I) with all but (0,0) observed",
        doc="""
    Every solution has det = -1; from det(W(0)) > 0, GD must drive |w11| to infinity.
    * theory: the 2x2 block follows the rank-1 path |w11| = 1/sqrt(2 loss) when the
      identity block is fitted first; the paper reports no values for d > 2.
    """,
        base={
            "problem": "paper_family",
            "depth": 3,
            "init_det": "positive",
            "scale_by": "product",
            "lr": 6e-3,
            "scale": 1e-5,
            "tol": 1e-4,
            "max_steps": 10_000_000,
            "log": 300,
            "metrics": ("loss", "entry:0,0", "det", "erank"),
            "thresholds": loss_grid(1e-4),
        },
        grid=[{"d": d, "init": ["normal", "balanced"]} for d in FAMILY_D],
        report=report_family,
        figures=figure_family,
        seeds=32,
        quick={"seeds": 6},
    )
)


# ---------------------------------------------------------------------------- norms-vs-rank


def report_norms(res) -> list[dict]:
    rows, c = [], res.columns
    for init in ("balanced", "normal"):
        idx = res.rows(init=init)
        if idx.size == 0:
            continue
        entry = f"depth 3, {init}"
        for name, norm in MINIMIZED.items():
            if f"min_{norm}" in c:  # the fit the norm picks, computed for these problems
                rows.append(
                    row(
                        entry,
                        f"{name} of the {norm} minimizer",
                        c[f"min_{norm}"][idx],
                        f"min {NORM_MINIMA[name]:.4g}",
                        f"GD's > {det_bound(REPORTED[-1]):.4g} at loss<"
                        f"{threshold_label(REPORTED[-1])} if det>0",
                    )
                )
        for t in REPORTED:
            lab = threshold_label(t)
            for name in NORMS:
                rows.append(
                    row(
                        entry,
                        f"{name} at loss<{lab}",
                        c[f"{name}@{lab}"][idx],
                        f"min {NORM_MINIMA[name]:.4g}",
                        f"> {det_bound(t):.4g} if det>0",
                    )
                )
            rows.append(
                row(
                    entry,
                    f"erank at loss<{lab}",
                    c[f"erank@{lab}"][idx],
                    "min 1 (inf)",
                    f"< {erank_bound(t):.6g} if det>0",
                )
            )
            rows.append(
                row(
                    entry,
                    f"dist_rank:1 at loss<{lab}",
                    c[f"dist_rank:1@{lab}"][idx],
                    "inf 0",
                    f"< {np.sqrt(2 * t):.4g} if det>0",
                )
            )
    return rows


register(
    Experiment(
        name="norms-vs-rank",
        title="Every norm grows while the rank falls: canonical problem, depth 3",
        doc="""
    Frobenius, nuclear, spectral, Schatten-0.5 and -0.25 (quasi-norms), effective rank and
    distance to rank 1 of the end-to-end matrix, against loss and iteration, beside the fit
    each norm picks (implicitreg.baselines.min_norm: w11 = 0, computed per problem).
    * paper: the infimum of each quantity over all solutions (the norms' minima are at
      w11 = 0); theory: the paper's bounds at that loss, valid while det > 0.
    """,
        base={
            "problem": "paper_2x2",
            "depth": 3,
            "init_det": "positive",
            "scale_by": "product",
            "lr": 6e-3,
            "scale": 1e-5,
            "tol": 1e-4,
            "max_steps": 10_000_000,
            "log": 400,
            "metrics": ("loss", "entry:0,0", "det") + NORMS + ("erank", "dist_rank:1"),
            "thresholds": loss_grid(1e-4),
            "min_norms": tuple(MINIMIZED.values()),
        },
        grid=[{"init": ["balanced", "normal"]}],
        report=report_norms,
        figures=figure_norms_vs_rank,
        seeds=32,
        quick={"seeds": 6},
    )
)


# ------------------------------------------------------------------------ random-completion


def report_random(res) -> list[dict]:
    rows, c = [], res.columns
    for n_obs in sorted(set(c["n_obs"].tolist())):
        for depth in sorted(set(c["depth"].tolist())):
            idx = res.rows(depth=depth, n_obs=n_obs)
            entry = f"{n_obs} observed, depth {depth}"
            rows.append(row(entry, "reconstruction error", c["recon_error"][idx]))
            rows.append(
                row(
                    entry,
                    "effective rank",
                    c["erank"][idx],
                    None,
                    f"rank {int(c['target_rank'][idx[0]])} target",
                )
            )
    return rows


register(
    Experiment(
        name="random-completion",
        title="Low-rank completion of random matrices vs depth (beyond the paper)",
        doc="""
    Random rank-3 30x30 targets (Frobenius norm 30, the paper's generator), entries
    observed uniformly at random; depths 1-4 from a small init (1e-3, end-to-end std).
    * ours: normalized reconstruction error ||E - W*||_F / ||W*||_F over all entries and the
      effective rank of the solution at the end; depth 1 is the min-norm-like baseline.
    """,
        base={
            "problem": "random_low_rank_completion",
            "m": 30,
            "n": 30,
            "target_rank": 3,
            "scale": 1e-3,
            "scale_by": "product",
            "lr": 1e-2,
            "tol": 1e-8,
            "max_steps": 50_000,
            "log": 100,
            "metrics": ("loss", "recon_error", "erank", "nuc", "fro"),
            "thresholds": (),
        },
        grid=[{"depth": [1, 2, 3, 4], "n_obs": [200, 300, 450]}],
        report=report_random,
        figures=figure_random_completion,
        seeds=16,
        quick={
            "seeds": 4,
            "base": {"m": 12, "n": 12, "target_rank": 2, "max_steps": 20_000},
            "grid": [{"depth": [1, 2, 3, 4], "n_obs": [50, 70, 100]}],
        },
    )
)
