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
    q = ir.tensor_completion(rng.standard_normal((batch, 3, 4, 3)),
                             rng.random((batch, 3, 4, 3)) < 0.6)
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
    monkeypatch.setattr(models, "_WORK_PER_CALL", {"cpu": 10**7, "numpy": 10**7, "cuda": 10**7})


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
