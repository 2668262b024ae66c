"""What is learned: batches of matrix completion and matrix sensing problems.

A problem batch holds B problems of one shape (m, n). Arrays are stored with a leading batch
axis of size B, or of size 1 when one problem is shared by the whole batch (the kernels read
it with batch stride 0, so a million seeds of the 2x2 problem cost no memory).

Loss, for both kinds: 1/2 * sum of squared residuals per problem.
"""

from __future__ import annotations

import numpy as np

from . import _rng
from ._backend import to_device
from ._checks import (
    available_memory,
    batch_memory,
    batch_size,
    finite,
    integer,
    ndim_in,
    positive,
    real_array,
)

__all__ = [
    "Completion",
    "Sensing",
    "TensorCompletion",
    "completion",
    "observe_first",
    "paper_2x2",
    "paper_family",
    "perturbed_2x2",
    "random_cp_tensor",
    "random_low_rank_completion",
    "random_sensing",
    "sensing",
    "tensor_completion",
]


class Completion:
    """Matrix completion: observe entries (i, j) where masks[b, i, j] is True.

    targets: (Bt, m, n) float64, masks: (Bm, m, n) bool, Bt and Bm each 1 or `batch`.
    truth: the full ground-truth matrices (B|1, m, n) when known (random problems), else None.
    """

    kind = "completion"

    def __init__(self, targets: np.ndarray, masks: np.ndarray, batch: int, truth=None):
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

    def arrays(self, dtype, device: bool = False) -> dict[str, np.ndarray | None]:
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
        return _on_device(self._cache, dtype) if device else self._cache[dtype]

    def repeat_each(self, k: int) -> Completion:
        """The batch with each problem repeated k times in a row (B * k problems)."""
        return Completion(_repeat(self.targets, k), _repeat(self.masks, k), self.batch * k,
                          _repeat(self.truth, k))

    def __repr__(self) -> str:
        m, n = self.shape
        return f"Completion(batch={self.batch}, shape=({m}, {n}))"


