"""What a fit() call does besides stepping and measuring, the same for both models: the log
points, checkpoints and resuming from one, the progress bar, stopping once every problem is
frozen, and the log's memory check."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable

import numpy as np

from .._backend import to_host
from .._checks import real_array
from .._io import load_npz, save_npz

__all__ = [
    "FitCheckpoint",
    "FitLoop",
    "check_log_memory",
    "check_progress",
    "checkpoint_every",
    "progress_bar",
]


class FitLoop:
    """One fit() call of `model` over the log `points` (steps after its start): the arguments
    every fit shares are checked when it is made, before any work; run() then drives the
    model's own step and record functions between the points."""

    def __init__(
        self,
        model,
        meta: dict,
        lr: np.ndarray,
        max_steps: int,
        points: np.ndarray,
        checkpoint,
        every: float,
        keep_checkpoint: bool,
        progress,
    ):
        self.every = checkpoint_every(every)
        if not isinstance(keep_checkpoint, bool):
            raise TypeError(f"keep_checkpoint: expected True or False, got {keep_checkpoint!r}")
        check_progress(progress)
        self.model, self.max_steps, self.points = model, max_steps, points
        self.keep, self.progress = keep_checkpoint, progress
        self.saver = None if checkpoint is None else FitCheckpoint(checkpoint, model, meta, lr)

    def run(
        self,
        step: Callable[[int], None],
        record: Callable[[int], None],
        progress_arrays: Callable[[list[int]], dict],
        restore: Callable[[list[int], dict], None],
        checks: np.ndarray | None = None,
        check: Callable[[], None] | None = None,
    ) -> list[int]:
        """Step to each log point (and each of `checks`, where check() runs), record a row at
        each log point and where every problem is frozen (record(i) writes row i), and return
        the steps of the rows. A checkpoint written by the same call is resumed from: its
        progress arrays (progress_arrays(rows) when saved) go to restore(rows, arrays)."""
        model, saver = self.model, self.saver
        rows: list[int] = []
        start, done = model.steps_done, False
        if saver is not None and os.path.exists(saver.path):
            start, done, rows, saved = saver.restore(model)
            restore(rows, saved)
        checks = np.zeros(0, dtype=np.int64) if checks is None else checks
        logged, checked = set(self.points.tolist()), set(checks.tolist())
        advance, close = progress_bar(self.progress, self.max_steps)
        advance(rows[-1] - start if rows else 0)
        last_save = time.monotonic()
        todo = np.union1d(self.points, checks)
        try:
            for p in todo[todo > (rows[-1] - start if rows else -1)] if not done else ():
                before = model.steps_done
                step(int(start + p - model.steps_done))
                advance(model.steps_done - before)
                if check is not None and p in checked:
                    check()
                frozen = model._all_frozen()
                if p in logged or frozen:
                    record(len(rows))
                    rows.append(model.steps_done)
                    if (
                        not frozen
                        and saver is not None
                        and time.monotonic() - last_save >= self.every
                    ):
                        saver.save(model, start, rows, progress_arrays(rows), done=False)
                        last_save = time.monotonic()
                if frozen:
                    break
            if saver is not None and not done:
                saver.save(model, start, rows, progress_arrays(rows), done=True)
        finally:
            close()
        return rows

    def status(self) -> np.ndarray:
        """(B,) each problem's end: "max_steps" where it still runs, else its status."""
        return np.where(to_host(self.model._status) == 0, "max_steps", self.model.status)

    def close(self) -> None:
        """The fit has returned its result: its checkpoint (marked done, so that the same call
        returns the same result at once) is removed unless kept. Only then: a Ctrl-C before
        the result is made still finds it."""
        if self.saver is not None and not self.keep and os.path.exists(self.saver.path):
            os.remove(self.saver.path)


