"""DeepFactorization: a batch of deep matrix factorizations E = W_N ... W_1, their state, the
fused gradient-descent step and the fit() loop that logs metrics between chunks of steps."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time

import numpy as np

from . import _rng, ops
from . import metrics as metrics_mod
from ._backend import array_module, backends, is_device, to_host
from ._checks import batch_memory, choice, finite, float_dtype, integer, positive, real_array
from ._codes import LIMITS, OPTIMIZERS, STATUS_NAMES
from ._interrupt import deferred_interrupt, serialized
from ._io import load_npz, save_npz
from .init import init_factors, layer_dims
from .problems import Completion, Sensing, TensorCompletion, completion, sensing
from .trajectory import Trajectory, every, geometric, load, schedule

__all__ = ["CPFactorization", "DeepFactorization", "Trajectory", "every", "geometric", "load",
           "memorizer"]

_CHECKPOINT = "implicitreg.DeepFactorization/1"
# Flops per kernel call in step(): about a second on one core, or on one GPU (where each call
# ends with the host reading the status, so calls are made long).
_WORK_PER_CALL = {"cpu": 3 * 10**10, "numpy": 3 * 10**10, "cuda": 3 * 10**12}
# per problem: status (int8), frozen_at (int64), the optimizers' running mean and count
_STATE_BYTES = 1 + 8 + 8 + 8
# eps when none is given, per optimizer (group_rmsprop: the paper's; adam: PyTorch's)
_DEFAULT_EPS = {"gd": 0.0, "group_rmsprop": 1e-6, "adam": 1e-8}
_GENERATOR_BYTES = 1200  # a numpy Generator held per problem while drawing a start


def _check_backend(backend: str) -> str:
    choice(backend, "backend", ops.BACKENDS)
    info = backends()[backend]
    if not info["available"]:
        raise RuntimeError(f"backend {backend!r} is not available here: {info['reason']}")
    return backend


def _factor_dtype(arrays: list[np.ndarray], dtype) -> np.dtype:
    """The dtype the factors are stored in: `dtype` when given, else their common one."""
    if dtype is not None:
        return float_dtype(dtype, "dtype")
    kinds = {a.dtype for a in arrays}
    if len(kinds) > 1:
        raise TypeError(f"factors: expected one dtype for every factor, got "
                        f"{sorted(str(k) for k in kinds)}; pass dtype= to convert")
    return float_dtype(arrays[0].dtype, "factors")


def _in_dtype(arrays: list[np.ndarray], dtype: np.dtype, scale: float | None = None
              ) -> list[np.ndarray]:
    """The factors in the model's dtype, refused when a value does not survive the cast: too
    large (a float64 1e300 is inf in float32) or too small (a nonzero entry that becomes 0:
    a factor of zeros never moves). scale: the init's, which drew them; the error names it."""
    with np.errstate(over="ignore", under="ignore"):
        cast = [a.astype(dtype, copy=False) for a in arrays]
    for j, (a, c) in enumerate(zip(arrays, cast, strict=True)):
        name = (f"factors[{j}]" if scale is None
                else f"scale: factors[{j}] drawn with scale={scale:g}")
        finite(c, name)
        lost = (a != 0) & (c == 0)
        if lost.any():
            raise ValueError(
                f"{name}: {int(lost.sum())} nonzero entries (down to "
                f"{np.abs(a[lost]).min():.3g}) underflow to 0 in {dtype}, whose smallest "
                f"normal number is {np.finfo(dtype).tiny:.3g}; use dtype='float64' or a "
                "larger scale")
    return cast


def _check_representable(problem, dtype: np.dtype) -> None:
    """The problem's values fit the model's dtype (float32 holds up to 3.4e38)."""
    top = float(np.finfo(dtype).max)
    values = ({"A": problem.A, "y": problem.y} if isinstance(problem, Sensing)
              else {"targets": problem.targets})
    for name, x in values.items():
        big = float(np.abs(x).max(initial=0.0))
        if big > top:
            raise ValueError(f"{name}: {big:.3g} is not representable in {dtype}, whose "
                             f"largest number is {top:.3g}; use dtype='float64'")


def _host(x, name: str):
    """x on the host: a CuPy array is copied once; another device array (PyTorch, Numba)
    has no such copy, and is refused rather than failing inside the copy."""
    if is_device(x) and not hasattr(x, "get"):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got a device array of type "
                        f"{type(x).__name__}; pass cupy.asarray(x) (or a NumPy copy)")
    return to_host(x)


def _check_problem(problem):
    if not isinstance(problem, (Completion, Sensing)):
        raise TypeError("problem: expected implicitreg.completion(...) or "
                        f"implicitreg.sensing(...), got {type(problem).__name__}")
    return problem


