"""The paper's settings, its values read off its figures, and the closed forms its analysis
gives for the canonical 2x2 problem: shared by the experiments' reports and their figures."""

from __future__ import annotations

import numpy as np

__all__ = [
    "EPSILONS",
    "FAMILY_D",
    "MARKERS",
    "NORMS",
    "MINIMIZED",
    "NORM_MINIMA",
    "PAPER_CONFIGS",
    "PAPER_VALUES",
    "PERTURBED_DEPTHS",
    "PERTURBED_REFERENCE",
    "REPORTED",
    "det_bound",
    "erank_bound",
    "legend_2x2",
    "loss_grid",
    "rank1_path",
]


# Loss thresholds read by the reports: the defaults and the paper's figure markers
# 1.3 * 10^-j; the figures use a grid of 10 per decade on top.
REPORTED = (1e-1, 1e-2, 1e-3, 1e-4)

MARKERS = (1.3e-1, 1.3e-2, 1.3e-3, 1.3e-4)


def loss_grid(lowest: float = 1e-4, per_decade: int = 10) -> tuple[float, ...]:
    """Strictly decreasing thresholds: 10^(-k/per_decade) down to `lowest`, and the markers."""
    k = int(round(-np.log10(lowest) * per_decade))
    grid = {round(10.0 ** (-i / per_decade), 12) for i in range(k + 1)}
    grid |= {t for t in MARKERS if t >= lowest}
    return tuple(sorted(grid, reverse=True))


def rank1_path(loss):
    """|w11| on the rank-1 path [[x, 1], [1, 1/x]] of the canonical problem: 1/sqrt(2 loss)."""
    return 1.0 / np.sqrt(2.0 * np.asarray(loss, dtype=np.float64))


def det_bound(loss, b12: float = 1.0, b21: float = 1.0, eps: float = 0.0):
    """With det(W) of the solutions' sign, |w11| > (|b12|-s)(|b21|-s)/(eps+s)
    at loss l, s = sqrt(2 l) (for s < min(|b12|, |b21|))."""
    s = np.sqrt(2.0 * np.asarray(loss, dtype=np.float64))
    return (abs(b12) - s) * (abs(b21) - s) / (abs(eps) + s)


def erank_bound(loss):
    """The bound erank < exp(h(s^2/(1-s)^2)) with det > 0, h the binary entropy; the
    bound saturates at 2 once s^2/(1-s)^2 >= 1/2 (h peaks there); NaN for s >= 1."""
    s = np.sqrt(2.0 * np.asarray(loss, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(s**2 / (1 - s) ** 2, 0.5)
        h = -p * np.log(p) - (1 - p) * np.log1p(-p)
    return np.where(s < 1, np.exp(h), np.nan)


# (depth, lr, init) of the paper's figure, each with and without balanced init.
PAPER_CONFIGS = (
    (2, 6e-3, 1e-5),
    (2, 3e-3, 1e-6),
    (3, 6e-3, 1e-5),
    (3, 3e-3, 1e-6),
    (4, 3e-3, 1e-3),
    (4, 1.5e-3, 1e-4),
)

# |w11| read off the paper's panels (camera-ready, float32, one run each) at
# the markers 1.3e-1 ... 1.3e-4 and at the first loss below 1e-4; None where not readable.
PAPER_VALUES = {
    (2, 6e-3, 1e-5, False): (0.6, 0.7, 0.72, 0.73, 0.73),
    (2, 6e-3, 1e-5, True): (1.5, 6.0, 6.9, 6.95, 6.95),
    (2, 3e-3, 1e-6, False): (0.95, 1.2, 1.2, 1.2, 1.2),
    (2, 3e-3, 1e-6, True): (1.55, 6.05, 7.15, 7.2, 7.2),
    (3, 6e-3, 1e-5, False): (1.7, 6.0, 19.5, None, 43),
    (3, 6e-3, 1e-5, True): (1.7, 6.0, 19.5, 62, 70.5),
    (3, 3e-3, 1e-6, False): (1.7, 6.0, 19.5, 62, 70),
    (3, 3e-3, 1e-6, True): (1.7, 6.0, 19.5, 62, 70.5),
    (4, 3e-3, 1e-3, False): (1.7, 6.1, 19.6, None, 57),
    (4, 3e-3, 1e-3, True): (1.7, 6.1, 19.6, 62, 70),
    (4, 1.5e-3, 1e-4, False): (1.7, 6.1, 19.6, 62, 70),
    (4, 1.5e-3, 1e-4, True): (1.7, 6.1, 19.6, 62, 70),
}


def legend_2x2(depth, lr, scale, balanced) -> str:
    return f"depth {depth}, lr {lr:g}, init {scale:g}" + (" (b)" if balanced else "")


EPSILONS = (0.0, 0.01, 0.05, 0.1, 0.5)

# A float32 measurement of that spec (depth 3, lr 6e-3, init 1e-5, balanced,
# one shared start): w11 at the first loss < 1e-4, and after 1.69e6 iterations.
PERTURBED_REFERENCE = {
    0.5: (-1.921, -1.99992),
    0.1: (-8.73, -9.967),
    0.05: (-15.56, -19.66),
    0.01: (-41.39, -55.1),
    0.0: (-70.68, -70.68),
}

PERTURBED_DEPTHS = ((2, 6e-3, 1e-5), (3, 6e-3, 1e-5), (4, 3e-3, 1e-3))

FAMILY_D = (3, 4, 5)

NORMS = ("fro", "nuc", "spectral", "schatten:0.5", "schatten:0.25")

# Their minima over the solution set: sqrt 2, 2, 1, 2^(1/p).
NORM_MINIMA = {
    "fro": np.sqrt(2.0),
    "nuc": 2.0,
    "spectral": 1.0,
    "schatten:0.5": 4.0,
    "schatten:0.25": 16.0,
}
# The metric of each norm a minimizer is computed for (implicitreg.baselines.min_norm), and
# the minimizer's name; the spectral norm has none there.
MINIMIZED = {
    "fro": "frobenius",
    "nuc": "nuclear",
    "schatten:0.5": "schatten:0.5",
    "schatten:0.25": "schatten:0.25",
}
