"""Tensor completion: batches of CP tensor completion problems, random CP tensors and the
order in which their entries are observed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .. import _rng
from .._checks import batch_memory, batch_size, bool_array, integer, positive, real_array
from .shared import on_device, unobserved_nan_to_zero


class TensorCompletion:
    """Tensor completion: observe entries where masks is True.

    targets: (Bt, d_1, ..., d_N) float64, masks: (Bm, d_1, ..., d_N) bool, Bt and Bm each 1 or
    `batch`. The targets are the full ground truth (for the reconstruction error over every
    entry); values at unobserved entries are never used in training.
    Loss: the mean squared error over the observed entries (no 1/2, unlike the
    matrix problems' 1/2 * sum).
    """

    kind = "tensor_completion"

    def __init__(self, targets: np.ndarray, masks: np.ndarray, batch: int) -> None:
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

    def arrays(self, dtype: DTypeLike, device: bool = False) -> dict[str, np.ndarray]:
        """Kernel inputs, flattened to (B|1, numel) C-contiguous, converted once and cached;
        device=True: CuPy copies of them, made once."""
        dtype = np.dtype(dtype)
        if dtype not in self._cache:
            numel = int(np.prod(self.dims))  # not -1: an empty batch has no size to divide
            mask = np.ascontiguousarray(self.masks.reshape(self.masks.shape[0], numel))
            self._cache[dtype] = {
                "target": np.ascontiguousarray(
                    self.targets.reshape(self.targets.shape[0], numel), dtype=dtype
                ),
                "mask": mask,
                "observed": _observed_lists(mask),
            }
        return on_device(self._cache, dtype) if device else self._cache[dtype]

    def __repr__(self) -> str:
        return f"TensorCompletion(batch={self.batch}, dims={self.dims})"


def _observed_lists(mask: np.ndarray) -> np.ndarray:
    """(Bm, slots) int64: each row's True flat indices in ascending order, then -1; slots = the
    largest count, at least 1. Listed once per problem, so that no step scans the mask."""
    counts = mask.sum(axis=1)
    slots = max(1, int(counts.max(initial=0)))
    out = np.full((mask.shape[0], slots), -1, dtype=np.int64)
    rows, cols = np.nonzero(mask)  # row-major: each row's indices ascending
    out[rows, np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)] = cols
    return out


def tensor_completion(
    targets: ArrayLike, masks: ArrayLike, batch: int | None = None
) -> TensorCompletion:
    """A batch of tensor completion problems of order N >= 2.

    targets: (B, d_1, ..., d_N) real, the full tensors; masks: (B, d_1, ..., d_N) bool, True
    where observed. A leading size of 1 is shared by the whole batch, and one of the two may
    come without the batch axis, (d_1, ..., d_N), to be shared; when both have the same number
    of axes, the first is the batch axis (so one 8x8x8 problem is targets[None], masks[None]).
    Mode sizes 1..16, orders 2..6. An unobserved entry may be NaN (stored as 0).
    """
    t = real_array(targets, "targets")
    mk = bool_array(masks, "masks")
    nd = max(t.ndim, mk.ndim)
    if t.ndim not in (nd - 1, nd) or mk.ndim not in (nd - 1, nd):
        raise ValueError(
            f"masks: expected the shape of targets, with or without a batch axis; "
            f"got targets {t.shape} and masks {mk.shape}"
        )
    if t.ndim == nd - 1:
        t = t[None]
    if mk.ndim == nd - 1:
        mk = mk[None]
    if t.ndim == mk.ndim and t.shape[1:] != mk.shape[1:]:
        raise ValueError(
            f"masks: expected tensors of shape {t.shape[1:]} like targets, got {mk.shape[1:]}"
        )
    order = t.ndim - 1
    if not 2 <= order <= 6:
        raise ValueError(
            f"targets: expected tensors of order 2 to 6 (shape (B, d_1, ..., d_N)), "
            f"got shape {t.shape}"
        )
    if not all(1 <= d <= 16 for d in t.shape[1:]):
        raise ValueError(f"targets: expected mode sizes 1 to 16, got {t.shape[1:]}")
    B = batch_size({"targets": t.shape[0], "masks": mk.shape[0]}, batch)
    return TensorCompletion(unobserved_nan_to_zero(t, mk), mk.copy(), B)


def random_cp_tensor(
    dims: Sequence[int], rank: int, fro_norm: float = 1.0, batch: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(targets `(B, *dims)`, orders (B, prod(dims)) int64): per problem, from its own stream
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
    batch_memory(
        numel * (8 + 8), batch, "batch", "drawing the tensors and their orders", fixed=3 * 8 * numel
    )
    targets = np.empty((batch,) + dims)
    orders = np.empty((batch, numel), dtype=np.int64)
    letters = "abcdef"[: len(dims)]
    spec = ",".join(f"{c}z" for c in letters) + "->" + letters
    for b in range(batch):
        g = _rng.generator(seed, "problem", b)
        T = np.einsum(spec, *[g.standard_normal((d, rank)) for d in dims])
        targets[b] = T * (fro_norm / np.linalg.norm(T))
        orders[b] = g.permutation(numel)
    return targets, orders


def observe_first(
    orders: ArrayLike,
    n: int | np.integer | Sequence[int] | NDArray[np.integer],
    dims: Sequence[int],
) -> np.ndarray:
    """Masks `(B, *dims)`: True at the first n[b] flat indices of orders[b]; n a number or (B,)."""
    o = np.asarray(orders)
    if o.ndim != 2 or o.dtype.kind not in "iu":
        raise TypeError(
            f"orders: expected (B, numel) integer permutations, got {o.dtype} shape {o.shape}"
        )
    dims = tuple(int(d) for d in dims)
    numel = int(np.prod(dims))
    if o.shape[1] != numel:
        raise ValueError(
            f"orders: expected {numel} indices per problem for dims {dims}, got {o.shape[1]}"
        )
    counts = np.broadcast_to(np.asarray(n), (o.shape[0],))
    if counts.dtype.kind not in "iu" or (counts < 0).any() or (counts > numel).any():
        raise ValueError(f"n: expected observation counts in 0..{numel}, got {n}")
    masks = np.zeros((o.shape[0], numel), dtype=bool)
    for b in range(o.shape[0]):
        masks[b, o[b, : counts[b]]] = True
    return masks.reshape((o.shape[0],) + dims)
