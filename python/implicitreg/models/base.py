"""What both factorization models share: the checks of their arguments, per-problem status,
learning rates and tolerance, the optimizers' state and settings, and saving that state."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from .._backend import array_module, backends, to_host
from .._checks import batch_memory, choice, finite, float_dtype, real_array
from .._codes import OPTIMIZERS, STATUS_NAMES
from ..problems import Completion, Sensing

# Flops per kernel call in step(): about a second on one core, or on one GPU (where each call
# ends with the host reading the status, so calls are made long).
WORK_PER_CALL = {"cpu": 3 * 10**10, "numpy": 3 * 10**10, "cuda": 3 * 10**12}
# per problem: status (int8), frozen_at (int64), the optimizers' running mean and count
STATE_BYTES = 1 + 8 + 8 + 8
# eps when none is given, per optimizer (group_rmsprop: the paper's; adam: PyTorch's)
_DEFAULT_EPS = {"gd": 0.0, "group_rmsprop": 1e-6, "adam": 1e-8}
GENERATOR_BYTES = 1200  # a numpy Generator held per problem while drawing a start


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
        raise TypeError(
            f"factors: expected one dtype for every factor, got "
            f"{sorted(str(k) for k in kinds)}; pass dtype= to convert"
        )
    return float_dtype(arrays[0].dtype, "factors")


def _in_dtype(
    arrays: list[np.ndarray], dtype: np.dtype, scale: float | None = None
) -> list[np.ndarray]:
    """The factors in the model's dtype, refused when a value does not survive the cast: too
    large (a float64 1e300 is inf in float32) or too small (a nonzero entry that becomes 0:
    a factor of zeros never moves). scale: the init's, which drew them; the error names it."""
    with np.errstate(over="ignore", under="ignore"):
        cast = [a.astype(dtype, copy=False) for a in arrays]
    for j, (a, c) in enumerate(zip(arrays, cast, strict=True)):
        name = (
            f"factors[{j}]" if scale is None else f"scale: factors[{j}] drawn with scale={scale:g}"
        )
        finite(c, name)
        lost = (a != 0) & (c == 0)
        if lost.any():
            raise ValueError(
                f"{name}: {int(lost.sum())} nonzero entries (down to "
                f"{np.abs(a[lost]).min():.3g}) underflow to 0 in {dtype}, whose smallest "
                f"normal number is {np.finfo(dtype).tiny:.3g}; use dtype='float64' or a "
                "larger scale"
            )
    return cast


def _check_representable(problem, dtype: np.dtype) -> None:
    """The problem's values fit the model's dtype (float32 holds up to 3.4e38)."""
    top = float(np.finfo(dtype).max)
    values = (
        {"A": problem.A, "y": problem.y}
        if isinstance(problem, Sensing)
        else {"targets": problem.targets}
    )
    for name, x in values.items():
        big = float(np.abs(x).max(initial=0.0))
        if big > top:
            raise ValueError(
                f"{name}: {big:.3g} is not representable in {dtype}, whose "
                f"largest number is {top:.3g}; use dtype='float64'"
            )


def _check_problem(problem):
    if not isinstance(problem, (Completion, Sensing)):
        raise TypeError(
            "problem: expected implicitreg.completion(...) or "
            f"implicitreg.sensing(...), got {type(problem).__name__}"
        )
    return problem


class Trained:
    """What both factorization models share: per-problem status, learning rates, tolerance,
    the optimizers' state. Subclasses hold their factors in self._factors, each with the batch
    axis first."""

    backend: str
    problem: Any
    steps_done: int
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

    def _own(self, problem, arrays: list[np.ndarray], backend: str, extra_bytes: int = 0) -> None:
        """Take `problem` and copies of the checked factors (each (B, ...) or shared, in the
        model's dtype) on `backend`, with a fresh state; refused first where a batch of them
        (and extra_bytes more per problem) would not fit in memory."""
        B, dtype = problem.batch, arrays[0].dtype
        size = sum(a.shape[-2] * a.shape[-1] for a in arrays)
        batch_memory(
            size * dtype.itemsize + STATE_BYTES + extra_bytes,
            B,
            "factors",
            "the model's factors",
            device=backend == "cuda",
        )
        self.problem = problem
        self.backend = backend
        xp = array_module(backend)
        self._factors = [
            xp.array(np.broadcast_to(a, (B,) + a.shape[-2:]), dtype=dtype, order="C")
            for a in arrays
        ]
        self._init_state(B, dtype)
        self.steps_done = 0

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

    def _all_frozen(self) -> bool:
        """Whether every problem is frozen (the host reads the status: on the cuda backend,
        where a device fault surfaces)."""
        return bool((self._status != 0).all())

    def _host_state(self) -> dict[str, np.ndarray]:
        """The state arrays on the host (copied from the device for the cuda backend)."""
        return {k: to_host(v) for k, v in self._state().items()}

    def _state(self, whole: bool = False) -> dict[str, np.ndarray]:
        """The live arrays of the model's state (what save() and fit checkpoints keep, or
        whole: every array, kept or not; on the device for the cuda backend)."""
        state = {
            "status": self._status,
            "frozen_at": self._frozen_at,
            **{f"factor{j}": W for j, W in enumerate(self._factors)},
        }
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
        if self._m is None or self._s is None:
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
            raise ValueError(
                f"optimizer: this model's optimizer state holds {owner} updates, "
                f"which {name} cannot continue; call reset_optimizer() first to "
                f"start {name} afresh"
            )
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
        return {**arg, "beta1": settings["betas"][0], "beta2": settings["betas"][1], "m": m, "s": v}

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
            raise ValueError(
                f"lr: expected finite learning rates > 0 (in {self.dtype}), "
                f"got {a if a.size <= 4 else 'some that are not'}"
            )
        return a

    @staticmethod
    def _tol(tol) -> float:
        if tol is None:
            return -np.inf
        a = real_array(tol, "tol")
        if a.ndim != 0:
            raise TypeError(f"tol: expected a number or None, got an array of shape {a.shape}")
        t = float(a)
        if not (np.isfinite(t) and t > 0):
            raise ValueError(f"tol: expected a number > 0 or None, got {tol}")
        return t
