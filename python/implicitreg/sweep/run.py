"""Running a sweep's batches: one batch as one fused fit (and, for CP, the end-of-run tensor
ranks and baseline), in this process or as Ray tasks on a cluster."""

from __future__ import annotations

import os
import socket
import time

import numpy as np

from .._backend import to_host
from .._threads import set_num_threads
from ..baselines import memorizer, min_norm
from ..init import init_factors
from ..metrics import effective_rank, tensor_rank
from ..models import CPFactorization, DeepFactorization
from ..trajectory import Trajectory
from .config import (
    build_problem,
    concat_problems,
    cp_model,
    log_of,
    optimizer_of,
    problem_key,
    take_seeds,
)
from .store import batch_path, threshold_label

__all__ = ["EXECUTORS", "RAY_TASK", "ray_connect", "ray_run", "run_batch"]


def run_batch(
    configs: list[dict],
    seeds: tuple[int, int],
    backend: str,
    advance,
    checkpoint,
    checkpoint_every: float,
) -> tuple[dict, Trajectory, float]:
    """Train one batch, seeds s0..s1-1 of each config; (result columns without the config
    values, trajectory, seconds). Problems and starts are drawn for seeds 0..s1-1 and cut,
    so that a problem is the same whichever batch it runs in."""
    c0 = configs[0]
    s0, s1 = seeds
    keys = [problem_key(c) for c in configs]
    built: dict[str, object] = {}  # configs that differ only in training share their problems
    for c, key in zip(configs, keys, strict=True):
        if key not in built:
            built[key] = build_problem(c, s1)
    whole = [built[key] for key in keys]
    cut = {key: take_seeds(p, s0, s1) for key, p in built.items()} if s0 else built
    problem = concat_problems([cut[key] for key in keys])
    if c0["model"] == "cp":
        return _run_cp_batch(
            configs, whole, problem, seeds, backend, advance, checkpoint, checkpoint_every
        )
    factors = None
    for c in configs:  # each config's seeds 0..s1-1: the same starts across configs
        f = init_factors(
            problem.shape,
            s1,
            c["depth"],
            c["widths"],
            c["init"],
            c["scale"],
            c["scale_by"],
            c["init_det"],
            c["init_seed"],
        )
        f = [W[s0:] for W in f]
        factors = (
            f
            if factors is None
            else [np.concatenate([a, b]) for a, b in zip(factors, f, strict=True)]
        )
    lr = np.repeat([c["lr"] for c in configs], s1 - s0).astype(np.float64)
    assert factors is not None  # one set per config, and a batch has at least one
    model = DeepFactorization(problem, factors, backend=backend, dtype=c0["dtype"])
    t0 = time.perf_counter()
    traj = model.fit(
        lr,
        c0["max_steps"],
        tol=c0["tol"],
        log=log_of(c0["log"]),
        metrics=c0["metrics"],
        thresholds=c0["thresholds"],
        progress=advance,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        optimizer=optimizer_of(c0),
        eps=c0.get("optimizer_eps"),
    )
    seconds = time.perf_counter() - t0
    cols = _result_columns(traj)
    if traj.crossings is not None:
        for k, t in enumerate(traj.crossings["thresholds"]):
            lab = threshold_label(t)
            cols[f"step@{lab}"] = traj.crossings["step"][k]
            for name in traj.data:
                _put(cols, f"{name}@{lab}", traj.crossings[name][k])
    for norm in c0.get("min_norms", ()):
        cols.update(_min_norm_columns(cut, keys, norm))
    return cols, traj, seconds


def _min_norm_columns(distinct: dict, keys: list[str], norm: str) -> dict:
    """The fit `norm` picks for each problem of the batch (the configs' problems, distinct[k]
    for each config's key k, in order): its norm, certified gap (nuclear), effective rank and,
    where the truth is known, reconstruction error (as the metric recon_error). Each distinct
    problem is solved once."""
    solved = concat_problems(list(distinct.values()))
    fit = min_norm(solved, norm)
    cols = {
        f"min_{norm}": fit.value,
        f"min_{norm}_gap": fit.gap,
        f"min_{norm}_erank": effective_rank(fit.matrices),
    }
    if solved.truth is not None:
        cols[f"min_{norm}_recon_error"] = _relative_error(fit.matrices, solved.truth)
    n, slot = next(iter(distinct.values())).batch, {k: u for u, k in enumerate(distinct)}
    rows = np.concatenate([slot[k] * n + np.arange(n) for k in keys])
    return {k: v[rows] for k, v in cols.items()}


