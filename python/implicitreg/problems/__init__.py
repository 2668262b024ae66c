"""What is learned: batches of matrix completion and matrix sensing problems (matrix.py) and
of tensor completion problems (tensor.py).

A problem batch holds B problems of one shape (m, n). Arrays are stored with a leading batch
axis of size B, or of size 1 when one problem is shared by the whole batch (the kernels read
it with batch stride 0, so a million seeds of the 2x2 problem cost no memory).

Loss: 1/2 * sum of squared residuals per problem for the matrix problems, the mean squared
error over the observed entries for tensor completion.
"""

from __future__ import annotations

from .matrix import (
    Completion,
    Sensing,
    completion,
    paper_2x2,
    paper_family,
    perturbed_2x2,
    random_low_rank_completion,
    random_sensing,
    sensing,
)
from .tensor import TensorCompletion, observe_first, random_cp_tensor, tensor_completion

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
