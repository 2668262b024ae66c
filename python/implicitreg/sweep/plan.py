"""Planning a sweep: its configs grouped into batches, each config checked on one problem
before anything runs, and the batches sized to this machine's memory and to the device's."""

from __future__ import annotations

import numpy as np

from .. import _backend
from .._checks import available_memory, choice, integer
from ..init import init_factors
from ..metrics import RANK_CRITERIA
from ..models import DeepFactorization
from ..models.base import GENERATOR_BYTES
from .config import batch_key, build_problem, cp_model, log_of, optimizer_of

__all__ = ["check_batch_memory", "dry_run", "group", "plan_batches"]


def group(configs: list[dict]) -> tuple[list[dict], list[tuple[int, int]]]:
    """The configs in batch order and each batch's span (a, b) of them: configs that share
    everything but per-problem values run as one batch."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(batch_key(c), []).append(i)
    ordered = [configs[i] for g in groups.values() for i in g]  # row blocks follow batches
    spans, at = [], 0
    for g in groups.values():
        spans.append((at, at + len(g)))
        at += len(g)
    return ordered, spans


def dry_run(cfg: dict, backend: str) -> tuple[int, int]:
    """Every check a config's run would make, on one problem, so that a bad value is refused
    before any batch runs (and before an output directory is claimed); returns about how many
    bytes each of the config's problems takes in a batch: in host memory, and on the device
    (the cuda backend's state, problem data and kernel scratch), as its model counts them,
    plus the sweep's own copies on the host."""
    problem = build_problem(cfg, 1)
    optimizer, log = optimizer_of(cfg), log_of(cfg["log"])
    if cfg["model"] == "cp":
        if cfg["thresholds"]:
            raise ValueError("thresholds: not recorded for model 'cp'; pass thresholds=()")
        integer(cfg["rank_restarts"], "rank_restarts", minimum=0)
        choice(cfg["rank_criterion"], "rank_criterion", RANK_CRITERIA)
        cp = cp_model(cfg, problem, backend)
        cp.check_fit(
            cfg["lr"],
            cfg["max_steps"],
            cfg["tol"],
            log,
            cfg["metrics"],
            optimizer,
            patience=cfg["patience"],
            check_every=cfg["check_every"],
        )
        need = cp.bytes_per_problem(cfg["metrics"], log, cfg["max_steps"], optimizer)
        ends = 8 * int(np.prod(cp.dims))  # the end-of-run tensor, or the memorizer's
        size = sum(U.size for U in cp.factors)
    else:
        factors = init_factors(
            problem.shape,
            1,
            cfg["depth"],
            cfg["widths"],
            cfg["init"],
            cfg["scale"],
            cfg["scale_by"],
            cfg["init_det"],
            cfg["init_seed"],
        )
        dmf = DeepFactorization(problem, factors, backend=backend, dtype=cfg["dtype"])
        dmf.check_fit(
            cfg["lr"],
            cfg["max_steps"],
            cfg["tol"],
            log,
            cfg["metrics"],
            cfg["thresholds"],
            optimizer,
        )
        need = dmf.bytes_per_problem(
            cfg["metrics"], cfg["thresholds"], log, cfg["max_steps"], optimizer
        )
        ends, size = 0, sum(W.size for W in factors)
    # the sweep's own: each config's problem before the batch joins them, each config's start
    # drawn in float64 (with its generator) and the joined starts
    return need["host"] + need["problem"] + 2 * 8 * size + GENERATOR_BYTES + ends, need["device"]


def check_batch_memory(configs: list[dict], need: list[int], seeds: int, bi: int) -> None:
    """Refuse, before anything runs, a batch that would not fit in this machine's memory,
    naming how many seeds would."""
    per_seed = sum(need)
    have = available_memory()
    if have is None or per_seed * seeds <= have:
        return
    fits = have // per_seed
    raise ValueError(
        f"seeds: batch {bi} ({len(configs)} configs x {seeds} seeds = "
        f"{len(configs) * seeds} problems) needs about "
        f"{per_seed * seeds / 2**30:.3g} GiB, more than the {have / 2**30:.3g} "
        f"GiB of memory available here; the largest batch that fits is "
        f"{fits * len(configs)} problems: {fits} seeds (or fewer configs per "
        "batch)"
    )


# Of the device's free memory, the share a batch may plan on: the estimates leave out CuPy's
# rounding of allocations and the kernels' small buffers.
_DEVICE_SHARE = 0.8


def plan_batches(
    spans: list[tuple[int, int]], device_need: list[int], seeds: int, backend: str
) -> list[tuple[int, int, int, int]]:
    """The batches (a, b, s0, s1) — configs[a:b], seeds s0..s1-1 — of the groups `spans`.
    One batch per group, except on cuda where a group that would not fit in the device's free
    memory (queried now) is cut into consecutive batches: by configs first, then by seeds, so
    the table's rows keep their order and every problem its start."""
    if backend != "cuda":
        return [(a, b, 0, seeds) for a, b in spans]
    free = _backend.device_memory()
    plan = []
    for a, b in spans:
        per = max(device_need[a:b])
        cap = int(free * _DEVICE_SHARE) // per  # problems in one batch
        if cap < 1:
            raise ValueError(
                f"seeds: one problem of configs {a}..{b - 1} needs about "
                f"{per / 2**20:.3g} MiB on the device, more than the "
                f"{free / 2**20:.3g} MiB free there; the largest batch that fits "
                "is 0 problems: make the problem smaller (dims, rank, depth, "
                "thresholds) or free the device"
            )
        if (b - a) * seeds <= cap:
            plan.append((a, b, 0, seeds))
        elif seeds <= cap:
            k = cap // seeds
            plan += [(c, min(b, c + k), 0, seeds) for c in range(a, b, k)]
        else:
            plan += [
                (c, c + 1, s, min(seeds, s + cap))
                for c in range(a, b)
                for s in range(0, seeds, cap)
            ]
    return plan
