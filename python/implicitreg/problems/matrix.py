"""Matrix problems: batches of completion and sensing problems of one shape (m, n), and the
builders of the paper's problems and of random low-rank ones."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .. import _rng
from .._checks import (
    available_memory,
    batch_memory,
    batch_size,
    bool_array,
    finite,
    integer,
    ndim_in,
    positive,
    real_array,
)
from .shared import on_device, unobserved_nan_to_zero


class Completion:
    """Matrix completion: observe entries (i, j) where masks[b, i, j] is True.

    targets: (Bt, m, n) float64, masks: (Bm, m, n) bool, Bt and Bm each 1 or `batch`.
    truth: the full ground-truth matrices (B|1, m, n) when known (random problems), else None.
    """

    kind = "completion"

    def __init__(
        self, targets: np.ndarray, masks: np.ndarray, batch: int, truth: np.ndarray | None = None
    ) -> None:
        self.targets = targets
        self.masks = masks
        self.batch = batch
        self.truth = truth
        self._cache: dict[np.dtype, dict[str, np.ndarray | None]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.targets.shape[1], self.targets.shape[2]

    @property
    def n_observed(self) -> np.ndarray:
        """(B,) number of observed entries of each problem."""
        return np.broadcast_to(self.masks.sum(axis=(1, 2)), (self.batch,))

    def arrays(self, dtype: DTypeLike, device: bool = False) -> dict[str, np.ndarray | None]:
        """Kernel inputs in `dtype`, C-contiguous, converted once and cached; device=True:
        CuPy copies of them, made once."""
        dtype = np.dtype(dtype)
        if dtype not in self._cache:
            self._cache[dtype] = {
                "target": np.ascontiguousarray(self.targets, dtype=dtype),
                "mask": np.ascontiguousarray(self.masks),
                "A": None,
                "y": None,
                "truth": _truth(self.truth, dtype),
            }
        return on_device(self._cache, dtype) if device else self._cache[dtype]

    def bytes_per_problem(self) -> int:
        """Bytes of one problem's data (a shared array counts in full: one problem of a
        batch holds as much as a problem alone)."""
        arrays = (getattr(self, k, None) for k in ("targets", "masks", "A", "y", "truth"))
        return sum(a[0].nbytes for a in arrays if a is not None)

    def repeat_each(self, k: int) -> Completion:
        """The batch with each problem repeated k times in a row (B * k problems)."""
        return Completion(
            _repeat(self.targets, k), _repeat(self.masks, k), self.batch * k, _repeat(self.truth, k)
        )

    def __repr__(self) -> str:
        m, n = self.shape
        return f"Completion(batch={self.batch}, shape=({m}, {n}))"


class Sensing:
    """Matrix sensing: y_k = <A_k, W*>, A: (Ba, K, m, n), y: (By, K), Ba and By 1 or `batch`."""

    kind = "sensing"

    def __init__(
        self, A: np.ndarray, y: np.ndarray, batch: int, truth: np.ndarray | None = None
    ) -> None:
        self.A = A
        self.y = y
        self.batch = batch
        self.truth = truth
        self._cache: dict[np.dtype, dict[str, np.ndarray | None]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape[2], self.A.shape[3]

    def arrays(self, dtype: DTypeLike, device: bool = False) -> dict[str, np.ndarray | None]:
        """As Completion.arrays."""
        dtype = np.dtype(dtype)
        if dtype not in self._cache:
            self._cache[dtype] = {
                "target": None,
                "mask": None,
                "A": np.ascontiguousarray(self.A, dtype=dtype),
                "y": np.ascontiguousarray(self.y, dtype=dtype),
                "truth": _truth(self.truth, dtype),
            }
        return on_device(self._cache, dtype) if device else self._cache[dtype]

    def bytes_per_problem(self) -> int:
        """Bytes of one problem's data (a shared array counts in full: one problem of a
        batch holds as much as a problem alone)."""
        arrays = (getattr(self, k, None) for k in ("targets", "masks", "A", "y", "truth"))
        return sum(a[0].nbytes for a in arrays if a is not None)

    def repeat_each(self, k: int) -> Sensing:
        """The batch with each problem repeated k times in a row (B * k problems)."""
        return Sensing(
            _repeat(self.A, k), _repeat(self.y, k), self.batch * k, _repeat(self.truth, k)
        )

    def __repr__(self) -> str:
        m, n = self.shape
        return f"Sensing(batch={self.batch}, shape=({m}, {n}), measurements={self.A.shape[1]})"


Problem = Completion | Sensing


def _repeat(a, k: int):
    """Repeat each problem's array k times; a shared (leading size 1) array stays shared."""
    return a if a is None or a.shape[0] == 1 else np.repeat(a, k, axis=0)


