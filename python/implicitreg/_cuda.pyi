# _cuda (and _cuda_emulated, the same functions run on the CPU): _core's kernels and codes on
# device arrays (anything with __cuda_array_interface__, C-contiguous), on CuPy's current
# stream.
from typing import Any

import numpy as np

STATUS: dict[str, int]
OPTIMIZERS: dict[str, int]
METRIC_KINDS: dict[str, int]
SVD_INFO: dict[str, int]
LIMITS: dict[str, int]

def device_count() -> int: ...
def device_info() -> dict[str, Any]: ...
def dmf_step(
    factors: list[Any],
    target: Any,
    mask: Any,
    A: Any,
    y: Any,
    lr: Any,
    steps: int,
    tol: float,
    step0: int,
    status: Any,
    frozen_at: Any,
    optimizer: dict[str, Any] | None = None,
    thresholds: Any = None,
    crossed_at: Any = None,
    snapshots: list[Any] | None = None,
) -> None: ...
def dmf_loss(
    factors: list[Any], target: Any, mask: Any, A: Any, y: Any, loss: Any, product: Any
) -> None: ...
def svdvals(X: Any, s: Any, info: Any, max_sweeps: int = 40) -> None: ...
def svd(X: Any, U: Any, s: Any, Vh: Any, info: Any, max_sweeps: int = 40) -> None: ...
def svals_metrics(s: Any, kinds: np.ndarray, params: np.ndarray, out: Any) -> None: ...
def balancedness(factors: list[Any], out: Any) -> None: ...
def dmf_measure(
    factors: list[Any],
    target: Any,
    mask: Any,
    A: Any,
    y: Any,
    kinds: np.ndarray,
    params: np.ndarray,
    out: Any,
    truth: Any = None,
) -> None: ...
def cp_step(
    factors: list[Any],
    target: Any,
    mask: Any,
    lr: Any,
    steps: int,
    tol: float,
    step0: int,
    observed: Any,
    status: Any,
    frozen_at: Any,
    loss: Any,
    optimizer: dict[str, Any] | None = None,
) -> None: ...
def cp_tensor(factors: list[Any], out: Any) -> None: ...
