"""CPFactorization: a batch of CP tensor factorizations, their state, the fused step, the
metrics of their tensors, and fit(), which logs them between chunks of steps."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .. import _rng, ops
from .._backend import array_module, to_host
from .._checks import batch_memory, choice, float_dtype, integer, positive, real_array
from .._codes import LIMITS, OPTIMIZERS
from .._interrupt import deferred_interrupt, serialized
from .._io import load_npz, save_npz
from ..problems import TensorCompletion
from ..trajectory import Trajectory, every, geometric, schedule
from . import base
from .base import (
    STATE_BYTES,
    Trained,
    _check_backend,
    _check_representable,
    _factor_dtype,
    _in_dtype,
)
from .fit import FitLoop, check_log_memory

__all__ = ["CP_METRICS", "CPFactorization"]

CP_METRICS = ("loss", "recon_error", "norm", "component_norms")
_CP_CHECKPOINT = "implicitreg.CPFactorization/1"


class CPFactorization(Trained):
    """B CP tensor factorizations of one shape, trained together:
    W = sum_r u_r^1 x ... x u_r^N, factors [U_1, ..., U_N] with U_n of shape (B, d_n, R)
    (column r of U_n is u_r^n). The arrays are copied: the model owns its state.
    Loss: mean squared error over the observed entries, per problem.
    """

    def __init__(
        self,
        problem: TensorCompletion,
        factors: Sequence[ArrayLike],
        backend: str = "cpu",
        dtype: DTypeLike | None = None,
    ) -> None:
        if not isinstance(problem, TensorCompletion):
            raise TypeError(
                "problem: expected implicitreg.tensor_completion(...), got "
                f"{type(problem).__name__}"
            )
        backend = _check_backend(backend)
        if not isinstance(factors, (list, tuple)) or len(factors) != problem.order:
            raise TypeError(
                f"factors: expected a list of {problem.order} arrays (B, d_n, R), "
                f"got {type(factors).__name__} of length "
                f"{len(factors) if hasattr(factors, '__len__') else '?'}"
            )
        # Validated on the host (a device array is copied once), then placed on the backend.
        arrays = [real_array(to_host(U), f"factors[{n}]") for n, U in enumerate(factors)]
        dtype = _factor_dtype(arrays, dtype)
        _check_representable(problem, dtype)
        B, R = problem.batch, arrays[0].shape[-1] if arrays[0].ndim in (2, 3) else -1
        for n, (a, d) in enumerate(zip(arrays, problem.dims, strict=True)):
            if a.ndim not in (2, 3) or a.shape[-2:] != (d, R) or (a.ndim == 3 and a.shape[0] != B):
                raise ValueError(
                    f"factors[{n}]: expected shape ({B}, {d}, R) or ({d}, R) with "
                    f"one R for every factor, got {a.shape}"
                )
        arrays = _in_dtype(arrays, dtype)
        if not 1 <= R <= LIMITS["max_cp_rank"]:
            raise ValueError(
                f"factors: expected 1 to {LIMITS['max_cp_rank']} components R, got {R}"
            )
        self._own(problem, arrays, backend, extra_bytes=dtype.itemsize)  # and the losses:
        # the last step() call's final losses
        self._step_loss = array_module(backend).empty(B, dtype=dtype)

    @classmethod
    def init(
        cls,
        problem: TensorCompletion,
        rank: int | None = None,
        scale: float = 1e-3,
        seed: int = 0,
        dtype: DTypeLike = "float64",
        backend: str = "cpu",
    ) -> CPFactorization:
        """Factors with i.i.d. N(0, scale^2) entries (the paper's init_std); rank R
        defaults to the largest CP rank prod(d) / max(d) (64 for 8x8x8, 512 for 8x8x8x8), so
        that nothing constrains the rank. Problem b's start depends only on (seed, b)."""
        if not isinstance(problem, TensorCompletion):
            raise TypeError(
                "problem: expected implicitreg.tensor_completion(...), got "
                f"{type(problem).__name__}"
            )
        dims = problem.dims
        R = int(np.prod(dims)) // max(dims) if rank is None else integer(rank, "rank", minimum=1)
        if R > LIMITS["max_cp_rank"]:
            raise ValueError(f"rank: expected at most {LIMITS['max_cp_rank']} components, got {R}")
        scale = positive(scale, "scale")
        seed = _rng.check_seed(seed)
        dtype = float_dtype(dtype, "dtype")
        _check_backend(backend)
        batch_memory(
            sum(dims) * R * (8 + dtype.itemsize) + STATE_BYTES + dtype.itemsize,
            problem.batch,
            "problem",
            "drawing the starting factors",
        )
        factors = [np.empty((problem.batch, d, R)) for d in dims]
        for b in range(problem.batch):
            g = _rng.generator(seed, "init", b)
            for U in factors:
                U[b] = g.normal(0.0, scale, size=U.shape[1:])
        # cast here to name scale in an error; the constructor finds them in its dtype
        factors = _in_dtype(factors, dtype, scale)
        return cls(problem, factors, backend=backend, dtype=dtype)

    @property
    def factors(self) -> list[np.ndarray]:
        """[U_1, ..., U_N], each (B, d_n, R); views of the live state (CuPy arrays on the
        cuda backend)."""
        return list(self._factors)

    @property
    def order(self) -> int:
        return len(self._factors)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(U.shape[1] for U in self._factors)

    @property
    def rank(self) -> int:
        return self._factors[0].shape[2]

    @serialized
    def tensor(self) -> np.ndarray:
        """(B, d_1, ..., d_N) the factorizations' tensors (CuPy on the cuda backend)."""
        return _cp_tensor(self._factors, self.backend).reshape((self.batch,) + self.dims)

    @serialized
    def loss(self) -> np.ndarray:
        """(B,) mean squared error over the observed entries."""
        return self.measure(("loss",))["loss"]

    @serialized
    def step(
        self,
        lr: float | ArrayLike,
        steps: int = 1,
        tol: float | None = None,
        optimizer: str = "group_rmsprop",
        beta: float = 0.99,
        eps: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> CPFactorization:
        """`steps` updates in place with no Python between steps, by the optimizer: "gd",
        "group_rmsprop" (the paper's) or "adam", with beta, eps and betas as for
        DeepFactorization.step. Freezing and divergence as for DeepFactorization.step."""
        lr_arr = self._lr(lr)
        steps = integer(steps, "steps", minimum=0)
        tol_v = self._tol(tol)
        opt = self._optimizer_arg(self._optimizer_settings(optimizer, beta, betas, eps))
        if self.batch == 0:  # nothing to train (and no kernel need see an empty batch)
            self.steps_done += steps
            return self
        loss = self._step_loss
        lr_arr = array_module(self.backend).asarray(lr_arr)
        # calls of bounded work, so that Ctrl-C is honoured between them (results unchanged)
        running = to_host(self._status) == 0  # frozen problems cost nothing in the core
        nnz = int(self.problem.n_observed[running].max(initial=0))
        per_step = max(1, int(running.sum()) * max(nnz, 1) * 3 * self.order * self.rank)
        chunk = max(1, base.WORK_PER_CALL[self.backend] // 4 // per_step)
        done = 0
        while True:
            n = min(chunk, steps - done)
            with deferred_interrupt():  # the call and its count, or neither
                ops.cp_step(
                    self._factors,
                    self.problem,
                    lr_arr,
                    n,
                    tol_v,
                    self.steps_done,
                    self._status,
                    self._frozen_at,
                    loss,
                    opt,
                    backend=self.backend,
                )
                # the status readback is where a device fault surfaces: before the count moves
                all_frozen = bool((self._status != 0).all())
                self.steps_done += n
            done += n
            if done == steps or all_frozen:
                self.steps_done += steps - done
                return self

    def _metric_names(self, metrics) -> list[str]:
        if isinstance(metrics, str):
            metrics = (metrics,)
        if not isinstance(metrics, (list, tuple)):
            raise TypeError(
                f"metrics: expected a list of metric names, got {type(metrics).__name__}"
            )
        for name in metrics:
            if name not in CP_METRICS:
                raise ValueError(
                    f"metrics: unknown metric {name!r}; known: {', '.join(CP_METRICS)}"
                )
        return list(dict.fromkeys(metrics))

    @serialized
    def measure(
        self, metrics: Sequence[str] | str = ("loss", "recon_error")
    ) -> dict[str, np.ndarray]:
        """The named metrics of the current state, float64: "loss" (mean squared error over
        observed entries), "recon_error" (||W - W*||_F / ||W*||_F over all entries;
        unnormalized where W* = 0), "norm" (||W||_F), each (B,); "component_norms" (B, R):
        ||u_r^1 x ... x u_r^N|| = prod_n ||u_r^n||."""
        names = self._metric_names(metrics)
        xp = array_module(self.backend)  # computed where the factors live, returned as NumPy
        out = {}
        if set(names) - {"component_norms"}:
            W = _cp_tensor(self._factors, self.backend).astype(np.float64)
            a = self.problem.arrays(np.float64, device=self.backend == "cuda")
            target = xp.broadcast_to(a["target"], W.shape)
            mask = xp.broadcast_to(a["mask"], W.shape)
            with np.errstate(all="ignore"):
                if "loss" in names:
                    n = mask.sum(axis=1)
                    sq = xp.where(mask, (W - target) ** 2, 0.0).sum(axis=1)
                    out["loss"] = xp.where(n > 0, sq / xp.maximum(n, 1), 0.0)
                if "recon_error" in names:
                    num = xp.linalg.norm(W - target, axis=1)
                    den = xp.linalg.norm(target, axis=1)
                    out["recon_error"] = xp.where(den > 0, num / xp.where(den > 0, den, 1), num)
                if "norm" in names:
                    out["norm"] = xp.linalg.norm(W, axis=1)
        if "component_norms" in names:
            norms = xp.ones((self.batch, self.rank))
            with np.errstate(all="ignore"):  # a product past float64 is inf
                for U in self._factors:
                    # each row's norm from its entries over their largest: squares of entries
                    # past 1e154 (a diverged problem's last finite iterate) would overflow
                    U = xp.abs(U.astype(np.float64))
                    big = U.max(axis=1)
                    norms *= big * xp.linalg.norm(U / xp.where(big > 0, big, 1)[:, None], axis=1)
            out["component_norms"] = norms
        return {k: to_host(out[k]) for k in names}

    @serialized
    def fit(
        self,
        lr: float | ArrayLike,
        max_steps: int,
        tol: float | None = None,
        log: every | geometric | None = None,
        metrics: Sequence[str] | str = ("loss", "recon_error"),
        optimizer: str = "group_rmsprop",
        beta: float = 0.99,
        eps: float | None = None,
        patience: int | None = None,
        check_every: int = 100,
        progress: Callable[[int], object] | bool = True,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: float = 300.0,
        keep_checkpoint: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> Trajectory:
        """Train for up to max_steps more steps (optimizer, beta, eps, betas as in step; the paper
        uses group_rmsprop with lr 1e-2), logging `metrics` (see measure) at the log points, and
        return the Trajectory. Stops early when every problem is frozen.

        tol with patience=None freezes a problem at its first iterate with loss < tol, found
        in the core. With patience=k, the paper's rule: the loss is checked
        every check_every steps and a problem is frozen (converged) at the (k+1)-th
        consecutive check below tol; the paper uses tol 1e-6, patience 2, checks every 100.
        checkpoint, checkpoint_every, keep_checkpoint: as for DeepFactorization.fit
        (resumable, bit for bit).
        """
        s = self._fit_settings(
            lr, max_steps, tol, log, metrics, optimizer, beta, eps, patience, check_every, betas
        )
        lr_arr, max_steps, log, names = s["lr"], s["max_steps"], s["log"], s["metrics"]
        patience, check_every, opt = s["patience"], s["check_every"], s["optimizer"]
        points = log.points(max_steps)
        checks = (
            np.arange(0, max_steps + 1, check_every)
            if patience is not None
            else np.zeros(0, dtype=np.int64)
        )
        meta = {
            "model": "cp",
            "lr": lr_arr.tolist() if lr_arr.size > 1 else float(lr_arr[0]),
            "max_steps": max_steps,
            "tol": None if tol is None else s["tol"],
            "log": repr(log),
            "metrics": names,
            **self._optimizer_meta(opt),
            "patience": patience,
            "check_every": check_every if patience is not None else None,
            "backend": self.backend,
            "dtype": str(self.dtype),
            "dims": list(self.dims),
            "rank": self.rank,
            "problem": repr(self.problem),
        }
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
        data: dict[str, list[np.ndarray]] = {n: [] for n in names}
        below = np.zeros(self.batch, dtype=np.int64)  # consecutive checks below tol
        core_tol = None if patience is not None else tol

        def step(n: int) -> None:
            self.step(lr, n, core_tol, opt["optimizer"], opt["beta"], opt["eps"], opt["betas"])

        def check() -> None:  # the paper's stop rule
            nonlocal below
            run = to_host(self._status) == 0
            # the core's loss of this very iterate: no tensor to rebuild per check
            below = np.where(run & (to_host(self._step_loss) < tol), below + 1, 0)
            stop = run & (below > patience)
            if stop.any():
                xp = array_module(self.backend)
                self._status[xp.asarray(stop)] = 1  # converged
                self._frozen_at[xp.asarray(stop)] = self.steps_done

        def record(i: int) -> None:
            for k, v in self.measure(names).items():
                data[k].append(v)

        def progress_arrays(rows: list[int]) -> dict:
            return {
                "below": below,
                **{
                    f"data/{k}": np.array(v).reshape(
                        (len(rows), self.batch) + (() if k != "component_norms" else (self.rank,))
                    )
                    for k, v in data.items()
                },
            }

        def restore(rows: list[int], saved: dict) -> None:
            for k in names:
                data[k] = list(saved[f"data/{k}"])
            below[:] = saved["below"]

        rows = loop.run(step, record, progress_arrays, restore, checks, check)
        t = Trajectory(
            rows, {k: np.array(v) for k, v in data.items()}, loop.status(), self.frozen_at, meta
        )
        loop.close()
        return t

    def _fit_settings(
        self, lr, max_steps, tol, log, metrics, optimizer, beta, eps, patience, check_every, betas
    ) -> dict:
        """fit()'s training arguments, checked (and the log's memory) before any work."""
        s: dict[str, Any] = {
            "lr": self._lr(lr),
            "max_steps": integer(max_steps, "max_steps", minimum=0),
            "tol": self._tol(tol),
            "patience": patience,
            "check_every": check_every,
        }
        if patience is not None:
            s["patience"] = integer(patience, "patience", minimum=0)
            s["check_every"] = integer(check_every, "check_every", minimum=1)
            if tol is None:
                raise ValueError("patience: needs a tol to count the checks below it")
        s["optimizer"] = self._optimizer_settings(optimizer, beta, betas, eps)
        s["metrics"] = names = self._metric_names(metrics)
        s["log"] = log = schedule(log, s["max_steps"])
        widths = [self.rank if n == "component_norms" else 1 for n in names]
        check_log_memory(log.rows(s["max_steps"]), self.batch, sum(widths), log)
        if set(names) - {"component_norms"}:  # measure(): the tensors and two temporaries
            batch_memory(
                3 * 8 * int(np.prod(self.dims)), self.batch, "metrics", "measuring the tensors"
            )
        return s

    def check_fit(
        self,
        lr: float | ArrayLike,
        max_steps: int,
        tol: float | None = None,
        log: every | geometric | None = None,
        metrics: Sequence[str] | str = ("loss", "recon_error"),
        optimizer: str = "group_rmsprop",
        beta: float = 0.99,
        eps: float | None = None,
        patience: int | None = None,
        check_every: int = 100,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        """Raise the ValueError or TypeError that fit() would for these arguments, doing no
        work (a sweep checks every config this way before it runs any)."""
        self._fit_settings(
            lr, max_steps, tol, log, metrics, optimizer, beta, eps, patience, check_every, betas
        )

    def bytes_per_problem(
        self,
        metrics: Sequence[str] | str = ("loss", "recon_error"),
        log: every | geometric | None = None,
        max_steps: int = 0,
        optimizer: str = "group_rmsprop",
    ) -> dict[str, int]:
        """About how many bytes one problem of this model takes in a fit with these
        arguments: {"host": its problem data, factors, optimizer state, log rows and the
        tensors measure() builds; "device": on the cuda backend, its problem data, factors,
        optimizer state, the step's compacted entries and measure()'s tensors; "problem": its
        problem data alone}."""
        names = self._metric_names(metrics)
        numel, item = int(np.prod(self.dims)), self.dtype.itemsize
        size = sum(self.dims) * self.rank
        state = size * item + STATE_BYTES + item
        if choice(optimizer, "optimizer", tuple(OPTIMIZERS)) == "adam":
            state += 2 * size * item  # its moments
        row = sum(self.rank if n == "component_norms" else 1 for n in names)
        rows = schedule(log, integer(max_steps, "max_steps", minimum=0)).rows(max_steps)
        # problem: targets, masks and the observation order; measure(): the tensor and two
        # temporaries, the component norms
        pb = numel * (8 + 1 + 8)
        return {
            "host": pb + state + 3 * 8 * numel + 8 * row * rows,
            "device": numel * (item + 1)
            + state
            + item
            + numel * (8 + item)
            + 3 * 8 * numel
            + 8 * self.rank,
            "problem": pb,
        }

    @serialized
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole state (problem, factors, optimizer state, status, step count) to an
        .npz file atomically; CPFactorization.load resumes it bit for bit."""
        pb = self.problem
        arrays = {"targets": pb.targets, "masks": pb.masks, **self._host_state()}
        save_npz(
            path,
            _CP_CHECKPOINT,
            {
                "batch": pb.batch,
                "order": self.order,
                "steps_done": self.steps_done,
                "backend": self.backend,
            },
            arrays,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: str | None = None) -> CPFactorization:
        meta, z = load_npz(path, _CP_CHECKPOINT, "a CPFactorization checkpoint")
        problem = TensorCompletion(z["targets"], z["masks"], meta["batch"])
        c = cls(
            problem,
            [z[f"factor{n}"] for n in range(meta["order"])],
            backend=backend or meta["backend"],
        )
        c._restore(z, meta)
        return c

    def __repr__(self) -> str:
        return (
            f"CPFactorization(batch={self.batch}, dims={self.dims}, rank={self.rank}, "
            f"dtype={self.dtype}, backend={self.backend!r}, steps_done={self.steps_done})"
        )


def _cp_tensor(factors, backend: str):
    """(B, numel) tensors of CP factors; an empty batch never reaches a kernel (the numpy
    reference cannot reshape one)."""
    if factors[0].shape[0] == 0:
        numel = math.prod(U.shape[1] for U in factors)
        return array_module(backend).zeros((0, numel), dtype=factors[0].dtype)
    return ops.cp_tensor(factors, backend)