def _truth(truth, dtype):
    return None if truth is None else np.ascontiguousarray(truth, dtype=dtype)


def _batched(a: np.ndarray, ndim: int) -> np.ndarray:
    """a with leading axes of size 1 up to `ndim` axes: a shared array as a batch of one."""
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def _check_truth(truth, batch: int, shape: tuple[int, int]):
    """truth as (B|1, m, n) float64, or None."""
    if truth is None:
        return None
    t = real_array(truth, "truth").astype(np.float64)
    ndim_in(t, "truth", (2, 3), "(m, n) or (B, m, n)")
    t = _batched(t, 3)
    if t.shape[1:] != shape or t.shape[0] not in (1, batch):
        raise ValueError(
            f"truth: expected shape ({batch}, {shape[0]}, {shape[1]}) or {shape}, got {t.shape}"
        )
    finite(t, "truth")
    return t


def completion(
    targets: ArrayLike,
    masks: ArrayLike,
    batch: int | None = None,
    truth: ArrayLike | None = None,
) -> Completion:
    """A batch of completion problems.

    targets: (m, n) or (B, m, n) real; masks: (m, n) or (B, m, n) bool, True where observed.
    A leading size of 1 (or a 2-d array) is shared by the whole batch; `batch` sets B
    explicitly when every input is shared. Values at unobserved entries are never read: each
    may be NaN (stored as 0), but no value may be infinite.
    """
    t = real_array(targets, "targets")
    ndim_in(t, "targets", (2, 3), "(m, n) or (B, m, n)")
    mk = bool_array(masks, "masks")
    ndim_in(mk, "masks", (2, 3), "(m, n) or (B, m, n)")
    t = _batched(t, 3)
    mk = _batched(mk, 3)
    if t.shape[1:] != mk.shape[1:]:
        raise ValueError(
            f"masks: expected matrices of shape {t.shape[1:]} like targets, got {mk.shape[1:]}"
        )
    if min(t.shape[1:]) < 1:
        raise ValueError(f"targets: expected non-empty matrices, got shape {t.shape[1:]}")
    B = batch_size({"targets": t.shape[0], "masks": mk.shape[0]}, batch)
    t = unobserved_nan_to_zero(t, mk)
    return Completion(t, mk.copy(), B, _check_truth(truth, B, t.shape[1:]))


def sensing(
    A: ArrayLike, y: ArrayLike, batch: int | None = None, truth: ArrayLike | None = None
) -> Sensing:
    """A batch of sensing problems y_k = <A_k, W>.

    A: (K, m, n) or (B, K, m, n) real; y: (K,) or (B, K) real.
    """
    a = real_array(A, "A")
    ndim_in(a, "A", (3, 4), "(K, m, n) or (B, K, m, n)")
    yy = real_array(y, "y")
    ndim_in(yy, "y", (1, 2), "(K,) or (B, K)")
    a = _batched(a, 4)
    yy = _batched(yy, 2)
    if a.shape[1] != yy.shape[1]:
        raise ValueError(f"y: expected {a.shape[1]} measurements (one per A_k), got {yy.shape[1]}")
    if a.shape[1] < 1 or min(a.shape[2:]) < 1:
        raise ValueError(
            f"A: expected at least one non-empty measurement matrix, got shape {a.shape}"
        )
    finite(a, "A")
    finite(yy, "y")
    B = batch_size({"A": a.shape[0], "y": yy.shape[0]}, batch)
    return Sensing(
        a.astype(np.float64), yy.astype(np.float64), B, _check_truth(truth, B, a.shape[2:])
    )


# ---------------------------------------------------------------------------- builders


def paper_2x2(batch: int = 1) -> Completion:
    """The canonical problem: observed (0,1) = 1, (1,0) = 1, (1,1) = 0;
    (0,0) unobserved. Every solution [[x, 1], [1, 0]] has det = -1."""
    return completion([[0.0, 1.0], [1.0, 0.0]], [[False, True], [True, True]], batch=batch)


def perturbed_2x2(
    b12: float | ArrayLike = -2.0,
    b21: float | ArrayLike = 0.5,
    eps: float | ArrayLike = 0.0,
    batch: int | None = None,
) -> Completion:
    """Observed (0,1) = b12, (1,0) = b21, (1,1) = eps.

    Each of b12, b21, eps is a number or a 1-d array of per-problem values (broadcast
    together), so one batch can sweep eps. Solutions have det = eps*x - b12*b21.
    """
    vals = {}
    for name, v in (("b12", b12), ("b21", b21), ("eps", eps)):
        a = real_array(v, name).astype(np.float64)
        ndim_in(a, name, (0, 1), "a number or (B,)")
        finite(a, name)
        vals[name] = a.reshape(-1)
    B = batch_size({name: a.size for name, a in vals.items()}, batch)
    lead = max(a.size for a in vals.values())
    t = np.zeros((lead, 2, 2))
    for (i, j), name in (((0, 1), "b12"), ((1, 0), "b21"), ((1, 1), "eps")):
        t[:, i, j] = vals[name]
    return completion(t, [[False, True], [True, True]], batch=B)