class Sensing:
    """Matrix sensing: y_k = <A_k, W*>, A: (Ba, K, m, n), y: (By, K), Ba and By 1 or `batch`."""

    kind = "sensing"

    def __init__(self, A: np.ndarray, y: np.ndarray, batch: int, truth=None):
        self.A = A
        self.y = y
        self.batch = batch
        self.truth = truth
        self._cache: dict[np.dtype, dict[str, np.ndarray | None]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape[2], self.A.shape[3]

    def arrays(self, dtype, device: bool = False) -> dict[str, np.ndarray | None]:
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
        return _on_device(self._cache, dtype) if device else self._cache[dtype]

    def repeat_each(self, k: int) -> Sensing:
        """The batch with each problem repeated k times in a row (B * k problems)."""
        return Sensing(_repeat(self.A, k), _repeat(self.y, k), self.batch * k,
                       _repeat(self.truth, k))

    def __repr__(self) -> str:
        m, n = self.shape
        return f"Sensing(batch={self.batch}, shape=({m}, {n}), measurements={self.A.shape[1]})"


Problem = Completion | Sensing


def _on_device(cache: dict, dtype: np.dtype) -> dict:
    """The cached host inputs cache[dtype], copied to the device once."""
    key = (dtype, "device")
    if key not in cache:
        cache[key] = {k: None if v is None else to_device(v) for k, v in cache[dtype].items()}
    return cache[key]


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
        raise ValueError(f"truth: expected shape ({batch}, {shape[0]}, {shape[1]}) or "
                         f"{shape}, got {t.shape}")
    finite(t, "truth")
    return t


def _unobserved_nan_to_zero(t: np.ndarray, mk: np.ndarray) -> np.ndarray:
    """targets as float64, NaN (the usual mark of a missing value) allowed where every problem
    that shares the entry leaves it unobserved, and stored as 0 (its value is never read);
    ValueError for a NaN that some problem observes, or an infinite value."""
    nan = np.isnan(t)
    if nan.any():
        seen = nan & mk  # broadcast over the batch: a shared target meets every mask
        if seen.any():
            b, *idx = np.argwhere(seen)[0].tolist()
            raise ValueError(f"targets: NaN at observed entry {tuple(idx)} of problem {b} "
                             f"({int(seen.sum())} in all); NaN may only mark an unobserved "
                             "entry")
        t = np.where(nan, 0.0, t)
    finite(t, "targets")
    return t.astype(np.float64)


def completion(targets, masks, batch: int | None = None, truth=None) -> Completion:
    """A batch of completion problems.

    targets: (m, n) or (B, m, n) real; masks: (m, n) or (B, m, n) bool, True where observed.
    A leading size of 1 (or a 2-d array) is shared by the whole batch; `batch` sets B
    explicitly when every input is shared. Values at unobserved entries are never read: each
    may be NaN (stored as 0), but no value may be infinite.
    """
    t = real_array(targets, "targets")
    ndim_in(t, "targets", (2, 3), "(m, n) or (B, m, n)")
    mk = np.asarray(masks)
    if mk.dtype != np.bool_:
        raise TypeError(f"masks: expected a boolean array, got dtype {mk.dtype}")
    ndim_in(mk, "masks", (2, 3), "(m, n) or (B, m, n)")
    t = _batched(t, 3)
    mk = _batched(mk, 3)
    if t.shape[1:] != mk.shape[1:]:
        raise ValueError(f"masks: expected matrices of shape {t.shape[1:]} like targets, "
                         f"got {mk.shape[1:]}")
    if min(t.shape[1:]) < 1:
        raise ValueError(f"targets: expected non-empty matrices, got shape {t.shape[1:]}")
    B = batch_size({"targets": t.shape[0], "masks": mk.shape[0]}, batch)
    t = _unobserved_nan_to_zero(t, mk)
    return Completion(t, mk.copy(), B, _check_truth(truth, B, t.shape[1:]))


def sensing(A, y, batch: int | None = None, truth=None) -> Sensing:
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
        raise ValueError("A: expected at least one non-empty measurement matrix, "
                         f"got shape {a.shape}")
    finite(a, "A")
    finite(yy, "y")
    B = batch_size({"A": a.shape[0], "y": yy.shape[0]}, batch)
    return Sensing(a.astype(np.float64), yy.astype(np.float64), B,
                   _check_truth(truth, B, a.shape[2:]))


# ---------------------------------------------------------------------------- builders


def paper_2x2(batch: int = 1) -> Completion:
    """The canonical problem: observed (0,1) = 1, (1,0) = 1, (1,1) = 0;
    (0,0) unobserved. Every solution [[x, 1], [1, 0]] has det = -1."""
    return completion([[0.0, 1.0], [1.0, 0.0]], [[False, True], [True, True]], batch=batch)


def perturbed_2x2(b12=-2.0, b21=0.5, eps=0.0, batch: int | None = None) -> Completion:
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
        raise ValueError(f"d: a {d} x {d} problem needs about {9 * d * d / 2**30:.3g} GiB, "
                         f"more than the {have / 2**30:.3g} GiB of memory available here")
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


def random_low_rank_completion(m: int, n: int, rank: int, n_obs: int, batch: int = 1,
                               seed: int = 0) -> Completion:
    """Completion of random rank-`rank` m x n matrices from `n_obs` entries chosen uniformly
    without replacement, one target and one observation set per problem, drawn from the
    problem's own stream (seed, b). Entries are indexed (i, j) = divmod(k, n), which is right
    for non-square matrices too (the official generator divides by m)."""
    m, n, rank, n_obs = _check_low_rank(m, n, rank, n_obs, "n_obs", lambda m, n: m * n)
    batch = integer(batch, "batch", minimum=0)
    seed = _rng.check_seed(seed)
    # per problem: targets and masks, then the problem's own copies of them and of the
    # truth; once: the two temporaries of drawing one target
    batch_memory(m * n * (3 * 8 + 2), batch, "batch", "drawing the problems",
                 fixed=2 * 8 * m * n)
    targets = np.empty((batch, m, n))
    masks = np.zeros((batch, m, n), dtype=bool)
    for b in range(batch):
        g = _rng.generator(seed, "problem", b)
        targets[b] = _low_rank(g, m, n, rank)
        rows, cols = np.divmod(g.choice(m * n, size=n_obs, replace=False), n)
        masks[b, rows, cols] = True
    return completion(targets, masks, batch=batch, truth=targets)


def random_sensing(m: int, n: int, rank: int, n_meas: int, batch: int = 1, seed: int = 0,
                   std: float = 1.0) -> Sensing:
    """Sensing of random rank-`rank` m x n matrices with `n_meas` Gaussian measurement
    matrices of i.i.d. N(0, std^2) entries, per problem from its own stream (seed, b)."""
    m, n, rank, n_meas = _check_low_rank(m, n, rank, n_meas, "n_meas")
    batch = integer(batch, "batch", minimum=0)
    seed = _rng.check_seed(seed)
    std = positive(std, "std")
    # per problem: A, y and the truth, then the problem's own copies of them; once: the
    # temporaries of drawing one problem
    batch_memory(8 * 2 * (n_meas * m * n + n_meas + m * n), batch, "batch",
                 "drawing the problems", fixed=8 * (n_meas * m * n + 2 * m * n))
    A = np.empty((batch, n_meas, m, n))
    truth = np.empty((batch, m, n))
    for b in range(batch):
        g = _rng.generator(seed, "problem", b)
        truth[b] = _low_rank(g, m, n, rank)
        A[b] = g.normal(0.0, std, size=(n_meas, m, n))
    y = np.einsum("bkij,bij->bk", A, truth)
    return sensing(A, y, batch=batch, truth=truth)


# ---------------------------------------------------------------------- tensor completion


class TensorCompletion:
    """Tensor completion: observe entries where masks is True.

    targets: (Bt, d_1, ..., d_N) float64, masks: (Bm, d_1, ..., d_N) bool, Bt and Bm each 1 or
    `batch`. The targets are the full ground truth (for the reconstruction error over every
    entry); values at unobserved entries are never used in training.
    Loss: the mean squared error over the observed entries (no 1/2, unlike the
    matrix problems' 1/2 * sum).
    """

    kind = "tensor_completion"

    def __init__(self, targets: np.ndarray, masks: np.ndarray, batch: int):
        self.targets = targets
        self.masks = masks
        self.batch = batch
        self._cache: dict[np.dtype, dict[str, np.ndarray]] = {}

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.targets.shape[1:])

    @property
    def order(self) -> int:
        return self.targets.ndim - 1

    @property
    def truth(self) -> np.ndarray:
        return self.targets

    @property
    def n_observed(self) -> np.ndarray:
        """(B,) number of observed entries of each problem."""
        axes = tuple(range(1, self.masks.ndim))
        return np.broadcast_to(self.masks.sum(axis=axes), (self.batch,))

    def arrays(self, dtype, device: bool = False) -> dict[str, np.ndarray]:
        """Kernel inputs, flattened to (B|1, numel) C-contiguous, converted once and cached;
        device=True: CuPy copies of them, made once."""
        dtype = np.dtype(dtype)
        if dtype not in self._cache:
            numel = int(np.prod(self.dims))  # not -1: an empty batch has no size to divide
            self._cache[dtype] = {
                "target": np.ascontiguousarray(
                    self.targets.reshape(self.targets.shape[0], numel), dtype=dtype),
                "mask": np.ascontiguousarray(self.masks.reshape(self.masks.shape[0], numel)),
            }
        return _on_device(self._cache, dtype) if device else self._cache[dtype]

    def __repr__(self) -> str:
        return f"TensorCompletion(batch={self.batch}, dims={self.dims})"