def check_log_memory(rows: int, batch: int, n_metrics: int, log, cross_bytes: int = 0) -> None:
    """Refuse, before any work, a log (and crossings record) that would not fit in half of
    this machine's memory."""
    need = rows * batch * n_metrics * 8
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need <= total // 2 < need + cross_bytes:
        raise ValueError(
            f"thresholds: recording the crossings of {batch} problems needs "
            f"{cross_bytes / 2**30:.1f} GiB beside the log's "
            f"{need / 2**30:.1f} GiB, more than half of this machine's "
            f"{total / 2**30:.1f} GiB; pass fewer thresholds or a smaller batch"
        )
    if need > total // 2:
        fit_rows = max(1, (total // 2) // max(1, batch * n_metrics * 8))
        raise ValueError(
            f"log: {rows} rows x {batch} problems x {n_metrics} metrics need "
            f"{need / 2**30:.1f} GiB, more than half of this machine's "
            f"{total / 2**30:.1f} GiB; log at most {fit_rows} rows "
            f"(got {log!r})"
        )


def progress_bar(progress, total: int):
    """(advance(n_steps), close()) for a tqdm bar when progress is True and tqdm is installed
    (extra "progress"), for a user callable, or doing nothing."""
    check_progress(progress)
    if callable(progress):
        return progress, lambda: None
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            bar = tqdm(total=total, unit="step", leave=False)
            return bar.update, bar.close
    return (lambda n: None), (lambda: None)


def checkpoint_every(seconds) -> float:
    """checkpoint_every as seconds >= 0 (0: at every log point)."""
    seconds = float(real_array(seconds, "checkpoint_every"))
    if not seconds >= 0:
        raise ValueError(f"checkpoint_every: expected seconds >= 0, got {seconds}")
    return seconds


def check_progress(progress) -> None:
    if not (progress is True or progress is False or callable(progress)):
        raise TypeError(f"progress: expected True, False or a callable, got {progress!r}")


class FitCheckpoint:
    """The resumable state of one fit() call in one .npz file, tied to that call's arguments
    and to the model's state when it started: the model's state arrays (model._state()) and
    the fit's progress arrays (rows logged so far, crossings, stop-rule counters)."""

    FORMAT = "implicitreg.fit-checkpoint/1"

    def __init__(self, path, model, meta: dict, lr: np.ndarray):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint: expected a path, got {type(path).__name__}")
        self.path = os.fspath(path)
        call = {**meta, "lr": hashlib.sha256(lr.tobytes()).hexdigest()}  # B values: a digest
        self.key = {"call": call, "start": _state_digest(model)}

    def save(self, model, start: int, rows: list[int], progress: dict, done: bool) -> None:
        arrays = {
            "rows": np.asarray(rows, dtype=np.int64),
            **{f"state/{k}": v for k, v in model._host_state().items()},
            **{f"progress/{k}": to_host(v) for k, v in progress.items()},
        }
        save_npz(
            self.path,
            self.FORMAT,
            {"key": self.key, "start": start, "done": done, "steps_done": model.steps_done},
            arrays,
        )

    def restore(self, model) -> tuple[int, bool, list[int], dict]:
        """(start, done, rows, progress arrays), the model's state restored."""
        meta, z = load_npz(self.path, self.FORMAT, "a fit() checkpoint")
        if json.dumps(meta["key"], sort_keys=True) != json.dumps(self.key, sort_keys=True):
            raise ValueError(
                f"checkpoint: {self.path} was written by another fit (other "
                "arguments or another starting state); delete it or pass another "
                "path"
            )
        model._restore(
            {k[len("state/") :]: v for k, v in z.items() if k.startswith("state/")}, meta
        )
        progress = {k[len("progress/") :]: v for k, v in z.items() if k.startswith("progress/")}
        return (int(meta["start"]), bool(meta["done"]), [int(r) for r in z["rows"]], progress)


def _state_digest(model) -> str:
    """A digest of the model's whole state and problem (what a resumed fit must start from)."""
    h = hashlib.sha256()
    pb = model.problem.arrays(model.dtype)
    for a in [*model._host_state().values(), *(v for v in pb.values() if v is not None)]:
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(str(model.steps_done).encode())
    return h.hexdigest()