def paper_family(d: int, batch: int = 1) -> Completion:
    """The d x d generalization: target blockdiag([[0,1],[1,0]], I_{d-2}),
    every entry observed but (0,0); every solution has det = -1."""
    d = integer(d, "d", minimum=2)
    have = available_memory()
    if have is not None and 9 * d * d > have:  # one shared float64 target and bool mask
        raise ValueError(
            f"d: a {d} x {d} problem needs about {9 * d * d / 2**30:.3g} GiB, "
            f"more than the {have / 2**30:.3g} GiB of memory available here"
        )
    t = np.eye(d)
    t[:2, :2] = [[0.0, 1.0], [1.0, 0.0]]
    mk = np.ones((d, d), dtype=bool)
    mk[0, 0] = False
    return completion(t, mk, batch=batch)


def _low_rank(g: np.random.Generator, m: int, n: int, rank: int) -> np.ndarray:
    """W* = U V^T with standard normal U (m, r), V (n, r), scaled to Frobenius norm m
    (the official generator's convention)."""
    W = g.standard_normal((m, rank)) @ g.standard_normal((n, rank)).T
    return W * (m / np.linalg.norm(W))


def _check_low_rank(m, n, rank, count, count_name, limit=None):
    m = integer(m, "m", minimum=1)
    n = integer(n, "n", minimum=1)
    rank = integer(rank, "rank", minimum=1)
    if rank > min(m, n):
        raise ValueError(f"rank: expected at most min(m, n) = {min(m, n)}, got {rank}")
    count = integer(count, count_name, minimum=1)
    if limit is not None and count > limit(m, n):
        raise ValueError(f"{count_name}: expected at most m*n = {limit(m, n)}, got {count}")
    return m, n, rank, count


def random_low_rank_completion(
    m: int, n: int, rank: int, n_obs: int, batch: int = 1, seed: int = 0
) -> Completion:
    """Completion of random rank-`rank` m x n matrices from `n_obs` entries chosen uniformly
    without replacement, one target and one observation set per problem, drawn from the
    problem's own stream (seed, b). Entries are indexed (i, j) = divmod(k, n), which is right
    for non-square matrices too (the official generator divides by m)."""
    m, n, rank, n_obs = _check_low_rank(m, n, rank, n_obs, "n_obs", lambda m, n: m * n)
    batch = integer(batch, "batch", minimum=0)
    seed = _rng.check_seed(seed)
    # per problem: targets and masks, then the problem's own copies of them and of the
    # truth; once: the two temporaries of drawing one target
    batch_memory(m * n * (3 * 8 + 2), batch, "batch", "drawing the problems", fixed=2 * 8 * m * n)
    targets = np.empty((batch, m, n))
    masks = np.zeros((batch, m, n), dtype=bool)
    for b in range(batch):
        g = _rng.generator(seed, "problem", b)
        targets[b] = _low_rank(g, m, n, rank)
        rows, cols = np.divmod(g.choice(m * n, size=n_obs, replace=False), n)
        masks[b, rows, cols] = True
    return completion(targets, masks, batch=batch, truth=targets)


def random_sensing(
    m: int, n: int, rank: int, n_meas: int, batch: int = 1, seed: int = 0, std: float = 1.0
) -> Sensing:
    """Sensing of random rank-`rank` m x n matrices with `n_meas` Gaussian measurement
    matrices of i.i.d. N(0, std^2) entries, per problem from its own stream (seed, b)."""
    m, n, rank, n_meas = _check_low_rank(m, n, rank, n_meas, "n_meas")
    batch = integer(batch, "batch", minimum=0)
    seed = _rng.check_seed(seed)
    std = positive(std, "std")
    # per problem: A, y and the truth, then the problem's own copies of them; once: the
    # temporaries of drawing one problem
    batch_memory(
        8 * 2 * (n_meas * m * n + n_meas + m * n),
        batch,
        "batch",
        "drawing the problems",
        fixed=8 * (n_meas * m * n + 2 * m * n),
    )
    A = np.empty((batch, n_meas, m, n))
    truth = np.empty((batch, m, n))
    for b in range(batch):
        g = _rng.generator(seed, "problem", b)
        truth[b] = _low_rank(g, m, n, rank)
        A[b] = g.normal(0.0, std, size=(n_meas, m, n))
    y = np.einsum("bkij,bij->bk", A, truth)
    return sensing(A, y, batch=batch, truth=truth)
