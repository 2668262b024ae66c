"""The registry of named experiments: what an experiment is, how it is found, and the helpers
its report rows share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..sweep import SweepResult

__all__ = ["EXPERIMENTS", "Experiment", "get", "register", "row", "stats"]


@dataclass(frozen=True)
class Experiment:
    """A named sweep: base config and grid (see implicitreg.sweep), default seeds, a quick
    variant (fewer seeds or steps, for CI and a first look), the report of medians against
    the paper's values, and the figures."""

    name: str
    title: str
    doc: str
    base: dict
    grid: list
    report: Callable[[SweepResult], list[dict]]
    figures: Callable[[SweepResult, str], list[str]]
    seeds: int = 32
    quick: dict = field(default_factory=dict)  # {"seeds": n, "base": {...}, "grid": [...]}

    def spec(
        self, quick: bool = False, seeds: int | None = None, dtype: str | None = None
    ) -> tuple[dict, list, int]:
        """(base, grid, seeds) of the full or quick variant."""
        base, grid, n = dict(self.base), self.grid, self.seeds
        if quick:
            base.update(self.quick.get("base", {}))
            grid = self.quick.get("grid", grid)
            n = self.quick.get("seeds", n)
        if dtype is not None:
            base["dtype"] = dtype
        return base, grid, seeds if seeds is not None else n


EXPERIMENTS: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    EXPERIMENTS[exp.name] = exp
    return exp


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(
            f"experiment: unknown name {name!r}; choose one of {', '.join(EXPERIMENTS)}"
        )
    return EXPERIMENTS[name]


def stats(values) -> dict:
    """median, IQR and counts of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    f = v[np.isfinite(v)]
    if f.size == 0:
        return {"median": np.nan, "q1": np.nan, "q3": np.nan, "n": 0, "of": int(v.size)}
    q1, med, q3 = np.percentile(f, [25, 50, 75])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "n": int(f.size),
        "of": int(v.size),
    }


def row(entry, quantity, values, paper=None, theory=None) -> dict:
    """One report row: our median [IQR] of `values` beside the paper's and the theory's."""
    return {
        "entry": entry,
        "quantity": quantity,
        "ours": stats(values),
        "paper": paper,
        "theory": theory,
    }
