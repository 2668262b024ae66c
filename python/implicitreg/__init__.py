"""implicitreg: many small factorizations trained by gradient descent at once.

Deep matrix factorizations E = W_N ... W_1 (linear neural networks) on batches of matrix
completion and sensing problems, with a fused C++ core and a pure-NumPy reference backend,
built to reproduce and extend Razin & Cohen, "Implicit Regularization in Deep Learning May
Not Be Explainable by Norms" (NeurIPS 2020).
"""

from __future__ import annotations

from . import baselines, metrics, problems
from ._backend import backends, build_info
from ._threads import get_num_threads, set_num_threads
from .metrics import svd, svdvals, tensor_rank
from .models import CPFactorization, DeepFactorization
from .problems import completion, sensing, tensor_completion
from .sweep import SweepResult, load_sweep, sweep
from .trajectory import Trajectory, every, geometric, load

__version__: str = build_info()["version"]  # type: ignore[assignment]

__all__ = [
    "CPFactorization",
    "DeepFactorization",
    "SweepResult",
    "Trajectory",
    "__version__",
    "backends",
    "baselines",
    "build_info",
    "completion",
    "every",
    "geometric",
    "get_num_threads",
    "load",
    "load_sweep",
    "metrics",
    "problems",
    "sensing",
    "set_num_threads",
    "svd",
    "svdvals",
    "sweep",
    "tensor_completion",
    "tensor_rank",
]
