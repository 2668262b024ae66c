"""DeepFactorization: a batch of deep matrix factorizations E = W_N ... W_1, their state, the
fused step, the metrics measured in the core, and fit(), which logs them between chunks of
steps."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .. import metrics as metrics_mod
from .. import ops
from .._backend import array_module, to_host
from .._checks import batch_memory, choice, float_dtype, integer, real_array
from .._codes import OPTIMIZERS
from .._interrupt import deferred_interrupt, serialized
from .._io import load_npz, save_npz
from ..init import init_factors, layer_dims
from ..problems import Completion, Sensing, completion, sensing
from ..trajectory import Trajectory, every, geometric, schedule
from . import base
from .base import (
    GENERATOR_BYTES,
    STATE_BYTES,
    Trained,
    _check_backend,
    _check_problem,
    _check_representable,
    _factor_dtype,
    _in_dtype,
)
from .crossings import (
    Crossings,
    check_crossings,
    loss_thresholds,
    measure_crossings,
    split_rows,
    threshold_values,
)
from .fit import FitLoop, check_log_memory

__all__ = ["DeepFactorization"]

_CHECKPOINT = "implicitreg.DeepFactorization/1"


class DeepFactorization(Trained):
    """B deep matrix factorizations of one shape, trained together.

    factors: [W_1, ..., W_N], W_j of shape (B, d_j, d_{j-1}), d_0 = n, d_N = m, all float32 or
    all float64 (2-d factors are shared by every problem). The arrays are copied: the model
    owns its state and updates it in place."""

    def __init__(
        self,
        problem: Completion | Sensing,
        factors: Sequence[ArrayLike],
        backend: str = "cpu",
        dtype: DTypeLike | None = None,
    ) -> None:
        problem = _check_problem(problem)
        backend = _check_backend(backend)
        if not isinstance(factors, (list, tuple)) or len(factors) == 0:
            raise TypeError(
                f"factors: expected a non-empty list [W_1, ..., W_N], got {type(factors).__name__}"
            )
        # Validated on the host (a device array is copied once), then placed on the backend.
        arrays = [real_array(to_host(W), f"factors[{j}]") for j, W in enumerate(factors)]
        dtype = _factor_dtype(arrays, dtype)
        _check_representable(problem, dtype)
        B, (m, n) = problem.batch, problem.shape
        prev = n
        for j, a in enumerate(arrays):
            if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[0] != B):
                raise ValueError(
                    f"factors[{j}]: expected shape ({B}, d_{j + 1}, d_{j}) or "
                    f"(d_{j + 1}, d_{j}) for a batch of {B}, got {a.shape}"
                )
            if a.shape[-1] != prev:
                raise ValueError(
                    f"factors[{j}]: expected {prev} columns to chain with "
                    f"{'the problem' if j == 0 else f'factors[{j - 1}]'}, got shape {a.shape}"
                )
            prev = a.shape[-2]
        if prev != m:
            raise ValueError(
                f"factors[{len(arrays) - 1}]: expected {m} rows (the problem is "
                f"{m} x {n}), got shape {arrays[-1].shape}"
            )
        self._own(problem, _in_dtype(arrays, dtype), backend)

    def _saves_optimizer(self) -> bool:
        # a model trained by gradient descent alone saves what it always did
        return self._m is not None or bool((self._t != 0).any())

    @classmethod
    def init(
        cls,
        problem: Completion | Sensing,
        depth: int = 3,
        widths: Sequence[int] | int | None = None,
        init: str = "normal",
        scale: float = 1e-3,
        scale_by: str = "product",
        det: str | None = None,
        seed: int = 0,
        dtype: DTypeLike = "float64",
        backend: str = "cpu",
    ) -> DeepFactorization:
        """Draw starting factors (see implicitreg.init); problem b's start depends only on
        (seed, b)."""
        problem = _check_problem(problem)
        dtype = float_dtype(dtype, "dtype")
        _check_backend(backend)
        dims = layer_dims(problem.shape, depth, widths)
        size = sum(dims[j] * dims[j - 1] for j in range(1, len(dims)))
        # drawn in float64 (one generator per problem), then copied into the model's dtype
        batch_memory(
            size * (8 + dtype.itemsize)
            + STATE_BYTES
            + (GENERATOR_BYTES if init != "identity" else 0),
            problem.batch,
            "problem",
            "drawing the starting factors",
        )
        factors = init_factors(
            problem.shape, problem.batch, depth, widths, init, scale, scale_by, det, seed
        )
        # cast here to name scale in an error; the constructor finds them in its dtype
        factors = _in_dtype(factors, dtype, scale)
        return cls(problem, factors, backend=backend, dtype=dtype)

    # ------------------------------------------------------------------ state

    @property
    def factors(self) -> list[np.ndarray]:
        """[W_1, ..., W_N], each (B, d_j, d_{j-1}); views of the live state (CuPy arrays on
        the cuda backend)."""
        return list(self._factors)

    @property
    def depth(self) -> int:
        return len(self._factors)

    @property
    def dims(self) -> list[int]:
        return [self._factors[0].shape[2]] + [W.shape[1] for W in self._factors]

    @serialized
    def product(self) -> np.ndarray:
        """(B, m, n) end-to-end matrices W_N ... W_1."""
        return ops.dmf_loss(self._factors, self.problem, self.backend)[1]

    @serialized
    def loss(self) -> np.ndarray:
        """(B,) 1/2 * sum of squared residuals."""
        return ops.dmf_loss(self._factors, self.problem, self.backend)[0]

    @serialized
    def det(self) -> np.ndarray:
        """(B,) det(E) in float64 (square problems)."""
        m, n = self.problem.shape
        if m != n:
            raise ValueError(f"det: needs a square problem, got shape ({m}, {n})")
        return metrics_mod.det([to_host(W) for W in self._factors])

    # ------------------------------------------------------------------ training

    @serialized
    def step(
        self,
        lr: float | ArrayLike,
        steps: int = 1,
        tol: float | None = None,
        crossings: Crossings | None = None,
        optimizer: str = "gd",
        beta: float = 0.99,
        eps: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> DeepFactorization:
        """`steps` simultaneous updates, in place, with no Python between steps. lr: a number
        or (B,). A problem whose loss is below tol, or that goes non-finite, is frozen
        (status converged / diverged, at its last finite iterate); the others go on exactly
        as if alone. crossings (from self.crossings(thresholds)) records each problem's first
        iterate below each loss threshold, exact to the step.

        optimizer: "gd" (W <- W - lr g, fused into the backward pass), "group_rmsprop" (lr
        divided by sqrt of the bias-corrected running mean, weight beta, of the squared norm
        of the whole gradient, plus eps; default eps 1e-6) or "adam" (torch.optim.Adam:
        betas, default eps 1e-8). Their state is per problem, kept across calls, saved by
        save() and checkpoints; reset_optimizer() forgets it."""
        lr_arr = self._lr(lr)
        steps = integer(steps, "steps", minimum=0)
        tol_v = self._tol(tol)
        if crossings is not None:
            check_crossings(self, crossings)
        opt = self._optimizer_arg(self._optimizer_settings(optimizer, beta, betas, eps))
        # Calls of bounded work (about a second), so that Ctrl-C is honoured between them and
        # leaves a consistent state. Cutting changes no result: each call ends with the same
        # tolerance check the next one would start with.
        chunk = max(
            1, base.WORK_PER_CALL[self.backend] // max(1, self.batch * self._flops_per_step())
        )
        lr_arr = array_module(self.backend).asarray(lr_arr)
        done = 0
        while True:
            n = min(chunk, steps - done)
            with deferred_interrupt():  # the call and its count, or neither
                if crossings is None:
                    ops.dmf_step(
                        self._factors,
                        self.problem,
                        lr_arr,
                        n,
                        tol_v,
                        self.steps_done,
                        self._status,
                        self._frozen_at,
                        opt,
                        backend=self.backend,
                    )
                else:
                    ops.dmf_step(
                        self._factors,
                        self.problem,
                        lr_arr,
                        n,
                        tol_v,
                        self.steps_done,
                        self._status,
                        self._frozen_at,
                        opt,
                        crossings.thresholds,
                        crossings.step,
                        crossings.factors,
                        backend=self.backend,
                    )
                # the status readback is where a device fault surfaces: before the count moves
                all_frozen = bool((self._status != 0).all())
                self.steps_done += n
            done += n
            if done == steps or all_frozen:
                self.steps_done += steps - done
                return self

    def _flops_per_step(self) -> int:
        """About 6 flops per multiply-add of the forward pass (forward, two backward products)."""
        d = self.dims
        return (
            6 * sum(d[j] * d[j - 1] * d[0] for j in range(2, len(d)))
            + 4 * sum(d[j] * d[j - 1] for j in range(1, len(d)))
            + 4 * d[0] * d[-1]
        )

    @serialized
    def measure(self, metrics: Sequence[str] | str = ("loss",)) -> dict[str, np.ndarray]:
        """The named metrics (see fit) of the current state, float64: (B,) each, (B, k) for
        "svals". All come from one call: one product and one SVD per problem."""
        names, kinds, params, rows = metrics_mod.specs(metrics, self.problem, self.dtype)
        out = np.empty((sum(rows), self.batch))
        ops.dmf_measure(self._factors, self.problem, kinds, params, out, self.backend)
        return {k: v[0] for k, v in split_rows(out[None], names, rows).items()}

    def crossings(self, thresholds: ArrayLike) -> Crossings:
        """Empty records of first crossings of the loss thresholds, for step()."""
        t = threshold_values(self, thresholds)
        return Crossings(t, self.batch, self.dims, self.dtype, array_module(self.backend))

    @serialized
    def fit(
        self,
        lr: float | ArrayLike,
        max_steps: int,
        tol: float | None = None,
        log: every | geometric | None = None,
        metrics: Sequence[str] | str = ("loss",),
        thresholds: ArrayLike = (),
        progress: Callable[[int], object] | bool = True,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: float = 300.0,
        keep_checkpoint: bool = False,
        optimizer: str = "gd",
        beta: float = 0.99,
        eps: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> Trajectory:
        """Train for up to max_steps more steps, in chunks between log points (log:
        implicitreg.every(k) or implicitreg.geometric(n); default about 1000 rows), and return
        the logged Trajectory. Stops early when every problem is frozen.

        metrics (float64, computed in the core on the whole batch, one SVD per problem):
          "loss", "entry:i,j" (of the end-to-end matrix E), "det" (of E, from the factors), "svals"
          (k = min(m, n) values per problem), "fro", "nuc", "spectral", "schatten:p" (any p > 0),
          "erank", "rank" (tolerance sigma_1 max(m, n) eps), "dist_rank:r" (distance to rank <=
          r), "balancedness" (see implicitreg.metrics), "recon_error" (||E - truth||_F /
          ||truth||_F, for problems with a known truth).

        thresholds: loss values (e.g. 1e-1, 1e-2, 1e-3, 1e-4); every metric is also taken at each
        problem's first iterate with loss below each of them, found inside the core's step loop, so
        exact to the step however sparse the log (Trajectory.crossings).

        progress: True (a tqdm bar, extra "progress"), False, or a callable given the steps
        advanced.

        checkpoint: a path; the fit's state (model, rows, crossings) is written there atomically at
        log points, at most every checkpoint_every seconds, and the same call on a model in the
        same starting state resumes from it as if uninterrupted. A completed fit removes it unless
        keep_checkpoint (then it is marked done and the same call returns at once).

        optimizer, beta, eps, betas: as for step()."""
        s = self._fit_settings(
            lr, max_steps, tol, log, metrics, thresholds, optimizer, beta, eps, betas
        )
        lr_arr, max_steps, log = s["lr"], s["max_steps"], s["log"]
        names, kinds, params, metric_rows = s["metrics"]
        cross = self.crossings(thresholds)
        points = log.points(max_steps)
        meta = {
            "lr": lr_arr.tolist() if lr_arr.size > 1 else float(lr_arr[0]),
            "max_steps": max_steps,
            "tol": None if tol is None else s["tol"],
            "log": repr(log),
            "metrics": names,
            "thresholds": cross.thresholds_f64.tolist(),
            "backend": self.backend,
            "dtype": str(self.dtype),
            "dims": self.dims,
            "problem": repr(self.problem),
        }
        if s["optimizer"]["optimizer"] != "gd":  # a gd fit's record (and checkpoint) is as it was
            meta.update(self._optimizer_meta(s["optimizer"]))
        loop = FitLoop(
            self,
            meta,
            lr_arr,
            max_steps,
            points,
            checkpoint,
            checkpoint_every,
            keep_checkpoint,
            progress,
        )
        # Every row goes straight from the core into this buffer (pages are touched only as
        # rows are written), so logging costs no copy.
        buf = np.empty((len(points), sum(metric_rows), self.batch))
        opt = s["optimizer"]

        def step(n: int) -> None:
            self.step(
                lr_arr, n, tol, cross, opt["optimizer"], opt["beta"], opt["eps"], opt["betas"]
            )

        def record(i: int) -> None:
            ops.dmf_measure(self._factors, self.problem, kinds, params, buf[i], self.backend)

        def progress_arrays(rows: list[int]) -> dict:
            return {
                "buf": buf[: len(rows)],
                "crossed_at": cross.step,
                **{f"cross{j}": S for j, S in enumerate(cross.factors)},
            }

        def restore(rows: list[int], saved: dict) -> None:
            buf[: len(rows)] = saved["buf"]
            xp = array_module(self.backend)
            cross.step[...] = xp.asarray(saved["crossed_at"])
            for j, S in enumerate(cross.factors):
                S[...] = xp.asarray(saved[f"cross{j}"])

        rows = loop.run(step, record, progress_arrays, restore)
        data = split_rows(buf[: len(rows)], names, metric_rows)
        t = Trajectory(
            rows,
            data,
            loop.status(),
            self.frozen_at,
            meta,
            crossings=measure_crossings(self, cross, names, kinds, params, metric_rows),
        )
        loop.close()
        return t

    def _fit_settings(
        self, lr, max_steps, tol, log, metrics, thresholds, optimizer, beta, eps, betas
    ) -> dict:
        """fit()'s training arguments, checked (and the log's memory) before any work."""
        s: dict[str, Any] = {
            "lr": self._lr(lr),
            "max_steps": integer(max_steps, "max_steps", minimum=0),
            "tol": self._tol(tol),
            "optimizer": self._optimizer_settings(optimizer, beta, betas, eps),
            "metrics": metrics_mod.specs(metrics, self.problem, self.dtype),
        }
        s["log"] = log = schedule(log, s["max_steps"])
        rows = sum(s["metrics"][3])
        k = threshold_values(self, thresholds).size
        # crossings: the factors at each threshold, and their metrics measured at the end
        cross_bytes = self.batch * k * (self._size() * self.dtype.itemsize + 8 * (rows + 1))
        check_log_memory(log.rows(s["max_steps"]), self.batch, rows, log, cross_bytes)
        return s

    def check_fit(
        self,
        lr: float | ArrayLike,
        max_steps: int,
        tol: float | None = None,
        log: every | geometric | None = None,
        metrics: Sequence[str] | str = ("loss",),
        thresholds: ArrayLike = (),
        optimizer: str = "gd",
        beta: float = 0.99,
        eps: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        """Raise the ValueError or TypeError that fit() would for these arguments, doing no
        work (a sweep checks every config this way before it runs any)."""
        self._fit_settings(
            lr, max_steps, tol, log, metrics, thresholds, optimizer, beta, eps, betas
        )

    def bytes_per_problem(
        self,
        metrics: Sequence[str] | str = ("loss",),
        thresholds: ArrayLike = (),
        log: every | geometric | None = None,
        max_steps: int = 0,
        optimizer: str = "gd",
    ) -> dict[str, int]:
        """About how many bytes one problem of this model takes in a fit with these arguments:
        {"host": its problem data, factors, optimizer state, log rows and crossings; "device": on
        the cuda backend, its problem data, factors, optimizer state, crossings and the measuring
        scratch (product, singular values, rows); "problem": its problem data alone}."""
        names, kinds, params, metric_rows = metrics_mod.specs(metrics, self.problem, self.dtype)
        row, size, item = sum(metric_rows), self._size(), self.dtype.itemsize
        k = loss_thresholds(thresholds).size
        pb = self.problem.bytes_per_problem()
        state = size * item + STATE_BYTES
        if choice(optimizer, "optimizer", tuple(OPTIMIZERS)) == "adam":
            state += 2 * size * item  # its moments
        m, n = self.problem.shape
        rows = schedule(log, integer(max_steps, "max_steps", minimum=0)).rows(max_steps)
        return {
            "host": pb + state + k * (size * item + 8 * (row + 1)) + 8 * row * rows,
            "device": pb + state + k * (size * item + 8) + (m * n + min(m, n) + 1) * 8 + 8 * row,
            "problem": pb,
        }

    def _size(self) -> int:
        """Entries of one problem's factors."""
        return sum(W.shape[1] * W.shape[2] for W in self._factors)

    # ------------------------------------------------------------------ checkpoints

    @serialized
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole state (problem, factors, status, step count) to an .npz file,
        atomically, so that a long run can be resumed with DeepFactorization.load."""
        pb = self.problem
        arrays = (
            {"targets": pb.targets, "masks": pb.masks}
            if pb.kind == "completion"
            else {"A": pb.A, "y": pb.y}
        )
        if pb.truth is not None:
            arrays["truth"] = pb.truth
        meta = {
            "kind": pb.kind,
            "batch": pb.batch,
            "depth": self.depth,
            "steps_done": self.steps_done,
            "backend": self.backend,
        }
        save_npz(path, _CHECKPOINT, meta, {**self._host_state(), **arrays})

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: str | None = None) -> DeepFactorization:
        """Resume a model written by save() (on its backend unless another is given)."""
        meta, z = load_npz(path, _CHECKPOINT, "a DeepFactorization checkpoint")
        truth = z.get("truth")
        problem: Completion | Sensing
        if meta["kind"] == "completion":
            problem = completion(z["targets"], z["masks"], batch=meta["batch"], truth=truth)
        else:
            problem = sensing(z["A"], z["y"], batch=meta["batch"], truth=truth)
        f = cls(
            problem,
            [z[f"factor{j}"] for j in range(meta["depth"])],
            backend=backend or meta["backend"],
        )
        f._restore(z, meta)
        return f

    def __repr__(self) -> str:
        return (
            f"DeepFactorization(batch={self.batch}, dims={self.dims}, dtype={self.dtype}, "
            f"backend={self.backend!r}, steps_done={self.steps_done})"
        )