def _relative_error(X: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """||X_b - truth_b||_F / ||truth_b||_F per problem b (truth broadcast over the batch)."""
    B = X.shape[0]
    t = np.broadcast_to(truth, X.shape).reshape(B, -1)
    return np.linalg.norm(X.reshape(B, -1) - t, axis=1) / np.linalg.norm(t, axis=1)


def _run_cp_batch(configs, whole, problem, seeds, backend, advance, checkpoint, checkpoint_every):
    """The CP version of run_batch: fit, then the end-of-run tensor ranks and baseline."""
    c0 = configs[0]
    s0, s1 = seeds
    # drawn on the host for seeds 0..s1-1, cut and joined, then placed on the backend once
    starts = [cp_model(c, p, "cpu").factors for c, p in zip(configs, whole, strict=True)]
    factors = [np.concatenate([s[n][s0:] for s in starts]) for n in range(len(starts[0]))]
    lr = np.repeat([c["lr"] for c in configs], s1 - s0).astype(np.float64)
    model = CPFactorization(problem, factors, backend=backend, dtype=c0["dtype"])
    t0 = time.perf_counter()
    traj = model.fit(
        lr,
        c0["max_steps"],
        tol=c0["tol"],
        log=log_of(c0["log"]),
        metrics=c0["metrics"],
        optimizer=optimizer_of(c0),
        eps=c0.get("optimizer_eps"),
        patience=c0["patience"],
        check_every=c0["check_every"],
        progress=advance,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    cols = _result_columns(traj)
    restarts = int(c0["rank_restarts"])
    if restarts:
        cols["tensor_rank"] = to_host(
            tensor_rank(
                model.tensor(),
                restarts=restarts,
                backend=backend,
                order=model.order,
                criterion=c0["rank_criterion"],
            )
        )
    if c0["baseline"]:
        mem = memorizer(problem)
        cols["memorizer_error"] = _relative_error(mem, problem.targets)
        if restarts:
            cols["memorizer_rank"] = tensor_rank(
                mem,
                restarts=restarts,
                backend=backend,
                order=model.order,
                criterion=c0["rank_criterion"],
            )
    return cols, traj, time.perf_counter() - t0


def _result_columns(traj: Trajectory) -> dict:
    """Status, steps run, column index and every metric's last logged value, per problem."""
    cols = {
        "status": traj.status.copy(),
        "steps": np.where(traj.frozen_at >= 0, traj.frozen_at, traj.steps[-1]),
        "index": np.arange(traj.batch),
    }
    for name, v in traj.data.items():
        _put(cols, name, v[-1])
    return cols


def _put(cols: dict, name: str, v: np.ndarray) -> None:
    """A (B,) metric as one column, a (B, k) one (svals) as name:0 ... name:k-1."""
    if v.ndim == 1:
        cols[name] = v
    else:
        for i in range(v.shape[1]):
            cols[f"{name}:{i}"] = v[:, i]


EXECUTORS = ("local", "ray")
RAY_TASK = "implicitreg_sweep_batch"  # the task name (a worker's process title while it runs)


def ray_connect(address):
    """The ray module, connected to the cluster at `address` (see sweep)."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("executor: 'ray' needs Ray: pip install 'implicitreg[ray]'") from exc
    if address is not None and not isinstance(address, str):
        raise TypeError(
            f"address: expected a Ray cluster address such as 'auto' or "
            f"'ray://host:10001', got {type(address).__name__} {address!r}"
        )
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RuntimeError(
                f"address: could not connect to a Ray cluster at {address!r}: {exc}"
            ) from exc
    return ray


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """A concrete address ("host:port", "ray://host:port") must answer before Ray is asked:
    Ray itself retries an unreachable address for minutes before giving up."""
    if address is None or address in ("auto", "local"):
        return
    hostport = address[len("ray://") :] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"address: expected 'HOST:PORT', 'ray://HOST:PORT', 'auto' or 'local', got {address!r}"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeError(
            f"address: no Ray cluster answers at {address!r} ({exc}); start "
            "one with `ray start --head` on the head node, and pass its "
            "address"
        ) from exc


def _ray_batch(
    configs: list[dict],
    seeds: tuple[int, int],
    backend: str,
    ckpt: str | None,
    checkpoint_every: float,
    node: str,
) -> tuple[dict, Trajectory, float]:
    """One batch in a Ray worker. The running batch is checkpointed into the results
    directory only on the driver's node: elsewhere that path is another machine's (a retry
    there, or a resume, restarts the batch from its beginning)."""
    import ray

    use_reserved_cpus(ray)
    if ckpt is not None and ray.get_runtime_context().get_node_id() != node:
        ckpt = None
    return run_batch(configs, seeds, backend, lambda n: None, ckpt, checkpoint_every)


def use_reserved_cpus(ray) -> int:
    """In a Ray task: run the CPU kernels on as many threads as the task reserved CPUs (at
    least one), and return that count. A worker process serves task after task, and the
    OpenMP count it started with (every core, or Ray's OMP_NUM_THREADS) is not this task's
    share."""
    n = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    set_num_threads(n)
    return n


def ray_run(
    ray,
    todo: list[tuple[int, list[dict], tuple[int, int]]],
    backend: str,
    out,
    checkpoint_every: float,
    max_retries: int,
):
    """Yield (batch index, run_batch's result) for each batch of `todo`, in the order they
    finish. Every batch is submitted at once; Ray queues what the cluster cannot yet run."""
    task = ray.remote(_ray_batch).options(
        num_cpus=1, num_gpus=1 if backend == "cuda" else 0, max_retries=max_retries, name=RAY_TASK
    )
    node = ray.get_runtime_context().get_node_id()
    pending = {}
    for bi, group, seeds in todo:
        ckpt = None if out is None else os.path.abspath(batch_path(out, bi, "ckpt.npz"))
        pending[task.remote(group, seeds, backend, ckpt, checkpoint_every, node)] = bi
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                bi = pending.pop(ref)
                try:
                    got = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    # the batch's own error, as the local executor would raise it
                    raise (exc.cause if isinstance(exc.cause, Exception) else exc) from exc
                except ray.exceptions.RayError as exc:  # its worker or node died, retries spent
                    raise RuntimeError(
                        f"executor: batch {bi} failed on Ray after {max_retries} retries: {exc}"
                    ) from exc
                yield bi, got
    finally:
        for ref in pending:  # an error or an interrupt: stop what still runs
            ray.cancel(ref, force=True)