class _Trained:
    """What both factorization models share: per-problem status, learning rates, tolerance.
    Subclasses hold their factors in self._factors, each with the batch axis first."""

    _factors: list[np.ndarray]
    _status: np.ndarray
    _frozen_at: np.ndarray

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock", None)  # a lock does not pickle; the copy makes its own
        return state

    @property
    def batch(self) -> int:
        return self._factors[0].shape[0]

    @property
    def dtype(self) -> np.dtype:
        return self._factors[0].dtype

    @property
    def status(self) -> np.ndarray:
        """(B,) "running" | "converged" | "diverged"."""
        return np.asarray(STATUS_NAMES, dtype=str)[to_host(self._status)]

    @property
    def frozen_at(self) -> np.ndarray:
        """(B,) step at which each problem was frozen, -1 while it runs (NumPy)."""
        return np.array(to_host(self._frozen_at))

    _v: np.ndarray
    _t: np.ndarray
    _m: list[np.ndarray] | None
    _s: list[np.ndarray] | None

    def _init_state(self, B: int, dtype) -> None:
        """Status, frozen_at and the optimizers' state of a fresh model."""
        xp = array_module(self.backend)
        self._status = xp.zeros(B, dtype=np.int8)
        self._frozen_at = xp.full(B, -1, dtype=np.int64)
        self._v = xp.zeros(B, dtype=dtype)  # group_rmsprop's running mean of ||g||^2
        self._t = xp.zeros(B, dtype=np.int64)  # updates made by group_rmsprop or adam
        self._m = self._s = None  # adam's moments, one per factor, made at its first update

    def _saves_optimizer(self) -> bool:
        """Whether save() and checkpoints keep the running mean and count."""
        return True

    def _state(self, whole: bool = False) -> dict[str, np.ndarray]:
        """The live arrays of the model's state (what save() and fit checkpoints keep, or
        whole: every array, kept or not; on the device for the cuda backend)."""
        state = {"status": self._status, "frozen_at": self._frozen_at,
                 **{f"factor{j}": W for j, W in enumerate(self._factors)}}
        if whole or self._saves_optimizer():
            state.update(v=self._v, t=self._t)
        for j, (m, v) in enumerate(zip(self._m or (), self._s or (), strict=True)):
            state.update({f"adam_m{j}": m, f"adam_s{j}": v})
        return state

    def _restore(self, arrays, meta: dict) -> None:
        """Load a saved state (arrays by _state()'s names) into this model; a state saved
        before it had optimizer state restores none."""
        self._m = self._s = None
        self._v[...] = 0
        self._t[...] = 0
        if "adam_m0" in arrays:
            self._moments()
        xp = array_module(self.backend)
        for k, v in self._state(whole=True).items():
            if k in arrays:
                v[...] = xp.asarray(arrays[k])
            elif k not in ("v", "t"):
                raise ValueError(f"the saved state has no {k!r}: not written by this model")
        self.steps_done = int(meta["steps_done"])

    # ------------------------------------------------------------------ optimizers

    def _moments(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """adam's moments (made at zero on first use)."""
        if self._m is None:
            xp = array_module(self.backend)
            self._m = [xp.zeros(W.shape, dtype=W.dtype) for W in self._factors]
            self._s = [xp.zeros(W.shape, dtype=W.dtype) for W in self._factors]
        return self._m, self._s

    def _state_owner(self) -> str | None:
        """The stateful optimizer whose updates the state holds (None: no update yet)."""
        if not bool((self._t != 0).any()):
            return None
        return "adam" if self._m is not None else "group_rmsprop"

    def reset_optimizer(self) -> None:
        """Forget the optimizers' state (running means, moments, update counts): the next
        group_rmsprop or adam update starts afresh, as on a new model."""
        self._v[...] = 0
        self._t[...] = 0
        self._m = self._s = None

    def _optimizer_settings(self, optimizer, beta, betas, eps) -> dict:
        """The checked optimizer settings {"optimizer", "beta", "betas", "eps"} (eps None: the
        optimizer's default), refused before any work."""
        name = choice(optimizer, "optimizer", tuple(OPTIMIZERS))
        beta = float(real_array(beta, "beta"))
        if not 0 <= beta < 1:
            raise ValueError(f"beta: expected a number in [0, 1), got {beta}")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected two numbers (beta1, beta2), got {betas!r}")
        betas = tuple(float(real_array(b, "betas")) for b in betas)
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas}")
        eps = _DEFAULT_EPS[name] if eps is None else float(real_array(eps, "eps"))
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps: expected a finite number >= 0, got {eps}")
        owner = self._state_owner() if name != "gd" else None
        if owner not in (None, name):
            raise ValueError(f"optimizer: this model's optimizer state holds {owner} updates, "
                             f"which {name} cannot continue; call reset_optimizer() first to "
                             f"start {name} afresh")
        return {"optimizer": name, "beta": beta, "betas": betas, "eps": eps}

    def _optimizer_arg(self, settings: dict) -> dict | None:
        """The optimizer argument of the kernels: None for gd, else its code, settings and
        state arrays (updated in place)."""
        name = settings["optimizer"]
        if name == "gd":
            return None
        arg = {"kind": OPTIMIZERS[name], "eps": settings["eps"], "t": self._t}
        if name == "group_rmsprop":
            self._m = self._s = None  # no adam update yet (the count is 0): nothing is lost
            return {**arg, "beta": settings["beta"], "v": self._v}
        m, v = self._moments()
        return {**arg, "beta1": settings["betas"][0], "beta2": settings["betas"][1], "m": m,
                "s": v}

    @staticmethod
    def _optimizer_meta(settings: dict) -> dict:
        """What a fit's record says of its optimizer (only what the optimizer reads)."""
        name = settings["optimizer"]
        if name == "gd":
            return {"optimizer": "gd"}
        if name == "group_rmsprop":
            return {"optimizer": name, "beta": settings["beta"], "eps": settings["eps"]}
        return {"optimizer": name, "betas": list(settings["betas"]), "eps": settings["eps"]}

    def _lr(self, lr) -> np.ndarray:
        a = real_array(lr, "lr")
        if a.ndim == 0:
            a = a.reshape(1)
        if a.ndim != 1 or a.shape[0] not in (1, self.batch):
            raise ValueError(f"lr: expected a number or shape ({self.batch},), got {a.shape}")
        with np.errstate(over="ignore"):  # a value too large for float32 becomes inf: refused
            a = np.ascontiguousarray(a, dtype=self.dtype)
        if not (np.isfinite(a).all() and (a > 0).all()):
            raise ValueError(f"lr: expected finite learning rates > 0 (in {self.dtype}), "
                             f"got {a if a.size <= 4 else 'some that are not'}")
        return a

    @staticmethod
    def _tol(tol) -> float:
        if tol is None:
            return -np.inf
        t = real_array(tol, "tol")
        if t.ndim != 0:
            raise TypeError(f"tol: expected a number or None, got an array of shape {t.shape}")
        t = float(t)
        if not (np.isfinite(t) and t > 0):
            raise ValueError(f"tol: expected a number > 0 or None, got {tol}")
        return t