def tensor_completion(targets, masks, batch: int | None = None) -> TensorCompletion:
    """A batch of tensor completion problems of order N >= 2.

    targets: (B, d_1, ..., d_N) real, the full tensors; masks: (B, d_1, ..., d_N) bool, True
    where observed. A leading size of 1 is shared by the whole batch, and one of the two may
    come without the batch axis, (d_1, ..., d_N), to be shared; when both have the same number
    of axes, the first is the batch axis (so one 8x8x8 problem is targets[None], masks[None]).
    Mode sizes 1..16, orders 2..6. An unobserved entry may be NaN (stored as 0).
    """
    t = real_array(targets, "targets")
    mk = np.asarray(masks)
    if mk.dtype != np.bool_:
        raise TypeError(f"masks: expected a boolean array, got dtype {mk.dtype}")
    nd = max(t.ndim, mk.ndim)
    if t.ndim not in (nd - 1, nd) or mk.ndim not in (nd - 1, nd):
        raise ValueError(f"masks: expected the shape of targets, with or without a batch axis; "
                         f"got targets {t.shape} and masks {mk.shape}")
    if t.ndim == nd - 1:
        t = t[None]
    if mk.ndim == nd - 1:
        mk = mk[None]
    if t.ndim == mk.ndim and t.shape[1:] != mk.shape[1:]:
        raise ValueError(f"masks: expected tensors of shape {t.shape[1:]} like targets, got "
                         f"{mk.shape[1:]}")
    order = t.ndim - 1
    if not 2 <= order <= 6:
        raise ValueError(f"targets: expected tensors of order 2 to 6 (shape (B, d_1, ..., d_N)), "
                         f"got shape {t.shape}")
    if not all(1 <= d <= 16 for d in t.shape[1:]):
        raise ValueError(f"targets: expected mode sizes 1 to 16, got {t.shape[1:]}")
    B = batch_size({"targets": t.shape[0], "masks": mk.shape[0]}, batch)
    return TensorCompletion(_unobserved_nan_to_zero(t, mk), mk.copy(), B)


