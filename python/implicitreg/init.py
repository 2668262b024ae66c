"""Where a deep factorization starts.

Schemes, for factors W_j of shape (d_j, d_{j-1}), j = 1..N, d_0 = n, d_N = m:
  normal    i.i.d. N(0, s^2) entries in every factor ("unbalanced").
  identity  W_j = s * I (rectangular).
  balanced  draw P0 with i.i.d. N(0, sigma^2) entries, P0 = U S V^T, and split it evenly:
            W_N = U S^{1/N}, W_j = S^{1/N} (1 < j < N), W_1 = S^{1/N} V^T (zero-padded to the
            widths). The product is P0 and W_{j+1}^T W_{j+1} = W_j W_j^T.

scale_by says what `scale` is:
  "factor"   the per-factor std s (the official code's init_alpha for normal init);
  "product"  the std of the entries of the end-to-end matrix (the "init" of the paper's
             legends). For normal init s = (scale / sqrt(d_1 ... d_{N-1}))^{1/N}, since an
             entry of a product of Gaussian factors has std s^N sqrt(d_1 ... d_{N-1}).
  For identity "product" gives s = scale^{1/N}; for balanced "factor" gives
  sigma = scale^N sqrt(d_1 ... d_{N-1}), the end-to-end std of a normal init of that s.

det = "positive" | "negative" enforces the sign of det(W_N ... W_1) (square problems) by
redrawing, from its own stream, only the problems of the wrong sign — for every scheme,
balanced included (the official code silently skips it there). Identity has
det > 0; "negative" flips the sign of the first row of W_1.
"""

from __future__ import annotations

import math

import numpy as np

from . import _rng
from ._checks import choice, integer, positive
from .metrics import det as det_of_product

INITS = ("normal", "identity", "balanced")
SCALE_BY = ("factor", "product")
DETS = (None, "positive", "negative")
_MAX_REDRAWS = 1000


def layer_dims(shape: tuple[int, int], depth, widths) -> list[int]:
    """[d_0 = n, d_1, ..., d_N = m]; hidden widths default to min(m, n)."""
    m, n = shape
    depth = integer(depth, "depth", minimum=1)
    if widths is None:
        widths = [min(m, n)] * (depth - 1)
    elif isinstance(widths, (int, np.integer)) and not isinstance(widths, bool):
        widths = [int(widths)] * (depth - 1)
    else:
        widths = list(widths)
    if len(widths) != depth - 1:
        raise ValueError(
            f"widths: expected {depth - 1} hidden widths for depth {depth}, got {len(widths)}"
        )
    widths = [integer(w, "widths", minimum=1) for w in widths]
    return [n, *widths, m]


def per_factor_std(init: str, scale: float, scale_by: str, dims: list[int]) -> float:
    """The per-factor scale s (normal, identity) or product std sigma (balanced)."""
    N = len(dims) - 1
    inner = math.prod(dims[1:-1])
    if init == "balanced":
        return scale if scale_by == "product" else scale**N * math.sqrt(inner)
    if scale_by == "factor":
        return scale
    if init == "identity":
        return scale ** (1.0 / N)
    return (scale / math.sqrt(inner)) ** (1.0 / N)


def _draw(g: np.random.Generator, init: str, s: float, dims: list[int]) -> list[np.ndarray]:
    N = len(dims) - 1
    if init == "normal":
        return [g.standard_normal((dims[j], dims[j - 1])) * s for j in range(1, N + 1)]
    # balanced
    n, m = dims[0], dims[-1]
    P0 = g.standard_normal((m, n)) * s
    if N == 1:
        return [P0]
    U, S, Vt = np.linalg.svd(P0, full_matrices=False)
    k = S.size
    root = S ** (1.0 / N)
    out = []
    for j in range(1, N + 1):
        W = np.zeros((dims[j], dims[j - 1]))
        if j == 1:
            W[:k, :] = root[:, None] * Vt
        elif j == N:
            W[:, :k] = U * root[None, :]
        else:
            W[np.arange(k), np.arange(k)] = root
        out.append(W)
    return out


def init_factors(
    shape: tuple[int, int],
    batch: int,
    depth=3,
    widths=None,
    init="normal",
    scale=1e-3,
    scale_by="product",
    det=None,
    seed=0,
) -> list[np.ndarray]:
    """Starting factors [W_1, ..., W_N], each (batch, d_j, d_{j-1}) float64."""
    batch = integer(batch, "batch", minimum=0)
    dims = layer_dims(shape, depth, widths)
    choice(init, "init", INITS)
    choice(scale_by, "scale_by", SCALE_BY)
    choice(det, "det", DETS)
    scale = positive(scale, "scale")
    seed = _rng.check_seed(seed)
    N = len(dims) - 1
    m, n = dims[-1], dims[0]
    if det is not None and m != n:
        raise ValueError(f"det: a determinant needs a square problem, got shape ({m}, {n})")
    if det is not None and min(dims) < n:
        raise ValueError(
            f"widths: det={det!r} needs every hidden width >= {n}, since a "
            f"narrower layer makes det(E) = 0; got widths {dims[1:-1]}"
        )
    if init == "balanced" and min(dims[1:-1], default=min(m, n)) < min(m, n):
        raise ValueError(
            f"widths: balanced init needs every hidden width >= min(m, n) = "
            f"{min(m, n)}, got {dims[1:-1]}"
        )
    s = per_factor_std(init, scale, scale_by, dims)
    factors = [np.empty((batch, dims[j], dims[j - 1])) for j in range(1, N + 1)]

    if init == "identity":
        for j in range(1, N + 1):
            factors[j - 1][:] = s * np.eye(dims[j], dims[j - 1])
        if det == "negative":
            factors[0][:, 0, :] *= -1.0
        return factors

    gens = [_rng.generator(seed, "init", b) for b in range(batch)]
    todo = np.arange(batch)
    for _ in range(_MAX_REDRAWS):
        for b in todo:
            for W, draw in zip(factors, _draw(gens[b], init, s, dims), strict=True):
                W[b] = draw
        if det is None or todo.size == 0:
            return factors
        d = det_of_product([W[todo] for W in factors])
        bad = d <= 0 if det == "positive" else d >= 0
        todo = todo[bad]
        if todo.size == 0:
            return factors
    raise RuntimeError(
        f"init: could not draw det {det} for {todo.size} problems in "
        f"{_MAX_REDRAWS} attempts (is the scale so small that det underflows?)"
    )
