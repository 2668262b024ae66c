# _core: the CPU kernels on NumPy arrays (C-contiguous, of the dtypes the kernels name). The
# builds for higher x86-64 levels (_core_v3, _core_v4) are the same module.
from typing import Any

import numpy as np

__version__: str

# the kernels' codes (csrc/include/implicitreg/codes.h), name -> value, and size limits
STATUS: dict[str, int]
OPTIMIZERS: dict[str, int]
METRIC_KINDS: dict[str, int]
SVD_INFO: dict[str, int]
LIMITS: dict[str, int]

# optimizer: None (gradient descent) or {"kind": code, "beta" | "beta1", "beta2", "eps":
# float, "t": (B,) int64, "v": (B,) | "m", "s": one array per factor}, updated in place
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
    optimizer: dict[str, Any] | None = None,
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
def svd(
    X: np.ndarray,
    U: np.ndarray,
    s: np.ndarray,
    Vh: np.ndarray,
    info: np.ndarray,
    max_sweeps: int = 40,
) -> None: ...
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
def cp_step(
    factors: list[np.ndarray],
    target: np.ndarray,
    mask: np.ndarray,
    lr: np.ndarray,
    steps: int,
    tol: float,
    step0: int,
    observed: np.ndarray,
    status: np.ndarray,
    frozen_at: np.ndarray,
    loss: np.ndarray,
    optimizer: dict[str, Any] | None = None,
) -> None: ...
def cp_tensor(factors: list[np.ndarray], out: np.ndarray) -> None: ...
def tensor_rank(
    tensors: np.ndarray,
    dims: list[int],
    tol: float,
    max_rank: int,
    max_iter: int,
    restarts: int,
    seed: int,
    out: np.ndarray,
) -> None: ...
def cp_als_mse(
    tensor: np.ndarray,
    dims: list[int],
    r: int,
    tol: float,
    max_iter: int,
    seed: int,
    index: int,
    restart: int,
) -> float: ...
def fma_probe(dtype: str, threads: int, rounds: int) -> float: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def team(units: int, flops_per_unit: float) -> int: ...
def min_flops_per_thread() -> float: ...
def cpu_levels() -> list[str]: ...
def build_info() -> dict[str, Any]: ...
