"""What fit() records: when to log (every, geometric) and the Trajectory it returns."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ._checks import integer
from ._io import load_npz, save_npz

if TYPE_CHECKING:
    import pandas

TRAJECTORY_STATUS = ("converged", "diverged", "max_steps")
_FORMAT = "implicitreg.Trajectory/1"


class every:
    """Log every k steps (and at the first and last step)."""

    def __init__(self, k: int) -> None:
        self.k = integer(k, "every: k", minimum=1)

    def rows(self, max_steps: int) -> int:
        """How many points `points` gives, without making them."""
        return max_steps // self.k + 1 + (max_steps % self.k != 0)

    def points(self, max_steps: int) -> np.ndarray:
        return np.unique(np.append(np.arange(0, max_steps + 1, self.k), max_steps))

    def __repr__(self) -> str:
        return f"every({self.k})"


class geometric:
    """Log at about n steps spaced geometrically between 1 and max_steps (and at step 0):
    dense early, sparse late, as log-scale plots want."""

    def __init__(self, n: int) -> None:
        self.n = integer(n, "geometric: n", minimum=1)

    def rows(self, max_steps: int) -> int:
        """At most this many points."""
        return self.n + 2

    def points(self, max_steps: int) -> np.ndarray:
        if max_steps == 0:
            return np.zeros(1, dtype=np.int64)
        pts = np.geomspace(1, max_steps, self.n).round().astype(np.int64)
        return np.unique(np.concatenate([[0], pts, [max_steps]]))

    def __repr__(self) -> str:
        return f"geometric({self.n})"


def schedule(log, max_steps: int):
    if log is None:
        return every(max(1, max_steps // 1000))
    if not isinstance(log, (every, geometric)):
        raise TypeError(
            f"log: expected implicitreg.every(k) or implicitreg.geometric(n), "
            f"got {type(log).__name__}"
        )
    return log


class Trajectory:
    """Metrics logged during fit().

    steps: (T,) step of each row; t[name]: (T, B, ...) values of a metric; status: (B,) of
    "converged" | "diverged" | "max_steps"; frozen_at: (B,) step at which a problem was frozen
    (-1 when it was not); meta: the configuration (JSON-serializable).
    crossings: None, or (fit(thresholds=...)) {"thresholds": (k,), "step": (k, B), and every
    metric: (k, B, ...)} at each problem's first iterate with loss below each threshold
    (step -1 and NaN where it never went below).
    """

    def __init__(
        self,
        steps: ArrayLike,
        data: dict[str, np.ndarray],
        status: ArrayLike,
        frozen_at: ArrayLike,
        meta: Mapping[str, Any] | None = None,
        crossings: Mapping[str, ArrayLike] | None = None,
    ) -> None:
        self.steps = np.asarray(steps, dtype=np.int64)
        self.data = {k: np.asarray(v) for k, v in data.items()}
        self.status = np.array(status, dtype=str)  # copies: a snapshot, not the live state
        self.frozen_at = np.array(frozen_at, dtype=np.int64)
        self.meta = dict(meta or {})
        self.crossings = (
            None if crossings is None else {k: np.asarray(v) for k, v in crossings.items()}
        )

    @property
    def batch(self) -> int:
        return self.status.shape[0]

    @property
    def metrics(self) -> list[str]:
        return list(self.data)

    @property
    def steps_to_tol(self) -> np.ndarray:
        """(B,) the step at which each problem reached the loss tolerance; NaN if it did not."""
        return np.where(self.status == "converged", self.frozen_at, np.nan)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.data:
            raise KeyError(f"no metric {name!r} was logged; logged: {', '.join(self.data)}")
        return self.data[name]

    def __repr__(self) -> str:
        counts = {s: int((self.status == s).sum()) for s in TRAJECTORY_STATUS}
        return (
            f"Trajectory(rows={self.steps.size}, batch={self.batch}, "
            f"metrics={self.metrics}, status={counts})"
        )

    def first_below(self, metric: str, threshold: float) -> dict[str, np.ndarray]:
        """Every logged metric at each problem's first step where `metric` < threshold.

        Returns {name: (B, ...) values, "step": (B,)}; NaN (step -1) for a problem that never
        went below. The paper's figures are read this way. For the loss at a
        threshold given to fit(thresholds=...), the answer is exact to the step (from
        `crossings`); otherwise it is the first logged row below.
        """
        if metric == "loss" and self.crossings is not None:
            at = np.nonzero(self.crossings["thresholds"] == threshold)[0]
            if at.size:
                return {k: v[at[0]] for k, v in self.crossings.items() if k != "thresholds"}
        x = self[metric]
        if x.ndim != 2:
            raise ValueError(
                f"metric: expected a scalar metric, {metric!r} has shape {x.shape[2:]}"
            )
        below = x < threshold
        hit = below.any(axis=0)
        row = np.argmax(below, axis=0)
        cols = np.arange(self.batch)
        out = {"step": np.where(hit, self.steps[row], -1)}
        for name, v in self.data.items():
            vals = v[row, cols].astype(np.float64)
            out[name] = np.where(hit.reshape((-1,) + (1,) * (vals.ndim - 1)), vals, np.nan)
        return out

    def to_dataframe(self) -> pandas.DataFrame:
        """Long table: one row per (step, problem) while the problem runs, one column per
        scalar metric (vector metrics spread over name:0, name:1, ...), plus its final status
        and frozen_at. A frozen problem's rows end at the first logged step at or after its
        freeze, which shows its frozen state (later rows would repeat it); the arrays in
        `data` keep every row of every problem. Needs pandas."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "Trajectory.to_dataframe needs pandas: pip install 'implicitreg[pandas]'"
            ) from exc
        T, B = self.steps.size, self.batch
        # per problem, the last row to keep: the first logged step >= frozen_at, else the last
        last = np.where(
            self.frozen_at >= 0,
            np.minimum(np.searchsorted(self.steps, self.frozen_at), T - 1),
            T - 1,
        )
        keep = (np.arange(T)[:, None] <= last[None, :]).reshape(-1)
        cols = {"step": np.repeat(self.steps, B)[keep], "problem": np.tile(np.arange(B), T)[keep]}
        for name, v in self.data.items():
            flat = v.reshape(T * B, -1)[keep]
            if flat.shape[1] == 1:
                cols[name] = flat[:, 0]
            else:
                for i in range(flat.shape[1]):
                    cols[f"{name}:{i}"] = flat[:, i]
        cols["status"] = np.tile(self.status, T)[keep]
        cols["frozen_at"] = np.tile(self.frozen_at, T)[keep]
        return pd.DataFrame(cols)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to an .npz file (arrays + JSON metadata), atomically."""
        arrays = {f"data/{k}": v for k, v in self.data.items()}
        for k, v in (self.crossings or {}).items():
            arrays[f"crossings/{k}"] = v
        save_npz(
            path,
            _FORMAT,
            self.meta,
            {"steps": self.steps, "status": self.status, "frozen_at": self.frozen_at, **arrays},
        )


def load(path: str | os.PathLike[str]) -> Trajectory:
    """Read a Trajectory written by Trajectory.save."""
    meta, z = load_npz(path, _FORMAT, "an implicitreg trajectory file")
    data = {k[len("data/") :]: v for k, v in z.items() if k.startswith("data/")}
    cross = {k[len("crossings/") :]: v for k, v in z.items() if k.startswith("crossings/")}
    return Trajectory(z["steps"], data, z["status"], z["frozen_at"], meta, cross or None)
