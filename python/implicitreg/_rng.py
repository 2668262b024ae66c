"""Per-problem random streams: problem b of a batch draws from a generator that depends only
on (seed, stream, b), so its data and start are the same whatever the batch size or backend."""

from __future__ import annotations

import numpy as np

from ._checks import integer

_STREAMS = {"problem": 0, "init": 1}


def generator(seed: int, stream: str, b: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[stream], b)))


def check_seed(seed) -> int:
    return integer(seed, "seed", minimum=0)
