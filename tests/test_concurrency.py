"""Ctrl-C and threads: an interrupted call leaves a model exactly where the uninterrupted run
stands at the recorded step count, and two threads on one model take turns."""

from __future__ import annotations

import copy
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import implicitreg as ir
from implicitreg import models
from implicitreg._interrupt import model_lock

LR = 1e-3


def _dmf(batch=64):
    rng = np.random.default_rng(0)
    p = ir.completion(rng.standard_normal((batch, 5, 5)), rng.random((batch, 5, 5)) < 0.6)
    return ir.DeepFactorization.init(p, depth=3, scale=0.5, seed=1)


def _cp(batch=64):
    rng = np.random.default_rng(0)
    q = ir.tensor_completion(
        rng.standard_normal((batch, 3, 4, 3)), rng.random((batch, 3, 4, 3)) < 0.6
    )
    return ir.CPFactorization.init(q, rank=6, scale=0.3, seed=1)


MAKE = {"dmf": _dmf, "cp": _cp}


def _same_state(got, want):
    assert got.steps_done == want.steps_done
    for a, b in zip(got.factors, want.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.status, want.status)


def _interrupt_after(seconds: float) -> threading.Timer:
    """Ctrl-C for this process in `seconds` (Python hands it to the main thread)."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.fixture
def short_calls(monkeypatch):
    """Calls of a few hundred steps each, so that an interrupt lands between and inside many."""
    monkeypatch.setattr(models.base, "WORK_PER_CALL", {"cpu": 10**7, "numpy": 10**7, "cuda": 10**7})


@pytest.mark.parametrize("kind", list(MAKE))
@pytest.mark.parametrize("call", ["step", "fit"])
def test_ctrl_c_leaves_the_state_of_the_recorded_step_count(kind, call, short_calls):
    f = MAKE[kind]()
    timer = _interrupt_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        if call == "step":
            f.step(LR, 10**9)
        else:
            f.fit(LR, max_steps=10**9, log=ir.every(10**8), progress=False)
    timer.join()
    assert f.steps_done > 0
    again = MAKE[kind]()
    again.step(LR, f.steps_done)
    _same_state(f, again)


def test_ctrl_c_goes_to_the_handler_installed_before(short_calls):
    """A handler of the user's own gets the held Ctrl-C (here: it stops the run its way)."""

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGINT, handler)
    try:
        f = _dmf()
        timer = _interrupt_after(0.3)
        with pytest.raises(Stop):
            f.step(LR, 10**9)
        timer.join()
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    again = _dmf()
    again.step(LR, f.steps_done)
    _same_state(f, again)


@pytest.mark.parametrize("kind", list(MAKE))
def test_two_threads_on_one_model_take_turns(kind, short_calls):
    f = MAKE[kind]()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda n: f.step(LR, n), [3000, 5000]))
    whole = MAKE[kind]()
    whole.step(LR, 8000)
    _same_state(f, whole)


def test_two_models_step_in_parallel_as_alone(short_calls):
    f, g = _dmf(), _cp()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda m: m.step(LR, 4000), [f, g]))
    for got, make in ((f, _dmf), (g, _cp)):
        alone = make()
        alone.step(LR, 4000)
        _same_state(got, alone)


@pytest.mark.parametrize("kind", list(MAKE))
def test_a_copied_model_has_its_own_lock_and_state(kind):
    f = MAKE[kind]()
    f.step(LR, 10)
    g = copy.deepcopy(f)
    g.step(LR, 10)
    f.step(LR, 10)
    _same_state(g, f)
    assert model_lock(g) is not model_lock(f)


_PARALLEL = r"""
import json, threading, time
import numpy as np
import implicitreg as ir

def dmf():
    rng = np.random.default_rng(0)
    p = ir.completion(rng.standard_normal((512, 5, 5)), rng.random((512, 5, 5)) < 0.6)
    return ir.DeepFactorization.init(p, depth=3, scale=0.5, seed=1)

def cp():
    rng = np.random.default_rng(0)
    q = ir.tensor_completion(rng.standard_normal((64, 4, 4, 4)), rng.random((64, 4, 4, 4)) < 0.6)
    return ir.CPFactorization.init(q, rank=8, scale=0.3, seed=1)

STEPS = {"dmf": 1500, "cp": 6000}
make = {"dmf": dmf, "cp": cp}
kind = __import__("sys").argv[1]
alone = make[kind]()
alone.step(1e-3, 20)  # warm
ratios, overlaps = [], []
# each try times one run alone and then the pair, so that both see the same machine load
for _ in range(4):
    want = make[kind]()
    t0 = time.perf_counter()
    want.step(1e-3, STEPS[kind])
    one = time.perf_counter() - t0
    models, spans = [make[kind](), make[kind]()], [None, None]
    def run(i):
        a = time.perf_counter()
        models[i].step(1e-3, STEPS[kind])
        spans[i] = (a, time.perf_counter())
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    t0 = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    ratios.append((time.perf_counter() - t0) / one)
    (a0, a1), (b0, b1) = spans
    overlaps.append((min(a1, b1) - max(a0, b0)) / min(a1 - a0, b1 - b0))
    exact = all(np.array_equal(U, V) for m in models for U, V in zip(m.factors, want.factors))
    assert exact
print(json.dumps({"ratio": min(ratios), "overlap": max(overlaps)}))
"""


@pytest.mark.parametrize("kind", list(MAKE))
def test_two_models_run_in_parallel_without_the_gil(kind):
    """The kernels run without the GIL: two threads on two models, one OpenMP thread each,
    overlap in time and take less than 1.5x one run's wall time; both results are exact."""
    import json
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: two threads cannot run at once")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", _PARALLEL, kind],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["overlap"] > 0.5, got  # with the GIL held the calls could not overlap at all
    assert got["ratio"] < 1.5, got
