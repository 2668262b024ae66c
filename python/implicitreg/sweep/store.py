"""Where a sweep's results live: the result table (SweepResult), its results directory
(one file per finished batch, a manifest, a lock held by the one process that writes it) and
reading it back."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import socket
import time
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import load_npz, save_npz
from ..trajectory import Trajectory
from ..trajectory import load as load_trajectory
from .config import DEFAULTS

if TYPE_CHECKING:
    import pandas

__all__ = ["SweepResult", "load_sweep", "threshold_label"]

FORMAT = "implicitreg.sweep/1"


def threshold_label(t: float) -> str:
    """1e-4 -> '1e-4', 0.13 -> '1.3e-1': threshold labels for column names, the shortest that
    read back as the same float, so that two thresholds never share a column."""
    mant, exp = np.format_float_scientific(float(t), unique=True, trim="-").split("e")
    return f"{mant}e{int(exp)}"


class SweepResult:
    """columns: {name: (rows,) array}, one row per (config, seed), with the config's values,
    "seed", "status", "steps" (steps run), "batch" and "index" (the problem's column in
    trajectories[batch]), every metric at the end ("name") and at each threshold
    ("name@1e-4", with "step@1e-4"); configs: the configs, in row-block order; meta: the sweep's
    description and timings."""

    def __init__(
        self, columns: dict, trajectories: list[Trajectory], configs: list[dict], meta: dict
    ) -> None:
        self.columns = columns
        self.trajectories = trajectories
        self.configs = configs
        self.meta = meta

    @property
    def table(self) -> pandas.DataFrame:
        """The tidy table as a pandas DataFrame (extra "pandas")."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "SweepResult.table needs pandas: pip install "
                "'implicitreg[pandas]' (SweepResult.columns has the same data "
                "as NumPy arrays)"
            ) from exc
        return pd.DataFrame(self.columns)

    def rows(self, **match: Any) -> np.ndarray:
        """Indices of the rows whose config values equal `match` (floats to 1e-12)."""
        keep = np.ones(len(self.columns["seed"]), dtype=bool)
        for k, v in match.items():
            if k not in self.columns:
                raise KeyError(f"no column {k!r}; columns: {', '.join(self.columns)}")
            col = self.columns[k]
            if v is None or isinstance(v, tuple):
                keep &= col == _text(v)
            elif col.dtype.kind == "f":
                keep &= np.isclose(col, v, rtol=1e-12, atol=0)
            else:
                keep &= col == v
        return np.nonzero(keep)[0]

    def trajectory_of(self, row: int) -> tuple[Trajectory, int]:
        """(trajectory, column) holding table row `row`."""
        return self.trajectories[self.columns["batch"][row]], int(self.columns["index"][row])

    def save(self, out: str | os.PathLike[str]) -> None:
        """Write into directory `out`: results.npz (columns + metadata), results.csv,
        meta.json (configs, version, backend, timings, machine) and one trajectory file per
        batch."""
        os.makedirs(os.path.join(out, "batches"), exist_ok=True)
        for i, t in enumerate(self.trajectories):
            t.save(os.path.join(out, "batches", f"{i:03d}.trajectory.npz"))
        self._save_tables(out)

    def _save_tables(self, out) -> None:
        meta = {"configs": self.configs, **self.meta}
        save_columns(os.path.join(out, "results.npz"), self.columns, meta)
        _write_csv(os.path.join(out, "results.csv"), self.columns)
        tmp = os.path.join(out, f"meta.json.tmp-{os.getpid()}")
        with open(tmp, "w") as fh:
            json.dump(meta, fh, indent=1, default=jsonable)
        os.replace(tmp, os.path.join(out, "meta.json"))

    def __repr__(self) -> str:
        return (
            f"SweepResult(rows={len(self.columns['seed'])}, configs={len(self.configs)}, "
            f"batches={len(self.trajectories)})"
        )


def load_sweep(out: str | os.PathLike[str]) -> SweepResult:
    """Read a SweepResult written by SweepResult.save (or by sweep(out=...))."""
    meta, cols = load_columns(os.path.join(out, "results.npz"))
    n = int(cols["batch"].max()) + 1 if cols["batch"].size else 0
    trajs = [
        load_trajectory(os.path.join(out, "batches", f"{i:03d}.trajectory.npz")) for i in range(n)
    ]
    configs = meta.pop("configs")
    return SweepResult(cols, trajs, configs, meta)


def save_columns(path, columns: dict, meta: dict) -> None:
    save_npz(
        path,
        FORMAT,
        json.loads(json.dumps(meta, default=jsonable)),
        {f"col/{k}": v for k, v in columns.items()},
    )


def load_columns(path) -> tuple[dict, dict]:
    meta, z = load_npz(path, FORMAT, "implicitreg sweep results")
    return meta, {k[len("col/") :]: v for k, v in z.items() if k.startswith("col/")}


def jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _write_csv(path, columns: dict) -> None:
    """The table as CSV (floats written to full precision), atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    names = list(columns)
    cells = [
        [repr(float(x)) for x in v] if v.dtype.kind == "f" else [str(x) for x in v]
        for v in (np.asarray(columns[k]) for k in names)
    ]
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(zip(*cells, strict=True))
    os.replace(tmp, path)


def _text(v) -> str:
    """How a non-numeric config value reads in the table: None as "", a tuple joined by ","."""
    if v is None:
        return ""
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def batch_path(out, bi: int, suffix: str) -> str:
    return os.path.join(out, "batches", f"{bi:03d}.{suffix}")


def read_batch(out, bi: int) -> tuple[dict, Trajectory, float]:
    """A finished batch of a results directory: (result columns, trajectory, seconds)."""
    paths = [batch_path(out, bi, suffix) for suffix in ("npz", "trajectory.npz")]
    try:
        for p in paths:  # np.load leaves a file open when it fails to read a zip's index
            if not zipfile.is_zipfile(p):
                raise ValueError(f"{p} is not a whole .npz archive")
        bmeta, cols = load_columns(paths[0])
        traj = load_trajectory(paths[1])
        seconds = float(bmeta["seconds"])
    except Exception as exc:  # whatever makes them unreadable, the advice is the same
        raise ValueError(
            f"out: batch {bi} of {out} cannot be read back ({paths[0]} or "
            f"{paths[1]}: {type(exc).__name__}: {exc}); these files were not "
            "written whole by this sweep. Delete both to run the batch again, "
            "or choose another directory"
        ) from exc
    stale = batch_path(out, bi, "ckpt.npz")
    if os.path.exists(stale):  # a crash between writing the result and removing it
        os.remove(stale)
    return cols, traj, seconds


def write_batch(out, bi: int, cols: dict, traj: Trajectory, seconds: float) -> None:
    """Keep a finished batch: its trajectory, then its table (the table marks it finished,
    so a crash between the two reruns the batch), each written atomically."""
    if out is None:
        return
    traj.save(batch_path(out, bi, "trajectory.npz"))
    save_columns(batch_path(out, bi, "npz"), cols, {"seconds": seconds})
    ckpt = batch_path(out, bi, "ckpt.npz")
    if os.path.exists(ckpt):  # none when the batch ran in one go
        os.remove(ckpt)


def stack(parts: list[dict]) -> dict:
    """Concatenate per-batch columns; a column missing from a batch is NaN (or "") there."""
    names = list(dict.fromkeys(k for p in parts for k in p))
    out = {}
    for k in names:
        arrays = []
        for p in parts:
            n = len(p["seed"])
            if k in p:
                arrays.append(np.asarray(p[k]))
            else:
                like = next(q[k] for q in parts if k in q)
                arrays.append(
                    np.full(n, np.nan)
                    if np.asarray(like).dtype.kind in "fiub"
                    else np.full(n, "", dtype=object).astype(str)
                )
        out[k] = np.concatenate(arrays) if arrays else np.zeros(0)
    return out


def machine() -> dict:
    return {
        "node": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


_LOCK = ".lock"


@contextlib.contextmanager
def locked(out):
    """Holds the results directory `out` for this process while the sweep writes it: a lock
    file with its PID, host and start time. A second process is refused, naming the holder; a
    lock left by a process of this host that no longer runs (killed) is taken over."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, _LOCK)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as fh:
                    holder = json.load(fh)
            except (OSError, ValueError):  # half-written by a process killed at that moment
                holder = {}
            if _running(holder):
                raise ValueError(
                    f"out: {out} is being written by process {holder['pid']} on "
                    f"{holder['host']} (since {holder.get('since', '?')}); wait for it, or "
                    f"choose another directory (if that process is gone, delete {path})"
                ) from None
            os.remove(path)  # stale
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield
    finally:
        os.remove(path)


def _running(holder: dict) -> bool:
    """Whether the process that wrote a lock still runs (one of another host: assumed so)."""
    if not holder.get("pid"):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    return True


def prepare_dir(out, digest: str, resume: bool, name: str, plan: list) -> list:
    """Claim `out` for this sweep (manifest.json, with its batches), or check that it is this
    sweep's; returns the batches to run: those of the manifest when resuming (the device's
    free memory may have changed since, but finished batches must keep their meaning)."""
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as fh:
            try:
                old = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"out: {manifest} is corrupt; move it away or choose another directory"
                ) from exc
        if old.get("format") != FORMAT:
            raise ValueError(
                f"out: {out} holds a manifest.json that is not implicitreg's; "
                "choose another directory"
            )
        if not resume:
            raise ValueError(
                f"out: {out} already holds results of {old.get('name')!r}; pass "
                "resume=True (--resume) to continue them, or choose another "
                "directory"
            )
        if old.get("digest") != digest:
            raise ValueError(
                f"out: {out} holds results of another sweep ({old.get('name')!r} "
                "with other configs, seeds or backend); resume needs the same "
                "ones, or choose another directory"
            )
        # what a killed run was writing when it died (never read: the rename did not happen)
        for d in (out, os.path.join(out, "batches")):
            for f in os.listdir(d) if os.path.isdir(d) else ():
                if ".tmp-" in f:
                    os.remove(os.path.join(d, f))
        return [tuple(p) for p in old.get("plan", plan)]
    if os.path.isdir(out) and set(os.listdir(out)) - {_LOCK}:
        raise ValueError(
            f"out: {out} is not empty and holds no implicitreg results; choose "
            "an empty or new directory"
        )
    os.makedirs(os.path.join(out, "batches"), exist_ok=True)
    tmp = f"{manifest}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(
            {
                "format": FORMAT,
                "name": name,
                "digest": digest,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "plan": [list(p) for p in plan],
            },
            fh,
        )
    os.replace(tmp, manifest)
    return plan


def config_columns(configs: list[dict], seeds: int) -> dict:
    """Config values per row: scalars as they are, tuples as text; only the keys that the
    batch's model and problem read (every config of a batch has the same)."""
    cols = {}
    for k in (k for k in DEFAULTS if k in configs[0]):
        vals = [c[k] for c in configs]
        if all(isinstance(v, (bool, np.bool_)) for v in vals):
            arr = np.array(vals, dtype=bool)
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            arr = np.array(vals, dtype=np.int64)
        elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in vals):
            arr = np.array(vals, dtype=np.float64)
        else:
            arr = np.array([_text(v) for v in vals])
        cols[k] = np.repeat(arr, seeds)
    return cols
