"""Ctrl-C and threads around a model's state: a kernel call and the bookkeeping that records it
(the step count) happen together or not at all, and one model is changed by one thread at a
time."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading


@contextlib.contextmanager
def deferred_interrupt():
    """Holds a Ctrl-C (SIGINT) that arrives inside the block until the block ends, then hands
    it to the handler that was installed before (by default: KeyboardInterrupt is raised).

    Python raises KeyboardInterrupt at the first bytecode after a compiled call returns: without
    this, a kernel could have moved the factors and the interrupt land before the step count
    moved with them. Signals reach the main thread only, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    except ValueError:  # not the main interpreter's main thread: no signal comes here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(signal.SIGINT, held[0])
    elif held and previous != signal.SIG_IGN:  # the default, or a handler set from C
        raise KeyboardInterrupt


def serialized(method):
    """Runs the method under the model's own lock (a re-entrant one: fit calls step): two
    threads calling one model take turns, as if called one after the other; two models run in
    parallel."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with model_lock(self):
            return method(self, *args, **kwargs)

    return locked


_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The model's lock, made on first use (a model loaded or unpickled gets its own)."""
    lock = model.__dict__.get("_lock")
    if lock is None:
        with _GUARD:
            lock = model.__dict__.setdefault("_lock", threading.RLock())
    return lock