class DeepFactorization(_Trained):
    """B deep matrix factorizations of one shape, trained together.

    factors: [W_1, ..., W_N], W_j of shape (B, d_j, d_{j-1}), d_0 = n, d_N = m, all float32 or
    all float64 (2-d factors are shared by every problem). The arrays are copied: the model
    owns its state and updates it in place.
    """

    def __init__(self, problem, factors, backend: str = "cpu", dtype=None):
        problem = _check_problem(problem)
        backend = _check_backend(backend)
        if not isinstance(factors, (list, tuple)) or len(factors) == 0:
            raise TypeError("factors: expected a non-empty list [W_1, ..., W_N], "
                            f"got {type(factors).__name__}")
        # Validated on the host (a device array is copied once), then placed on the backend.
        arrays = [real_array(_host(W, f"factors[{j}]"), f"factors[{j}]")
                  for j, W in enumerate(factors)]
        dtype = _factor_dtype(arrays, dtype)
        _check_representable(problem, dtype)
        B, (m, n) = problem.batch, problem.shape
        prev = n
        for j, a in enumerate(arrays):
            if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[0] != B):
                raise ValueError(f"factors[{j}]: expected shape ({B}, d_{j + 1}, d_{j}) or "
                                 f"(d_{j + 1}, d_{j}) for a batch of {B}, got {a.shape}")
            if a.shape[-1] != prev:
                raise ValueError(f"factors[{j}]: expected {prev} columns to chain with "
                                 f"{'the problem' if j == 0 else f'factors[{j - 1}]'}, "
                                 f"got shape {a.shape}")
            prev = a.shape[-2]
        if prev != m:
            raise ValueError(f"factors[{len(arrays) - 1}]: expected {m} rows (the problem is "
                             f"{m} x {n}), got shape {arrays[-1].shape}")
        arrays = _in_dtype(arrays, dtype)
        size = sum(a.shape[-1] * a.shape[-2] for a in arrays)
        batch_memory(size * dtype.itemsize + _STATE_BYTES, B, "factors",
                     "the model's factors", device=backend == "cuda")
        self.problem = problem
        self.backend = backend
        xp = array_module(backend)
        self._factors = [xp.array(np.broadcast_to(a, (B,) + a.shape[-2:]), dtype=dtype,
                                  order="C") for a in arrays]
        self._init_state(B, dtype)
        self.steps_done = 0

    def _saves_optimizer(self) -> bool:
        # a model trained by gradient descent alone saves what it always did
        return self._m is not None or bool((self._t != 0).any())

    @classmethod
    def init(cls, problem, depth: int = 3, widths=None, init: str = "normal",
             scale: float = 1e-3, scale_by: str = "product", det=None, seed: int = 0,
             dtype="float64", backend: str = "cpu") -> DeepFactorization:
        """Draw starting factors (see implicitreg.init); problem b's start depends only on
        (seed, b)."""
        problem = _check_problem(problem)
        dtype = float_dtype(dtype, "dtype")
        _check_backend(backend)
        dims = layer_dims(problem.shape, depth, widths)
        size = sum(dims[j] * dims[j - 1] for j in range(1, len(dims)))
        # drawn in float64 (one generator per problem), then copied into the model's dtype
        batch_memory(size * (8 + dtype.itemsize) + _STATE_BYTES
                     + (_GENERATOR_BYTES if init != "identity" else 0), problem.batch,
                     "problem", "drawing the starting factors")
        factors = init_factors(problem.shape, problem.batch, depth, widths, init, scale,
                               scale_by, det, seed)
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
    def step(self, lr, steps: int = 1, tol=None, crossings: Crossings | None = None,
             optimizer: str = "gd", beta: float = 0.99, eps: float | None = None,
             betas=(0.9, 0.999)) -> DeepFactorization:
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
            self._check_crossings(crossings)
        opt = self._optimizer_arg(self._optimizer_settings(optimizer, beta, betas, eps))
        # Calls of bounded work (about a second), so that Ctrl-C is honoured between them and
        # leaves a consistent state. Cutting changes no result: each call ends with the same
        # tolerance check the next one would start with.
        chunk = max(1, _WORK_PER_CALL[self.backend]
                    // max(1, self.batch * self._flops_per_step()))
        lr_arr = array_module(self.backend).asarray(lr_arr)
        done = 0
        while True:
            n = min(chunk, steps - done)
            with deferred_interrupt():  # the call and its count, or neither
                if crossings is None:
                    ops.dmf_step(self._factors, self.problem, lr_arr, n, tol_v, self.steps_done,
                                 self._status, self._frozen_at, opt, backend=self.backend)
                else:
                    ops.dmf_step(self._factors, self.problem, lr_arr, n, tol_v, self.steps_done,
                                 self._status, self._frozen_at, opt, crossings.thresholds,
                                 crossings.step, crossings.factors, backend=self.backend)
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
        return 6 * sum(d[j] * d[j - 1] * d[0] for j in range(2, len(d))) + 4 * sum(
            d[j] * d[j - 1] for j in range(1, len(d))) + 4 * d[0] * d[-1]

    def _metric_specs(self, metrics) -> tuple[list[str], np.ndarray, np.ndarray, list[int]]:
        """(names, kinds, params, rows per name), checked before any work."""
        if isinstance(metrics, str):
            metrics = (metrics,)
        if not isinstance(metrics, (list, tuple)):
            raise TypeError(f"metrics: expected a list of metric names, got "
                            f"{type(metrics).__name__}")
        names = list(dict.fromkeys(metrics))
        specs = [metrics_mod.parse(name, self.problem.shape, self.dtype) for name in names]
        if "recon_error" in names and self.problem.truth is None:
            raise ValueError("metrics: 'recon_error' needs a problem with a known ground truth "
                             "(truth=...), and this one has none")
        kinds = np.array([sp[0] for sp in specs], dtype=np.int32)
        params = np.array([sp[1:3] for sp in specs], dtype=np.float64).reshape(-1, 2)
        return names, kinds, params, [sp[3] for sp in specs]

    @serialized
    def measure(self, metrics=("loss",)) -> dict[str, np.ndarray]:
        """The named metrics (see fit) of the current state, float64: (B,) each, (B, k) for
        "svals". All come from one call: one product and one SVD per problem."""
        names, kinds, params, rows = self._metric_specs(metrics)
        out = np.empty((sum(rows), self.batch))
        ops.dmf_measure(self._factors, self.problem, kinds, params, out, self.backend)
        return {k: v[0] for k, v in _split_rows(out[None], names, rows).items()}

    def crossings(self, thresholds) -> Crossings:
        """Empty records of first crossings of the loss thresholds, for step()."""
        t = _thresholds(thresholds)
        size = sum(W.shape[1] * W.shape[2] for W in self._factors)
        batch_memory(t.size * (size * self.dtype.itemsize + 8), self.batch, "thresholds",
                     "recording the crossings")
        with np.errstate(over="ignore"):
            if not np.isfinite(t.astype(self.dtype)).all():
                raise ValueError(f"thresholds: expected values representable in {self.dtype}, "
                                 f"got {t.tolist()}")
        return Crossings(t, self.batch, self.dims, self.dtype, array_module(self.backend))

    def _check_crossings(self, c) -> None:
        """A Crossings made for this model (by self.crossings), or TypeError/ValueError."""
        if not isinstance(c, Crossings):
            raise TypeError(f"crossings: expected model.crossings(thresholds), got "
                            f"{type(c).__name__}")
        k = c.thresholds.size
        dims = self.dims
        want = [(self.batch, k, dims[j], dims[j - 1]) for j in range(1, len(dims))]
        if (c.step.shape != (self.batch, k) or [S.shape for S in c.factors] != want
                or any(S.dtype != self.dtype for S in c.factors)
                or c.thresholds.dtype != self.dtype):
            raise ValueError(f"crossings: made for another model (batch, dims or dtype differ "
                             f"from {self.batch}, {dims}, {self.dtype}); use model.crossings()")

    @serialized
    def fit(self, lr, max_steps: int, tol=None, log=None, metrics=("loss",), thresholds=(),
            progress=True, checkpoint=None, checkpoint_every: float = 300.0,
            keep_checkpoint: bool = False, optimizer: str = "gd", beta: float = 0.99,
            eps: float | None = None, betas=(0.9, 0.999)) -> Trajectory:
        """Train for up to max_steps more steps, in chunks between log points, and return the
        logged Trajectory. Stops early when every problem is frozen.

        log: implicitreg.every(k) or implicitreg.geometric(n) (default: about 1000 rows).
        metrics (float64, computed in the core on the whole batch, one SVD per problem):
          "loss", "entry:i,j" (of the end-to-end matrix E), "det" (of E, from the factors),
          "svals" (k = min(m, n) values per problem), "fro", "nuc", "spectral",
          "schatten:p" (any p > 0), "erank", "rank" (tolerance sigma_1 max(m, n) eps),
          "dist_rank:r" (distance to rank <= r), "balancedness" (see implicitreg.metrics),
          "recon_error" (||E - truth||_F / ||truth||_F, for problems with a known truth).
        thresholds: loss values (e.g. 1e-1, 1e-2, 1e-3, 1e-4); every metric is also taken at
          each problem's first iterate with loss below each of them, found inside the core's
          step loop, so exact to the step however sparse the log (Trajectory.crossings).
        progress: True for a tqdm bar (extra "progress"), False, or a callable given the
          number of steps advanced.
        checkpoint: a path. The state of the fit (model, rows logged, crossings) is written
          there atomically at log points, at most every checkpoint_every seconds; a fit
          called with the same arguments on a model in the same starting state resumes from
          it and returns what an uninterrupted fit would have. A completed fit removes it,
          unless keep_checkpoint (then it is marked done, and the same call returns at once).
        optimizer, beta, eps, betas: as for step().
        """
        lr_arr = self._lr(lr)
        max_steps = integer(max_steps, "max_steps", minimum=0)
        tol_v = self._tol(tol)
        settings = self._optimizer_settings(optimizer, beta, betas, eps)
        names, kinds, params, metric_rows = self._metric_specs(metrics)
        log = schedule(log, max_steps)
        k = _thresholds(thresholds).size
        # crossings: the factors at each threshold, and their metrics measured at the end
        cross_bytes = self.batch * k * (sum(W.shape[1] * W.shape[2] for W in self._factors)
                                        * self.dtype.itemsize + 8 * (sum(metric_rows) + 1))
        _check_log_memory(log.rows(max_steps), self.batch, sum(metric_rows), log, cross_bytes)
        cross = self.crossings(thresholds)
        checkpoint_every = _checkpoint_every(checkpoint_every)
        if not isinstance(keep_checkpoint, bool):
            raise TypeError(f"keep_checkpoint: expected True or False, got {keep_checkpoint!r}")
        _check_progress(progress)
        points = log.points(max_steps)
        # Every row goes straight from the core into this buffer (pages are touched only as
        # rows are written), so logging costs no copy.
        buf = np.empty((len(points), sum(metric_rows), self.batch))
        meta = {"lr": lr_arr.tolist() if lr_arr.size > 1 else float(lr_arr[0]),
                "max_steps": max_steps, "tol": None if tol is None else tol_v,
                "log": repr(log), "metrics": names, "thresholds": cross.thresholds_f64.tolist(),
                "backend": self.backend, "dtype": str(self.dtype), "dims": self.dims,
                "problem": repr(self.problem)}
        if settings["optimizer"] != "gd":  # a gd fit's record (and checkpoint) is as it was
            meta.update(self._optimizer_meta(settings))
        saver = None if checkpoint is None else _FitCheckpoint(checkpoint, self, meta, lr_arr)
        rows: list[int] = []
        start, done = self.steps_done, False
        if saver is not None and os.path.exists(saver.path):
            start, done, rows, saved = saver.restore(self)
            buf[:len(rows)] = saved["buf"]
            xp = array_module(self.backend)
            cross.step[...] = xp.asarray(saved["crossed_at"])
            for j, S in enumerate(cross.factors):
                S[...] = xp.asarray(saved[f"cross{j}"])
        advance, close = _progress(progress, max_steps)
        advance(rows[-1] - start if rows else 0)
        last_save = time.monotonic()
        try:
            for p in points[len(rows):] if not done else ():
                before = self.steps_done
                self.step(lr_arr, int(start + p - self.steps_done), tol, cross,
                          settings["optimizer"], beta, settings["eps"], settings["betas"])
                advance(self.steps_done - before)
                ops.dmf_measure(self._factors, self.problem, kinds, params, buf[len(rows)],
                                self.backend)
                rows.append(self.steps_done)
                if bool((self._status != 0).all()):
                    break
                if saver is not None and time.monotonic() - last_save >= checkpoint_every:
                    saver.save(self, start, rows, _dmf_progress(rows, buf, cross), done=False)
                    last_save = time.monotonic()
            if saver is not None and not done:
                saver.save(self, start, rows, _dmf_progress(rows, buf, cross), done=True)
        finally:
            close()
        data = _split_rows(buf[:len(rows)], names, metric_rows)
        status = np.where(to_host(self._status) == 0, "max_steps", self.status)
        t = Trajectory(rows, data, status, self.frozen_at, meta,
                       crossings=self._measure_crossings(cross, names, kinds, params,
                                                         metric_rows))
        if saver is not None:
            saver.close(keep_checkpoint)
        return t

    def _measure_crossings(self, cross: Crossings, names, kinds, params, metric_rows):
        """{"thresholds": (k,), "step": (k, B), name: (k, B, ...)}: every metric at each
        recorded crossing (NaN where a problem never crossed), or None without thresholds."""
        k, B = cross.thresholds.size, self.batch
        if k == 0:
            return None
        flat = [S.reshape((B * k,) + S.shape[2:]) for S in cross.factors]
        out = np.empty((sum(metric_rows), B * k))
        ops.dmf_measure(flat, self.problem.repeat_each(k), kinds, params, out, self.backend)
        per = np.moveaxis(out.reshape(sum(metric_rows), B, k), 2, 0)  # (k, rows, B)
        data = _split_rows(per, names, metric_rows)
        step = to_host(cross.step)
        hit = (step >= 0).T  # (k, B)
        for name, v in data.items():
            data[name] = np.where(hit.reshape(hit.shape + (1,) * (v.ndim - 2)), v, np.nan)
        return {"thresholds": cross.thresholds_f64.copy(), "step": step.T.copy(), **data}

    # ------------------------------------------------------------------ checkpoints

    @serialized
    def save(self, path) -> None:
        """Write the whole state (problem, factors, status, step count) to an .npz file,
        atomically, so that a long run can be resumed with DeepFactorization.load."""
        pb = self.problem
        arrays = ({"targets": pb.targets, "masks": pb.masks} if pb.kind == "completion"
                  else {"A": pb.A, "y": pb.y})
        if pb.truth is not None:
            arrays["truth"] = pb.truth
        meta = {"kind": pb.kind, "batch": pb.batch, "depth": self.depth,
                "steps_done": self.steps_done, "backend": self.backend}
        save_npz(path, _CHECKPOINT, meta,
                 {**_host_state(self), **arrays})

    @classmethod
    def load(cls, path, backend: str | None = None) -> DeepFactorization:
        """Resume a model written by save() (on its backend unless another is given)."""
        meta, z = load_npz(path, _CHECKPOINT, "a DeepFactorization checkpoint")
        truth = z.get("truth")
        if meta["kind"] == "completion":
            problem = completion(z["targets"], z["masks"], batch=meta["batch"], truth=truth)
        else:
            problem = sensing(z["A"], z["y"], batch=meta["batch"], truth=truth)
        f = cls(problem, [z[f"factor{j}"] for j in range(meta["depth"])],
                backend=backend or meta["backend"])
        f._restore(z, meta)
        return f

    def __repr__(self) -> str:
        return (f"DeepFactorization(batch={self.batch}, dims={self.dims}, dtype={self.dtype}, "
                f"backend={self.backend!r}, steps_done={self.steps_done})")


CP_METRICS = ("loss", "recon_error", "norm", "component_norms")
_CP_CHECKPOINT = "implicitreg.CPFactorization/1"


class CPFactorization(_Trained):
    """B CP tensor factorizations of one shape, trained together:
    W = sum_r u_r^1 x ... x u_r^N, factors [U_1, ..., U_N] with U_n of shape (B, d_n, R)
    (column r of U_n is u_r^n). The arrays are copied: the model owns its state.
    Loss: mean squared error over the observed entries, per problem.
    """

    def __init__(self, problem, factors, backend: str = "cpu", dtype=None):
        if not isinstance(problem, TensorCompletion):
            raise TypeError("problem: expected implicitreg.tensor_completion(...), got "
                            f"{type(problem).__name__}")
        backend = _check_backend(backend)
        if not isinstance(factors, (list, tuple)) or len(factors) != problem.order:
            raise TypeError(f"factors: expected a list of {problem.order} arrays (B, d_n, R), "
                            f"got {type(factors).__name__} of length "
                            f"{len(factors) if hasattr(factors, '__len__') else '?'}")
        # Validated on the host (a device array is copied once), then placed on the backend.
        arrays = [real_array(_host(U, f"factors[{n}]"), f"factors[{n}]")
                  for n, U in enumerate(factors)]
        dtype = _factor_dtype(arrays, dtype)
        _check_representable(problem, dtype)
        B, R = problem.batch, arrays[0].shape[-1] if arrays[0].ndim in (2, 3) else -1
        for n, (a, d) in enumerate(zip(arrays, problem.dims, strict=True)):
            if a.ndim not in (2, 3) or a.shape[-2:] != (d, R) or (a.ndim == 3 and a.shape[0] != B):
                raise ValueError(f"factors[{n}]: expected shape ({B}, {d}, R) or ({d}, R) with "
                                 f"one R for every factor, got {a.shape}")
        arrays = _in_dtype(arrays, dtype)
        if not 1 <= R <= LIMITS["max_cp_rank"]:
            raise ValueError(f"factors: expected 1 to {LIMITS['max_cp_rank']} components R, "
                             f"got {R}")
        # the factors, the state and the last losses
        batch_memory(sum(problem.dims) * R * dtype.itemsize + _STATE_BYTES + dtype.itemsize, B,
                     "factors", "the model's factors", device=backend == "cuda")
        self.problem = problem
        self.backend = backend
        xp = array_module(backend)
        self._factors = [xp.array(np.broadcast_to(a, (B,) + a.shape[-2:]), dtype=dtype,
                                  order="C") for a in arrays]
        self._init_state(B, dtype)
        self._step_loss = xp.empty(B, dtype=dtype)  # the last step() call's final losses
        self.steps_done = 0

    @classmethod
    def init(cls, problem, rank: int | None = None, scale: float = 1e-3, seed: int = 0,
             dtype="float64", backend: str = "cpu") -> CPFactorization:
        """Factors with i.i.d. N(0, scale^2) entries (the paper's init_std); rank R
        defaults to the largest CP rank prod(d) / max(d) (64 for 8x8x8, 512 for 8x8x8x8), so
        that nothing constrains the rank. Problem b's start depends only on (seed, b)."""
        if not isinstance(problem, TensorCompletion):
            raise TypeError("problem: expected implicitreg.tensor_completion(...), got "
                            f"{type(problem).__name__}")
        dims = problem.dims
        R = int(np.prod(dims)) // max(dims) if rank is None else integer(rank, "rank", minimum=1)
        if R > LIMITS["max_cp_rank"]:
            raise ValueError(f"rank: expected at most {LIMITS['max_cp_rank']} components, "
                             f"got {R}")
        scale = positive(scale, "scale")
        seed = _rng.check_seed(seed)
        dtype = float_dtype(dtype, "dtype")
        _check_backend(backend)
        batch_memory(sum(dims) * R * (8 + dtype.itemsize) + _STATE_BYTES + dtype.itemsize,
                     problem.batch, "problem", "drawing the starting factors")
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
    def step(self, lr, steps: int = 1, tol=None, optimizer: str = "group_rmsprop",
             beta: float = 0.99, eps: float | None = None, betas=(0.9, 0.999)
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
        chunk = max(1, _WORK_PER_CALL[self.backend] // 4 // per_step)
        done = 0
        while True:
            n = min(chunk, steps - done)
            with deferred_interrupt():  # the call and its count, or neither
                ops.cp_step(self._factors, self.problem, lr_arr, n, tol_v, self.steps_done,
                            self._status, self._frozen_at, loss, opt, backend=self.backend)
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
            raise TypeError(f"metrics: expected a list of metric names, got "
                            f"{type(metrics).__name__}")
        for name in metrics:
            if name not in CP_METRICS:
                raise ValueError(f"metrics: unknown metric {name!r}; known: "
                                 f"{', '.join(CP_METRICS)}")
        return list(dict.fromkeys(metrics))

    @serialized
    def measure(self, metrics=("loss", "recon_error")) -> dict[str, np.ndarray]:
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
            for U in self._factors:
                norms *= xp.linalg.norm(U.astype(np.float64), axis=1)
            out["component_norms"] = norms
        return {k: to_host(out[k]) for k in names}

    @serialized
    def fit(self, lr, max_steps: int, tol=None, log=None, metrics=("loss", "recon_error"),
            optimizer: str = "group_rmsprop", beta: float = 0.99, eps: float | None = None,
            patience: int | None = None, check_every: int = 100,
            progress=True, checkpoint=None, checkpoint_every: float = 300.0,
            keep_checkpoint: bool = False, betas=(0.9, 0.999)) -> Trajectory:
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
        self._lr(lr)
        max_steps = integer(max_steps, "max_steps", minimum=0)
        self._tol(tol)
        if patience is not None:
            patience = integer(patience, "patience", minimum=0)
            check_every = integer(check_every, "check_every", minimum=1)
            if tol is None:
                raise ValueError("patience: needs a tol to count the checks below it")
        settings = self._optimizer_settings(optimizer, beta, betas, eps)
        names = self._metric_names(metrics)
        log = schedule(log, max_steps)
        widths = [self.rank if n == "component_norms" else 1 for n in names]
        _check_log_memory(log.rows(max_steps), self.batch, sum(widths), log)
        if set(names) - {"component_norms"}:  # measure(): the tensors and two temporaries
            batch_memory(3 * 8 * int(np.prod(self.dims)), self.batch, "metrics",
                         "measuring the tensors")
        _check_progress(progress)
        checkpoint_every = _checkpoint_every(checkpoint_every)
        if not isinstance(keep_checkpoint, bool):
            raise TypeError(f"keep_checkpoint: expected True or False, got {keep_checkpoint!r}")
        points = log.points(max_steps)
        checks = (np.arange(0, max_steps + 1, check_every) if patience is not None
                  else np.zeros(0, dtype=np.int64))
        lr_arr = self._lr(lr)
        meta = {"model": "cp", "lr": lr_arr.tolist() if lr_arr.size > 1 else float(lr_arr[0]),
                "max_steps": max_steps, "tol": None if tol is None else self._tol(tol),
                "log": repr(log), "metrics": names, **self._optimizer_meta(settings),
                "patience": patience,
                "check_every": check_every if patience is not None else None,
                "backend": self.backend, "dtype": str(self.dtype),
                "dims": list(self.dims), "rank": self.rank, "problem": repr(self.problem)}
        saver = None if checkpoint is None else _FitCheckpoint(checkpoint, self, meta, lr_arr)
        rows: list[int] = []
        data: dict[str, list[np.ndarray]] = {n: [] for n in names}
        start, done = self.steps_done, False
        below = np.zeros(self.batch, dtype=np.int64)  # consecutive checks below tol
        if saver is not None and os.path.exists(saver.path):
            start, done, rows, saved = saver.restore(self)
            for k in names:
                data[k] = list(saved[f"data/{k}"])
            below[:] = saved["below"]
        core_tol = None if patience is not None else tol
        logged = set(points.tolist())
        advance, close = _progress(progress, max_steps)
        advance(rows[-1] - start if rows else 0)
        last_save = time.monotonic()

        def progress_arrays():
            return {"below": below, **{f"data/{k}": np.array(v).reshape(
                (len(rows), self.batch) + (() if k != "component_norms" else (self.rank,)))
                for k, v in data.items()}}
        try:
            todo = np.union1d(points, checks)
            for p in todo[todo > (rows[-1] - start if rows else -1)] if not done else ():
                before = self.steps_done
                self.step(lr, int(start + p - self.steps_done), core_tol, optimizer, beta,
                          settings["eps"], settings["betas"])
                advance(self.steps_done - before)
                if patience is not None and p % check_every == 0:
                    run = to_host(self._status) == 0
                    # the core's loss of this very iterate: no tensor to rebuild per check
                    below = np.where(run & (to_host(self._step_loss) < tol), below + 1, 0)
                    stop = run & (below > patience)
                    if stop.any():
                        xp = array_module(self.backend)
                        self._status[xp.asarray(stop)] = 1  # converged
                        self._frozen_at[xp.asarray(stop)] = self.steps_done
                if p in logged or (self._status != 0).all():
                    for k, v in self.measure(names).items():
                        data[k].append(v)
                    rows.append(self.steps_done)
                    if saver is not None and time.monotonic() - last_save >= checkpoint_every:
                        saver.save(self, start, rows, progress_arrays(), done=False)
                        last_save = time.monotonic()
                if (self._status != 0).all():
                    break
            if saver is not None and not done:
                saver.save(self, start, rows, progress_arrays(), done=True)
        finally:
            close()
        status = np.where(to_host(self._status) == 0, "max_steps", self.status)
        t = Trajectory(rows, {k: np.array(v) for k, v in data.items()}, status,
                       self.frozen_at, meta)
        if saver is not None:
            saver.close(keep_checkpoint)
        return t

    @serialized
    def save(self, path) -> None:
        """Write the whole state (problem, factors, optimizer state, status, step count) to an
        .npz file atomically; CPFactorization.load resumes it bit for bit."""
        pb = self.problem
        arrays = {"targets": pb.targets, "masks": pb.masks, **_host_state(self)}
        save_npz(path, _CP_CHECKPOINT, {"batch": pb.batch, "order": self.order,
                                        "steps_done": self.steps_done,
                                        "backend": self.backend}, arrays)

    @classmethod
    def load(cls, path, backend: str | None = None) -> CPFactorization:
        meta, z = load_npz(path, _CP_CHECKPOINT, "a CPFactorization checkpoint")
        problem = TensorCompletion(z["targets"], z["masks"], meta["batch"])
        c = cls(problem, [z[f"factor{n}"] for n in range(meta["order"])],
                backend=backend or meta["backend"])
        c._restore(z, meta)
        return c

    def __repr__(self) -> str:
        return (f"CPFactorization(batch={self.batch}, dims={self.dims}, rank={self.rank}, "
                f"dtype={self.dtype}, backend={self.backend!r}, steps_done={self.steps_done})")


def _cp_tensor(factors, backend: str):
    """(B, numel) tensors of CP factors; an empty batch never reaches a kernel (the numpy
    reference cannot reshape one)."""
    if factors[0].shape[0] == 0:
        numel = math.prod(U.shape[1] for U in factors)
        return array_module(backend).zeros((0, numel), dtype=factors[0].dtype)
    return ops.cp_tensor(factors, backend)


def memorizer(problem) -> np.ndarray:
    """The "linear" baseline: observed entries copied, all others 0
    (B, d_1, ..., d_N) — what gradient descent on the tensor itself from zero converges to."""
    if not isinstance(problem, TensorCompletion):
        raise TypeError("problem: expected implicitreg.tensor_completion(...), got "
                        f"{type(problem).__name__}")
    shape = (problem.batch,) + problem.dims
    return np.where(np.broadcast_to(problem.masks, shape),
                    np.broadcast_to(problem.targets, shape), 0.0)


def _host_state(model) -> dict[str, np.ndarray]:
    """The model's state arrays on the host (copied from the device for the cuda backend)."""
    return {k: to_host(v) for k, v in model._state().items()}


def _dmf_progress(rows, buf, cross) -> dict:
    """What a DeepFactorization fit has computed so far: its rows and crossings."""
    return {"buf": buf[:len(rows)], "crossed_at": cross.step,
            **{f"cross{j}": S for j, S in enumerate(cross.factors)}}


def _split_rows(buf: np.ndarray, names: list[str], rows: list[int]) -> dict:
    """{name: (T, B) view, or (T, B, k) for svals} of a (T, rows, B) measurement buffer."""
    out, at = {}, 0
    for name, r in zip(names, rows, strict=True):
        out[name] = buf[:, at] if name != "svals" else np.swapaxes(buf[:, at:at + r], 1, 2)
        at += r
    return out


def _check_log_memory(rows: int, batch: int, n_metrics: int, log, cross_bytes: int = 0) -> None:
    """Refuse, before any work, a log (and crossings record) that would not fit in half of
    this machine's memory."""
    need = rows * batch * n_metrics * 8
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need <= total // 2 < need + cross_bytes:
        raise ValueError(f"thresholds: recording the crossings of {batch} problems needs "
                         f"{cross_bytes / 2**30:.1f} GiB beside the log's "
                         f"{need / 2**30:.1f} GiB, more than half of this machine's "
                         f"{total / 2**30:.1f} GiB; pass fewer thresholds or a smaller batch")
    if need > total // 2:
        fit_rows = max(1, (total // 2) // max(1, batch * n_metrics * 8))
        raise ValueError(f"log: {rows} rows x {batch} problems x {n_metrics} metrics need "
                         f"{need / 2**30:.1f} GiB, more than half of this machine's "
                         f"{total / 2**30:.1f} GiB; log at most {fit_rows} rows "
                         f"(got {log!r})")


def _progress(progress, total: int):
    """(advance(n_steps), close()) for a tqdm bar when progress is True and tqdm is installed
    (extra "progress"), for a user callable, or doing nothing."""
    _check_progress(progress)
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


def _checkpoint_every(seconds) -> float:
    """checkpoint_every as seconds >= 0 (0: at every log point)."""
    seconds = float(real_array(seconds, "checkpoint_every"))
    if not seconds >= 0:
        raise ValueError(f"checkpoint_every: expected seconds >= 0, got {seconds}")
    return seconds


def _check_progress(progress) -> None:
    if not (progress is True or progress is False or callable(progress)):
        raise TypeError(f"progress: expected True, False or a callable, got {progress!r}")


def _thresholds(thresholds) -> np.ndarray:
    """Loss thresholds as a strictly decreasing float64 array of finite values > 0."""
    t = real_array(thresholds if thresholds is not None else (), "thresholds")
    t = t.astype(np.float64).reshape(-1) if t.ndim <= 1 else t
    if t.ndim != 1:
        raise ValueError(f"thresholds: expected a list of numbers, got shape {t.shape}")
    if not (np.isfinite(t).all() and (t > 0).all() and (np.diff(t) < 0).all()):
        raise ValueError(f"thresholds: expected finite values > 0 in strictly decreasing "
                         f"order (e.g. 1e-1, 1e-2, 1e-3, 1e-4), got {t.tolist()}")
    return t


class Crossings:
    """First crossings of loss thresholds, filled by the core during step():
    step (B, k) int64 (-1 until crossed) and factors [(B, k, d_j, d_{j-1})] at that iterate."""

    def __init__(self, thresholds: np.ndarray, batch: int, dims: list[int], dtype, xp=np):
        k = thresholds.size
        self.thresholds_f64 = thresholds
        # compared in the factors' precision; the records live where the factors do (xp)
        self.thresholds = xp.asarray(thresholds.astype(dtype))
        self.step = xp.full((batch, k), -1, dtype=np.int64)
        self.factors = [xp.zeros((batch, k, dims[j], dims[j - 1]), dtype=dtype)
                        for j in range(1, len(dims))]


class _FitCheckpoint:
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
        arrays = {"rows": np.asarray(rows, dtype=np.int64),
                  **{f"state/{k}": v for k, v in _host_state(model).items()},
                  **{f"progress/{k}": to_host(v) for k, v in progress.items()}}
        save_npz(self.path, self.FORMAT, {"key": self.key, "start": start, "done": done,
                                          "steps_done": model.steps_done}, arrays)

    def close(self, keep: bool) -> None:
        """The fit has returned its result: its checkpoint (marked done, so that the same call
        returns the same result at once) is removed unless kept. Only then: a Ctrl-C before
        the result is made still finds it."""
        if not keep and os.path.exists(self.path):
            os.remove(self.path)

    def restore(self, model) -> tuple[int, bool, list[int], dict]:
        """(start, done, rows, progress arrays), the model's state restored."""
        meta, z = load_npz(self.path, self.FORMAT, "a fit() checkpoint")
        if json.dumps(meta["key"], sort_keys=True) != json.dumps(self.key, sort_keys=True):
            raise ValueError(f"checkpoint: {self.path} was written by another fit (other "
                             "arguments or another starting state); delete it or pass another "
                             "path")
        model._restore({k[len("state/"):]: v for k, v in z.items() if k.startswith("state/")},
                       meta)
        progress = {k[len("progress/"):]: v for k, v in z.items() if k.startswith("progress/")}
        return (int(meta["start"]), bool(meta["done"]), [int(r) for r in z["rows"]],
                progress)


def _state_digest(model) -> str:
    """A digest of the model's whole state and problem (what a resumed fit must start from)."""
    h = hashlib.sha256()
    pb = model.problem.arrays(model.dtype)
    for a in [*_host_state(model).values(), *(v for v in pb.values() if v is not None)]:
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(str(model.steps_done).encode())
    return h.hexdigest()
