"""Sweeps: a grid of configurations x seeds, grouped into batches that share a shape, a depth,
a dtype and a training schedule, each trained as one fused batch; the result is a tidy table,
one row per (config, seed), with the trajectories kept beside it.

A configuration is a flat dict (DEFAULTS lists every key; they are the arguments of the
problem builders, of DeepFactorization.init and of fit, except init_det, init_seed and
target_rank for init's det and seed and the builders' rank, so that no key is also a metric
name). Problem b of a config is its seed b: its start (and, for random problems, its data)
depends only on (init_seed, b) (and (problem_seed, b)), so every config of a sweep sees the
same seeds (paired comparisons) whatever the batching.

The modules: config.py (keys, defaults, the grid), plan.py (grouping, checks, memory),
run.py (the batches, locally or on Ray), store.py (the table and the results directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._backend import build_info
from .._checks import choice, integer
from ..models.fit import check_progress, progress_bar
from ..models.fit import checkpoint_every as check_checkpoint_every
from ..trajectory import Trajectory
from .config import DEFAULTS, MODEL_DEFAULTS, MODEL_KEYS, PROBLEMS, expand
from .plan import check_batch_memory, dry_run, group, plan_batches
from .run import EXECUTORS, ray_connect, ray_run, run_batch
from .store import (
    SweepResult,
    batch_path,
    config_columns,
    jsonable,
    load_sweep,
    locked,
    machine,
    prepare_dir,
    read_batch,
    stack,
    threshold_label,
    write_batch,
)

__all__ = [
    "DEFAULTS",
    "EXECUTORS",
    "MODEL_DEFAULTS",
    "MODEL_KEYS",
    "PROBLEMS",
    "SweepResult",
    "expand",
    "load_sweep",
    "sweep",
    "threshold_label",
]


def sweep(
    base: dict,
    grid: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    seeds: int = 8,
    backend: str = "cpu",
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: Callable[[int], object] | bool = True,
    executor: str = "local",
    checkpoint_every: float = 300.0,
    name: str = "sweep",
    info: dict | None = None,
    address: str | None = None,
    max_retries: int = 3,
) -> SweepResult:
    """Run every config of expand(base, grid) on `seeds` seeds and return a SweepResult.

    Configs that share everything but per-problem values (problem data such as eps or n_obs,
    the init, det and scale, seed, lr) run as one batch in one fused fit.
    out: a directory for results. Each finished batch is written there at once (atomically),
    and running batches are checkpointed every checkpoint_every seconds; resume=True skips
    finished batches and continues the others, ending with what an uninterrupted run gives.
    A directory holding other results is refused unless resume is set and it holds this very
    sweep; a directory holding anything else is refused. One process writes a directory at a
    time: a second one is refused, naming the first's PID and host, and the lock a killed
    process left behind (out/.lock) is taken over. name and info (JSON-able) are kept
    in the result's meta.
    executor: "local" runs the batches one after another in this process; "ray" runs each
    batch as a Ray task (extra "ray"; one CPU, and on backend "cuda" one GPU, per task) on
    the cluster at `address` ("HEAD:6379", "ray://HEAD:10001"; None: the one this process
    is connected to, else $RAY_ADDRESS, else the one `ray start` runs on this machine, else
    a new local one), reruns a batch up to max_retries times when its worker dies, and
    writes each batch into `out` as it arrives. Both give the same results, bit for bit.
    """
    # every argument is checked before `out` is claimed, so a corrected call can use it
    seeds = integer(seeds, "seeds", minimum=1)
    check_progress(progress)
    checkpoint_every = check_checkpoint_every(checkpoint_every)
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected True or False, got {resume!r}")
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    choice(executor, "executor", EXECUTORS)
    if address is not None and executor != "ray":
        raise ValueError(
            f"address: only used by executor 'ray', got executor {executor!r} "
            f"with address {address!r}"
        )
    max_retries = integer(max_retries, "max_retries", minimum=0)
    configs, spans = group(expand(base, grid))
    need = [dry_run(c, backend) for c in configs]
    host_need = [h for h, _ in need]
    if executor == "local" or address is None:  # a cluster's workers have their own memory
        for bi, (a, b) in enumerate(spans):
            check_batch_memory(configs[a:b], host_need[a:b], seeds, bi)
    ray = ray_connect(address) if executor == "ray" else None
    meta = {
        "name": name,
        "seeds": seeds,
        "backend": backend,
        "executor": executor,
        "version": build_info()["version"],
        "machine": machine(),
        **(info or {}),
    }
    spec = {"configs": configs, "seeds": seeds, "backend": backend}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=jsonable).encode()).hexdigest()
    plan = plan_batches(spans, [d for _, d in need], seeds, backend)
    # one process writes a results directory at a time (a second one is refused)
    with contextlib.nullcontext() if out is None else locked(out):
        if out is not None:  # a resumed sweep keeps the batches it started with
            plan = prepare_dir(out, digest, resume, name, plan)
        total = sum(configs[a]["max_steps"] for a, *_ in plan)
        advance, close = progress_bar(progress, total)
        done: list[tuple[dict, Trajectory, float] | None] = [None] * len(plan)
        try:
            for bi, (a, *_) in enumerate(plan):
                if out is not None and os.path.exists(batch_path(out, bi, "npz")):
                    done[bi] = read_batch(out, bi)
                    advance(configs[a]["max_steps"])
            todo = [bi for bi in range(len(plan)) if done[bi] is None]
            if ray is None:
                for bi in todo:
                    a, b, s0, s1 = plan[bi]
                    ran = [0]

                    def step_counter(n, ran=ran):
                        ran[0] += n
                        advance(n)

                    ckpt = None if out is None else batch_path(out, bi, "ckpt.npz")
                    got = run_batch(
                        configs[a:b], (s0, s1), backend, step_counter, ckpt, checkpoint_every
                    )
                    done[bi] = got
                    advance(configs[a]["max_steps"] - ran[0])
                    write_batch(out, bi, *got)
            else:
                work = [(i, configs[plan[i][0] : plan[i][1]], plan[i][2:]) for i in todo]
                for bi, got in ray_run(ray, work, backend, out, checkpoint_every, max_retries):
                    done[bi] = got
                    write_batch(out, bi, *got)
                    advance(configs[plan[bi][0]]["max_steps"])
        finally:
            close()
        trajs, parts, timings = [], [], []
        for bi, (a, b, s0, s1) in enumerate(plan):
            part = configs[a:b]
            finished = done[bi]
            assert finished is not None  # every batch was read back or run above
            cols, traj, seconds = finished
            n = len(part) * (s1 - s0)
            cols = {
                **config_columns(part, s1 - s0),
                "seed": np.tile(np.arange(s0, s1), len(part)),
                **cols,
                "batch": np.full(n, bi),
            }
            trajs.append(traj)
            parts.append(cols)
            timings.append(
                {
                    "batch": bi,
                    "configs": len(part),
                    "problems": n,
                    "seconds": seconds,
                    "problem_steps": int(np.sum(cols["steps"])),
                }
            )
        meta["timings"] = timings
        result = SweepResult(stack(parts), trajs, configs, meta)
        if out is not None:  # the trajectories were written as their batches finished
            result._save_tables(out)
        return result
