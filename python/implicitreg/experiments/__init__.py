"""Named experiments: the paper's matrix-factorization results and their
extensions, each a documented sweep config with its report against the paper's values and
its figures. `implicitreg reproduce NAME` runs one; `implicitreg list` lists them."""

from __future__ import annotations

import json
import os

import numpy as np

from ..sweep import SweepResult, load_sweep, sweep
from . import matrix, nuclear, tensor  # noqa: F401  (they register the experiments)
from .registry import EXPERIMENTS, Experiment, get, stats

__all__ = ["EXPERIMENTS", "Experiment", "get", "replot", "report_text", "reproduce", "stats"]


def reproduce(
    name: str,
    seeds: int | None = None,
    backend: str = "cpu",
    dtype: str | None = None,
    out=None,
    resume: bool = False,
    quick: bool = False,
    progress=True,
    plot: bool = True,
    checkpoint_every: float = 300.0,
    executor: str = "local",
    address: str | None = None,
) -> tuple[SweepResult, list[dict]]:
    """Run experiment `name` and return (results, report rows). With `out`, the results,
    report (`report.txt`, `report.json`) and figures (`figures/*.png`, `*.pdf`) are written there,
    and resume=True continues an interrupted run in that directory. executor and address
    are those of implicitreg.sweep (executor="ray": one Ray task per batch)."""
    exp = get(name)
    base, grid, n = exp.spec(quick, seeds, dtype)
    res = sweep(
        base,
        grid,
        seeds=n,
        backend=backend,
        out=out,
        resume=resume,
        progress=progress,
        checkpoint_every=checkpoint_every,
        name=name,
        info={"quick": bool(quick)},
        executor=executor,
        address=address,
    )
    rows = exp.report(res)
    if out is not None:
        write_report(out, exp, res, rows)
        if plot:
            exp.figures(res, os.path.join(out, "figures"))
    return res, rows


def replot(out) -> list[str]:
    """Redraw the figures (and the report) of a results directory."""
    res = load_sweep(out)
    name = res.meta.get("name", "")
    if name not in EXPERIMENTS:
        made_by = "`implicitreg run`" if name == "run" else f"a sweep named {name!r}"
        raise ValueError(
            f"dir: {out} holds the results of {made_by}, not of a named "
            "experiment: plot redraws what `implicitreg reproduce NAME` wrote"
        )
    exp = EXPERIMENTS[name]
    rows = exp.report(res)
    write_report(out, exp, res, rows)
    return exp.figures(res, os.path.join(out, "figures"))


def write_report(out, exp: Experiment, res: SweepResult, rows: list[dict]) -> None:
    text = report_text(exp, res, rows)
    for fname, body in (
        ("report.txt", text),
        (
            "report.json",
            json.dumps(
                {"experiment": exp.name, "meta": res.meta, "rows": rows}, indent=1, default=str
            ),
        ),
    ):
        tmp = os.path.join(out, f"{fname}.tmp-{os.getpid()}")
        with open(tmp, "w") as fh:
            fh.write(body)
        os.replace(tmp, os.path.join(out, fname))


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if not np.isfinite(x):
        return "n/a"
    return f"{x:.4g}"


def report_text(exp: Experiment, res: SweepResult, rows: list[dict]) -> str:
    """The side-by-side table: our median [IQR] (seeds that got there) next to the paper's
    value and the theory's, for every legend entry and quantity."""
    dtypes = sorted(set(res.columns["dtype"].tolist())) if "dtype" in res.columns else ["?"]
    head = (
        f"{exp.title}\n{res.meta.get('seeds')} seeds per config, backend "
        f"{res.meta.get('backend')}, {'/'.join(dtypes)}"
        + (", quick variant" if res.meta.get("quick") else "")
        + "\n"
    )
    cols = ("entry", "quantity", "ours: median [IQR]", "seeds", "paper", "theory")
    table = [cols]
    for r in rows:
        s = r["ours"]
        if not s["n"]:
            ours = "not reached"
        elif "share" in s:
            ours = f"{100 * s['share']:.0f}% of seeds"
        else:
            ours = f"{_num(s['median'])} [{_num(s['q1'])}, {_num(s['q3'])}]"
        table.append(
            (
                r["entry"],
                r["quantity"],
                ours,
                f"{s['n']}/{s['of']}",
                _num(r.get("paper")),
                _num(r.get("theory")),
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(cols))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {n}" for n in _notes(exp)]
    timing = res.meta.get("timings", [])
    secs = sum(t["seconds"] for t in timing)
    steps = sum(t["problem_steps"] for t in timing)
    tail = f"\n{len(timing)} batches, {steps:.3g} problem-steps in {secs:.1f} s" + (
        f" ({steps / secs:.3g} problem-steps/s)" if secs > 0 else ""
    )
    body = "\n".join(lines) + ("\nnotes:\n" + "\n".join(notes) if notes else "")
    return head + body + tail + "\n"


def _notes(exp: Experiment) -> list[str]:
    """The doc's bullet points ("* ..." and the lines that continue them)."""
    notes: list[str] = []
    bullet = False
    for line in (raw.strip() for raw in exp.doc.strip().splitlines()):
        if line.startswith("*"):
            notes.append(line)
            bullet = True
        elif line and bullet:
            notes[-1] += " " + line
        else:
            bullet = False
    return notes