def random_cp_tensor(dims, rank: int, fro_norm: float = 1.0, batch: int = 1,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(targets (B, *dims), orders (B, prod(dims)) int64): per problem, from its own stream
    (seed, b), a CP tensor sum_r u_r^1 x ... x u_r^N with standard normal u, scaled to
    Frobenius norm fro_norm (the official generator), and a random permutation
    of its flat C-order indices: observing the first n of it gives observation sets nested
    across n (observe_first)."""
    if isinstance(dims, (int, np.integer)) or not hasattr(dims, "__len__"):
        raise TypeError(f"dims: expected a sequence of mode sizes, got {dims!r}")
    dims = tuple(integer(d, "dims", minimum=1) for d in dims)
    if not 2 <= len(dims) <= 6:
        raise ValueError(f"dims: expected 2 to 6 mode sizes, got {dims}")
    rank = integer(rank, "rank", minimum=1)
    fro_norm = positive(fro_norm, "fro_norm")
    batch = integer(batch, "batch", minimum=0)
    seed = _rng.check_seed(seed)
    numel = int(np.prod(dims))
    batch_memory(numel * (8 + 8), batch, "batch", "drawing the tensors and their orders",
                 fixed=3 * 8 * numel)
    targets = np.empty((batch,) + dims)
    orders = np.empty((batch, numel), dtype=np.int64)
    letters = "abcdef"[:len(dims)]
    spec = ",".join(f"{c}z" for c in letters) + "->" + letters
    for b in range(batch):
        g = _rng.generator(seed, "problem", b)
        T = np.einsum(spec, *[g.standard_normal((d, rank)) for d in dims])
        targets[b] = T * (fro_norm / np.linalg.norm(T))
        orders[b] = g.permutation(numel)
    return targets, orders


def observe_first(orders, n, dims) -> np.ndarray:
    """Masks (B, *dims): True at the first n[b] flat indices of orders[b]; n a number or (B,)."""
    o = np.asarray(orders)
    if o.ndim != 2 or o.dtype.kind not in "iu":
        raise TypeError(f"orders: expected (B, numel) integer permutations, got {o.dtype} "
                        f"shape {o.shape}")
    dims = tuple(int(d) for d in dims)
    numel = int(np.prod(dims))
    if o.shape[1] != numel:
        raise ValueError(f"orders: expected {numel} indices per problem for dims {dims}, got "
                         f"{o.shape[1]}")
    counts = np.broadcast_to(np.asarray(n), (o.shape[0],))
    if counts.dtype.kind not in "iu" or (counts < 0).any() or (counts > numel).any():
        raise ValueError(f"n: expected observation counts in 0..{numel}, got {n}")
    masks = np.zeros((o.shape[0], numel), dtype=bool)
    for b in range(o.shape[0]):
        masks[b, o[b, :counts[b]]] = True
    return masks.reshape((o.shape[0],) + dims)
