"""The threads of the CPU kernels: ir.set_num_threads, OMP_NUM_THREADS and threadpoolctl are
obeyed, small calls run on one thread, OpenMP waits passively unless told otherwise, and the
results do not depend on the thread count."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import implicitreg as ir
from implicitreg import _backend

CORE = _backend._core


@pytest.fixture(autouse=True)
def default_threads():
    yield
    ir.set_num_threads(None)


def _child(code: str, **env: str) -> str:
    """stdout of `code` run in a fresh interpreter, with env added and OMP_* of ours removed."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    root = os.path.dirname(os.path.dirname(ir.__file__))
    base["PYTHONPATH"] = os.pathsep.join(p for p in (root, base.get("PYTHONPATH")) if p)
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_set_num_threads_round_trip():
    default = ir.get_num_threads()
    assert default >= 1 and ir.build_info()["threads"] == default
    ir.set_num_threads(1)
    assert ir.get_num_threads() == 1 and ir.build_info()["threads"] == 1
    ir.set_num_threads(None)
    assert ir.get_num_threads() == default
    ir.set_num_threads(0)
    assert ir.get_num_threads() == default


@pytest.mark.parametrize(
    "n, error, match",
    [
        (-1, ValueError, "n: expected an integer >= 0, got -1"),
        (1.5, TypeError, "n: expected an integer, got float 1.5"),
        ("2", TypeError, "n: expected an integer, got str '2'"),
    ],
)
def test_set_num_threads_refuses_bad_input(n, error, match):
    with pytest.raises(error, match=match):
        ir.set_num_threads(n)


def test_omp_num_threads_is_obeyed():
    code = "import implicitreg as ir; print(ir.get_num_threads(), ir.build_info()['threads'])"
    assert _child(code, OMP_NUM_THREADS="1") == "1 1"


def test_wait_policy_is_passive_unless_the_user_chose_one():
    code = (
        "import os, implicitreg as ir; "
        "print(os.environ['OMP_WAIT_POLICY'], ir.build_info()['omp_wait_policy'])"
    )
    assert _child(code) == "PASSIVE PASSIVE"
    assert _child(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE ACTIVE"


def test_threadpoolctl_limits_and_reports_the_kernels_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if ir.get_num_threads() < 2:
        pytest.skip("one thread here: nothing to limit")
    ours = [
        lib
        for lib in threadpoolctl.threadpool_info()
        if lib["user_api"] == "openmp" and "gomp" in os.path.basename(lib["filepath"])
    ]
    assert ours, "threadpoolctl does not see the kernels' OpenMP library"
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert ir.get_num_threads() == 1
    assert ir.get_num_threads() >= 2
    ir.set_num_threads(1)  # and the other way round: threadpoolctl reads ours
    info = [
        lib for lib in threadpoolctl.threadpool_info() if lib["filepath"] == ours[0]["filepath"]
    ]
    assert info[0]["num_threads"] == 1


def test_small_calls_run_on_one_thread_large_ones_on_all():
    threads, least = ir.get_num_threads(), CORE.min_flops_per_thread()
    assert CORE.team(1, 1e12) == 1  # one unit: one thread
    assert CORE.team(4096, 30) == 1  # 2x2 svdvals of 4096 matrices: about 120 kflop
    assert CORE.team(1000, 1e9) == threads
    assert CORE.team(4, 0.2 * least) == 1  # less than one thread's worth in all
    assert CORE.team(3, 0.9 * least) == min(threads, 2)  # two threads' worth
    ir.set_num_threads(1)
    assert CORE.team(1000, 1e9) == 1


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(0)
    p = ir.completion(rng.standard_normal((37, 30, 30)), rng.random((37, 30, 30)) < 0.5)
    X = rng.standard_normal((300, 8, 8))
    runs = []
    for n in (1, 2):
        ir.set_num_threads(n)
        f = ir.DeepFactorization.init(p, depth=3, scale=0.1, seed=1)
        f.step(1e-2, 20)
        runs.append((f.factors, ir.svdvals(X)))
    for a, b in zip(runs[0][0] + [runs[0][1]], runs[1][0] + [runs[1][1]], strict=True):
        np.testing.assert_array_equal(a, b)
