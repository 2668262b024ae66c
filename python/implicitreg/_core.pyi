from typing import Any

import numpy as np

__version__: str

def dmf_step(
    factors: list[np.ndarray],
    target: np.ndarray | None,
    mask: np.ndarray | None,
    A: np.ndarray | None,
    y: np.ndarray | None,
    lr: np.ndarray,
    steps: int,
    tol: float,
    step0: int,
    status: np.ndarray,
    frozen_at: np.ndarray,
    thresholds: np.ndarray | None = None,
    crossed_at: np.ndarray | None = None,
    snapshots: list[np.ndarray] | None = None,
) -> None: ...
def dmf_loss(
    factors: list[np.ndarray],
    target: np.ndarray | None,
    mask: np.ndarray | None,
    A: np.ndarray | None,
    y: np.ndarray | None,
    loss: np.ndarray,
    product: np.ndarray,
) -> None: ...
def svdvals(X: np.ndarray, s: np.ndarray, info: np.ndarray, max_sweeps: int = 40) -> None: ...
def svals_metrics(
    s: np.ndarray, kinds: np.ndarray, params: np.ndarray, out: np.ndarray
) -> None: ...
def balancedness(factors: list[np.ndarray], out: np.ndarray) -> None: ...
def dmf_measure(
    factors: list[np.ndarray],
    target: np.ndarray | None,
    mask: np.ndarray | None,
    A: np.ndarray | None,
    y: np.ndarray | None,
    kinds: np.ndarray,
    params: np.ndarray,
    out: np.ndarray,
    truth: np.ndarray | None = None,
) -> None: ...
def build_info() -> dict[str, Any]: ...
