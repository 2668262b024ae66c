"""pytest-benchmark suite of the compiled kernels, for regression tracking (extra `bench`):

    pytest benchmarks/ --benchmark-only                       # time, print the table
    pytest benchmarks/ --benchmark-only --benchmark-autosave  # keep it in .benchmarks/
    pytest benchmarks/ --benchmark-only --benchmark-compare   # against the last one kept
    pytest benchmarks/ --benchmark-disable                    # each body once: a smoke test

One benchmark per kernel and size on the `cpu` backend (the side-by-side comparison with
numpy, PyTorch and JAX is `implicitreg bench`). Each timed call is a fixed amount of work:
a step call runs STEPS steps of a model that keeps its state between rounds (small lr, no
tolerance, so no problem freezes and every step is real work); extra_info gives the batch
and the steps, so that problem-steps/s = batch * steps / the mean.
"""

from __future__ import annotations

import numpy as np
import pytest

import implicitreg as ir

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is in the 'bench' extra")


def _dmf(d: int, batch: int, dtype: str):
    if d == 2:
        p = ir.problems.paper_2x2(batch=batch)
    else:
        p = ir.problems.random_low_rank_completion(d, d, 3, d * d // 2, batch=batch, seed=0)
    return ir.DeepFactorization.init(p, depth=3, scale=1e-2, seed=0, dtype=dtype)


@pytest.mark.parametrize(
    "d, batch, steps, dtype",
    [(2, 4096, 200, "float64"), (2, 4096, 200, "float32"), (16, 1024, 2, "float64")],
    ids=["2x2-f64", "2x2-f32", "16x16-f64"],
)
def test_dmf_step(benchmark, d, batch, steps, dtype):
    f = _dmf(d, batch, dtype)
    benchmark.group = "dmf_step"
    benchmark.extra_info.update(batch=batch, steps=steps, depth=3, dtype=dtype)
    benchmark(f.step, 1e-4, steps)
    assert (f.status == "running").all()


@pytest.mark.parametrize("n, batch", [(2, 65536), (8, 8192)], ids=["2x2", "8x8"])
def test_svdvals(benchmark, n, batch):
    X = np.random.default_rng(0).standard_normal((batch, n, n))
    benchmark.group = "svdvals"
    benchmark.extra_info.update(batch=batch)
    s = benchmark(ir.svdvals, X)
    assert s.shape == (batch, n)


@pytest.mark.parametrize("optimizer", ["group_rmsprop", "gd"])
def test_cp_step(benchmark, optimizer):
    dims, batch, steps = (8, 8, 8), 256, 5
    T, orders = ir.problems.random_cp_tensor(dims, 1, batch=batch, seed=0)
    q = ir.tensor_completion(T, ir.problems.observe_first(orders, 200, dims))
    c = ir.CPFactorization.init(q, rank=64, scale=1e-2, seed=0)
    benchmark.group = "cp_step"
    benchmark.extra_info.update(batch=batch, steps=steps, order=3, dim=8, rank=64, n_obs=200)
    benchmark(c.step, 1e-3, steps, optimizer=optimizer)
    assert (c.status == "running").all()


def test_tensor_rank_small(benchmark):
    dims = (8, 8, 8)
    T = np.concatenate(
        [ir.problems.random_cp_tensor(dims, 1 + b % 2, batch=1, seed=b)[0] for b in range(8)]
    )
    benchmark.group = "tensor_rank"
    benchmark.extra_info.update(batch=8)
    ranks = benchmark(ir.tensor_rank, T)
    assert ranks.tolist() == [1, 2] * 4
