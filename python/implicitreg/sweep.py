"""Sweeps: a grid of configurations x seeds, grouped into batches that share a shape, a depth,
a dtype and a training schedule, each trained as one fused batch; the result is a tidy table,
one row per (config, seed), with the trajectories kept beside it.

A configuration is a flat dict (DEFAULTS lists every key; they are the arguments of the
problem builders, of DeepFactorization.init and of fit, except init_det, init_seed and
target_rank for init's det and seed and the builders' rank, so that no key is also a metric
name). Problem b of a config is its seed b: its start (and, for random problems, its data)
depends only on (init_seed, b) (and (problem_seed, b)), so every config of a sweep sees the
same seeds (paired comparisons) whatever the batching.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import os
import platform
import socket
import time
import zipfile

import numpy as np

from . import _backend
from . import problems as problems_mod
from ._backend import build_info, to_host
from ._checks import available_memory, choice, integer
from ._io import load_npz, save_npz
from .init import init_factors
from .metrics import RANK_CRITERIA, tensor_rank
from .models import (
    _GENERATOR_BYTES,
    CPFactorization,
    DeepFactorization,
    _check_progress,
    _checkpoint_every,
    _progress,
    _thresholds,
    memorizer,
)
from .problems import completion, sensing, tensor_completion
from .trajectory import Trajectory, every, geometric
from .trajectory import load as load_trajectory

__all__ = ["DEFAULTS", "EXECUTORS", "MODEL_KEYS", "PROBLEMS", "SweepResult", "expand",
           "load_sweep", "sweep"]

# Problem builders of implicitreg.problems and the config keys each one reads.
PROBLEMS = {
    "paper_2x2": (),
    "perturbed_2x2": ("b12", "b21", "eps"),
    "paper_family": ("d",),
    "random_low_rank_completion": ("m", "n", "target_rank", "n_obs", "problem_seed"),
    "random_sensing": ("m", "n", "target_rank", "n_meas", "problem_seed", "std"),
    # tensor completion (model "cp"): random_cp_tensor of `order` modes of size `dim`,
    # observed at the first n_obs entries of its random order
    "random_cp_completion": ("order", "dim", "target_rank", "n_obs", "problem_seed"),
}

DEFAULTS = {
    # "dmf": DeepFactorization (matrix problems); "cp": CPFactorization (tensor completion)
    "model": "dmf",
    # what is learned
    "problem": "paper_2x2", "b12": -2.0, "b21": 0.5, "eps": 0.0, "d": 3, "m": 10, "n": 10,
    "target_rank": 2, "n_obs": 50, "n_meas": 50, "problem_seed": 0, "std": 1.0, "order": 3,
    "dim": 8,
    # where it starts (implicitreg.init)
    "depth": 3, "widths": None, "init": "normal", "scale": 1e-3, "scale_by": "product",
    "init_det": None, "init_seed": 0,
    # how it is trained and what is recorded (optimizer None: the model's, MODEL_DEFAULTS)
    "lr": 1e-3, "optimizer": None, "max_steps": 10_000, "tol": None, "log": 200,
    # metrics and thresholds None: the model's (MODEL_DEFAULTS); thresholds () records none
    "metrics": None, "thresholds": None,
    "dtype": "float64",
    # model "cp" only: components R (None: the largest CP rank), the stop rule of
    # CPFactorization.fit, and what is estimated at the end: the tensor rank of the
    # solution with rank_restarts CP-ALS starts per tried rank (0: not estimated) and
    # rank_criterion (implicitreg.tensor_rank's criterion), and with baseline the memorizer's
    # error and rank
    "components": None, "patience": None, "check_every": 100,
    "rank_restarts": 0, "rank_criterion": "relative", "baseline": False,
}
# What "metrics", "thresholds" and "optimizer" None mean, per model (a CP fit records no
# crossings).
MODEL_DEFAULTS = {
    "dmf": {"metrics": ("loss", "entry:0,0"), "thresholds": (1e-1, 1e-2, 1e-3, 1e-4),
            "optimizer": "gd"},
    "cp": {"metrics": ("loss", "recon_error"), "thresholds": (), "optimizer": "group_rmsprop"},
}
# Keys that may differ inside one batch (per-problem data, start or learning rate).
# The config keys each model reads, besides every config's and its problem's (PROBLEMS).
_COMMON_KEYS = ("model", "problem", "lr", "optimizer", "max_steps", "tol", "log", "metrics",
                "thresholds", "dtype")
MODEL_KEYS = {
    "dmf": ("depth", "widths", "init", "scale", "scale_by", "init_det", "init_seed"),
    "cp": ("components", "scale", "init_seed", "patience", "check_every", "rank_restarts",
           "rank_criterion", "baseline"),
}


def _takes(cfg: dict) -> set[str]:
    """The keys that a config's model and problem read: the ones it records."""
    return set(_COMMON_KEYS) | set(MODEL_KEYS[cfg["model"]]) | set(PROBLEMS[cfg["problem"]])


_PER_PROBLEM = {"b12", "b21", "eps", "target_rank", "n_obs", "problem_seed", "std", "init",
                "scale", "scale_by", "init_det", "init_seed", "lr"}
_FORMAT = "implicitreg.sweep/1"
_BATCH_FORMAT = "implicitreg.sweep-batch/1"


def expand(base: dict, grid=None) -> list[dict]:
    """Configs from base overridden by a grid: a dict whose list values are axes (their
    Cartesian product) or a list of such dicts (concatenated). Any other value, a tuple
    included (widths, metrics, thresholds), is a single choice. Every key is checked against
    DEFAULTS before anything runs."""
    if not isinstance(base, dict):
        raise TypeError(f"base: expected a dict of config values, got {type(base).__name__}")
    if grid is None:
        grid = [{}]
    elif isinstance(grid, dict):
        grid = [grid]
    elif not isinstance(grid, (list, tuple)) or not all(isinstance(g, dict) for g in grid):
        raise TypeError("grid: expected a dict of lists or a list of dicts, got "
                        f"{type(grid).__name__}")
    configs = []
    for g in grid:
        keys = list(g)
        values = [v if isinstance(v, list) and k not in ("metrics", "thresholds") else [v]
                  for k, v in g.items()]
        for combo in itertools.product(*values):
            given = {**base, **dict(zip(keys, combo, strict=True))}
            configs.append(_check({**DEFAULTS, **given}, set(given)))
    if not configs:
        raise ValueError("grid: expected at least one config, got an empty grid")
    return configs


def _check(cfg: dict, given: set[str]) -> dict:
    """The config checked, with only the keys its model and problem read (given: the keys the
    caller set, each of which must be read)."""
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"valid keys: {', '.join(DEFAULTS)}")
    choice(cfg["problem"], "problem", tuple(PROBLEMS))
    choice(cfg["model"], "model", ("dmf", "cp"))
    if (cfg["model"] == "cp") != (cfg["problem"] == "random_cp_completion"):
        raise ValueError(f"model: 'cp' goes with problem 'random_cp_completion' and 'dmf' with "
                         f"the matrix problems, got model {cfg['model']!r} and problem "
                         f"{cfg['problem']!r}")
    takes = _takes(cfg)
    unused = sorted(given - takes)
    if unused:
        raise ValueError(f"config: {', '.join(map(repr, unused))} not read by problem "
                         f"{cfg['problem']!r} with model {cfg['model']!r}, which read: "
                         f"{', '.join(k for k in DEFAULTS if k in takes)}")
    cfg["depth"] = integer(cfg["depth"], "depth", minimum=1)
    cfg["max_steps"] = integer(cfg["max_steps"], "max_steps", minimum=0)
    for key in ("metrics", "thresholds", "optimizer"):
        if cfg[key] is None:
            cfg[key] = MODEL_DEFAULTS[cfg["model"]][key]
    cfg["metrics"] = tuple(cfg["metrics"]) if not isinstance(cfg["metrics"], str) else (
        cfg["metrics"],)
    for m in cfg["metrics"]:
        if not isinstance(m, str):
            raise TypeError(f"metrics: expected metric names (str), got {m!r} of type "
                            f"{type(m).__name__}; the metrics are one choice per sweep, not "
                            "a grid axis")
    if "loss" not in cfg["metrics"]:
        cfg["metrics"] = ("loss",) + cfg["metrics"]
    cfg["thresholds"] = tuple(float(t) for t in _thresholds(cfg["thresholds"]))
    if isinstance(cfg["widths"], (list, tuple)):
        cfg["widths"] = tuple(cfg["widths"])
    clash = sorted({m.split(":")[0] for m in cfg["metrics"]} & set(DEFAULTS))
    if clash:  # a table column holds either a config value or a metric, never both
        raise ValueError(f"metrics: {clash} are config keys, not metric names")
    _log(cfg["log"])
    if cfg["model"] == "dmf" and cfg["optimizer"] == "gd":
        # the matrix model's default, recorded by omission: configs (and so results
        # directories) written before it had a choice stay the same
        takes = takes - {"optimizer"}
    return {k: v for k, v in cfg.items() if k in takes}


def _optimizer(cfg: dict) -> str:
    """A config's optimizer (None, or a matrix config's omitted gd: the model's)."""
    return cfg.get("optimizer") or MODEL_DEFAULTS[cfg["model"]]["optimizer"]


def _log(log):
    """A config's log: n (about n geometric rows) or "every:k"."""
    if isinstance(log, str) and log.startswith("every:"):
        return every(int(log[len("every:"):]))
    if isinstance(log, (int, np.integer)) and not isinstance(log, bool):
        return geometric(int(log))
    raise ValueError(f"log: expected a number of geometric rows or 'every:k', got {log!r}")


def _batch_key(cfg: dict) -> str:
    """Configs with equal keys run in one batch."""
    shared = {k: v for k, v in cfg.items() if k not in _PER_PROBLEM}
    return json.dumps(shared, sort_keys=True, default=str)


def _build_problem(cfg: dict, seeds: int):
    name = cfg["problem"]
    args = {k: cfg[k] for k in PROBLEMS[name]}
    if "problem_seed" in args:
        args["seed"] = args.pop("problem_seed")
        args["rank"] = args.pop("target_rank")
    if name == "perturbed_2x2":
        return problems_mod.perturbed_2x2(**args, batch=seeds)
    if name == "random_cp_completion":
        dims = (integer(args["dim"], "dim", minimum=1),) * integer(args["order"], "order",
                                                                   minimum=2)
        targets, orders = problems_mod.random_cp_tensor(dims, args["rank"], batch=seeds,
                                                        seed=args["seed"])
        return problems_mod.tensor_completion(
            targets, problems_mod.observe_first(orders, integer(args["n_obs"], "n_obs"), dims))
    return getattr(problems_mod, name)(**args, batch=seeds)


def _concat_problems(parts):
    """One problem batch from several of one kind and shape (shared arrays broadcast)."""
    def cat(arrays):
        if arrays[0] is None:
            return None
        return np.concatenate([np.broadcast_to(a, (p.batch,) + a.shape[1:])
                               for a, p in zip(arrays, parts, strict=True)])
    if parts[0].kind == "tensor_completion":
        return tensor_completion(cat([p.targets for p in parts]), cat([p.masks for p in parts]))
    truth = cat([p.truth for p in parts]) if all(p.truth is not None for p in parts) else None
    if parts[0].kind == "completion":
        return completion(cat([p.targets for p in parts]), cat([p.masks for p in parts]),
                          truth=truth)
    return sensing(cat([p.A for p in parts]), cat([p.y for p in parts]), truth=truth)


def _take_seeds(p, s0: int, s1: int):
    """Problems s0..s1-1 of a batch (shared arrays stay shared)."""
    def take(a):
        return a if a is None or a.shape[0] == 1 else a[s0:s1]
    n = s1 - s0
    if p.kind == "tensor_completion":
        return tensor_completion(take(p.targets), take(p.masks), batch=n)
    if p.kind == "completion":
        return completion(take(p.targets), take(p.masks), batch=n, truth=take(p.truth))
    return sensing(take(p.A), take(p.y), batch=n, truth=take(p.truth))


def _label(t: float) -> str:
    """1e-4 -> '1e-4', 0.13 -> '1.3e-1': threshold labels for column names, the shortest that
    read back as the same float, so that two thresholds never share a column."""
    mant, exp = np.format_float_scientific(float(t), unique=True, trim="-").split("e")
    return f"{mant}e{int(exp)}"


class SweepResult:
    """columns: {name: (rows,) array}, one row per (config, seed), with the config's values,
    "seed", "status", "steps" (steps run), "batch" and "index" (the problem's column in
    trajectories[batch]), every metric at the end ("name") and at each threshold
    ("name@1e-4", with "step@1e-4"); configs: the configs, in row-block order; meta: the sweep's
    description and timings."""

    def __init__(self, columns: dict, trajectories: list[Trajectory], configs: list[dict],
                 meta: dict):
        self.columns = columns
        self.trajectories = trajectories
        self.configs = configs
        self.meta = meta

    @property
    def table(self):
        """The tidy table as a pandas DataFrame (extra "pandas")."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("SweepResult.table needs pandas: pip install "
                              "'implicitreg[pandas]' (SweepResult.columns has the same data "
                              "as NumPy arrays)") from exc
        return pd.DataFrame(self.columns)

    def rows(self, **match) -> np.ndarray:
        """Indices of the rows whose config values equal `match` (floats to 1e-12)."""
        keep = np.ones(len(self.columns["seed"]), dtype=bool)
        for k, v in match.items():
            if k not in self.columns:
                raise KeyError(f"no column {k!r}; columns: {', '.join(self.columns)}")
            col = self.columns[k]
            if v is None or isinstance(v, tuple):
                keep &= col == _text(v)
            elif col.dtype.kind == "f":
                keep &= np.isclose(col, v, rtol=1e-12, atol=0)
            else:
                keep &= col == v
        return np.nonzero(keep)[0]

    def trajectory_of(self, row: int) -> tuple[Trajectory, int]:
        """(trajectory, column) holding table row `row`."""
        return self.trajectories[self.columns["batch"][row]], int(self.columns["index"][row])

    def save(self, out) -> None:
        """Write into directory `out`: results.npz (columns + metadata), results.csv,
        meta.json (configs, version, backend, timings, machine) and one trajectory file per
        batch."""
        os.makedirs(os.path.join(out, "batches"), exist_ok=True)
        for i, t in enumerate(self.trajectories):
            t.save(os.path.join(out, "batches", f"{i:03d}.trajectory.npz"))
        self._save_tables(out)

    def _save_tables(self, out) -> None:
        meta = {"configs": self.configs, **self.meta}
        _save_columns(os.path.join(out, "results.npz"), self.columns, meta)
        _write_csv(os.path.join(out, "results.csv"), self.columns)
        tmp = os.path.join(out, f"meta.json.tmp-{os.getpid()}")
        with open(tmp, "w") as fh:
            json.dump(meta, fh, indent=1, default=_jsonable)
        os.replace(tmp, os.path.join(out, "meta.json"))

    def __repr__(self) -> str:
        return (f"SweepResult(rows={len(self.columns['seed'])}, configs={len(self.configs)}, "
                f"batches={len(self.trajectories)})")


def load_sweep(out) -> SweepResult:
    """Read a SweepResult written by SweepResult.save (or by sweep(out=...))."""
    meta, cols = _load_columns(os.path.join(out, "results.npz"))
    n = int(cols["batch"].max()) + 1 if cols["batch"].size else 0
    trajs = [load_trajectory(os.path.join(out, "batches", f"{i:03d}.trajectory.npz"))
             for i in range(n)]
    configs = meta.pop("configs")
    return SweepResult(cols, trajs, configs, meta)


def _save_columns(path, columns: dict, meta: dict) -> None:
    save_npz(path, _FORMAT, json.loads(json.dumps(meta, default=_jsonable)),
             {f"col/{k}": v for k, v in columns.items()})


def _load_columns(path) -> tuple[dict, dict]:
    meta, z = load_npz(path, _FORMAT, "implicitreg sweep results")
    return meta, {k[len("col/"):]: v for k, v in z.items() if k.startswith("col/")}


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _write_csv(path, columns: dict) -> None:
    """The table as CSV (floats written to full precision), atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    names = list(columns)
    cells = [[repr(float(x)) for x in v] if v.dtype.kind == "f" else [str(x) for x in v]
             for v in (np.asarray(columns[k]) for k in names)]
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(zip(*cells, strict=True))
    os.replace(tmp, path)


def _text(v) -> str:
    """How a non-numeric config value reads in the table: None as "", a tuple joined by ","."""
    if v is None:
        return ""
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


# ------------------------------------------------------------------------------ running


def _config_columns(configs: list[dict], seeds: int) -> dict:
    """Config values per row: scalars as they are, tuples as text; only the keys that the
    batch's model and problem read (every config of a batch has the same)."""
    cols = {}
    for k in (k for k in DEFAULTS if k in configs[0]):
        vals = [c[k] for c in configs]
        if all(isinstance(v, (bool, np.bool_)) for v in vals):
            arr = np.array(vals, dtype=bool)
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            arr = np.array(vals, dtype=np.int64)
        elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                 for v in vals):
            arr = np.array(vals, dtype=np.float64)
        else:
            arr = np.array([_text(v) for v in vals])
        cols[k] = np.repeat(arr, seeds)
    return cols


def _dry_run(cfg: dict, backend: str) -> tuple[int, int]:
    """Every check a config's run would make, on one problem, so that a bad value is refused
    before any batch runs (and before an output directory is claimed); returns about how many
    bytes each of the config's problems takes in a batch: in host memory, and on the device
    (the cuda backend's state, problem data and kernel scratch)."""
    problem = _build_problem(cfg, 1)
    if cfg["model"] == "cp":
        if cfg["thresholds"]:
            raise ValueError("thresholds: not recorded for model 'cp'; pass thresholds=()")
        model = _cp_model(cfg, problem, backend)
        names = model._metric_names(cfg["metrics"])
        integer(cfg["rank_restarts"], "rank_restarts", minimum=0)
        choice(cfg["rank_criterion"], "rank_criterion", RANK_CRITERIA)
        numel = int(np.prod(model.dims))
        row = sum(model.rank if n == "component_norms" else 1 for n in names)
        # problem: targets, masks and the observation order, built per config and joined;
        # factors: each config's start, the joined starts and the model's copy; measure()
        # and the end-of-run tensors and memorizer: a few tensors at a time
        need = 2 * numel * (8 + 1 + 8) + 3 * 8 * sum(model.dims) * model.rank + 4 * 8 * numel
        item = model.dtype.itemsize
        # target and mask; factors, optimizer state and status; the step's compacted entries
        # (at most every entry); measure(): the tensor and two temporaries, component norms
        device = (numel * (item + 1) + sum(model.dims) * model.rank * item + 2 * item + 25
                  + numel * (8 + item) + 3 * 8 * numel + 8 * model.rank)
    else:
        factors = init_factors(problem.shape, 1, cfg["depth"], cfg["widths"], cfg["init"],
                               cfg["scale"], cfg["scale_by"], cfg["init_det"], cfg["init_seed"])
        model = DeepFactorization(problem, factors, backend=backend, dtype=cfg["dtype"])
        specs = model._metric_specs(cfg["metrics"])
        cross = model.crossings(cfg["thresholds"])
        row = sum(specs[3])
        size = sum(W.size for W in factors)
        pb = sum(a[0].nbytes for a in (problem.targets, problem.masks, problem.truth,
                                        getattr(problem, "A", None), getattr(problem, "y", None))
                 if a is not None)
        # problem: built per config (shared arrays broadcast to every seed) and joined;
        # factors: as for the problem, plus the model's copy and the crossings' snapshots
        need = (2 * pb + 3 * 8 * size + cross.thresholds.size * (size * model.dtype.itemsize
                                                                  + 8 * (row + 1)))
        m, n = problem.shape
        # problem data; factors and status; crossings; measure(): product, loss, singular
        # values and the rows
        device = (pb + size * model.dtype.itemsize + 9 + cross.thresholds.size
                  * (size * model.dtype.itemsize + 8) + (m * n + min(m, n) + 1) * 8 + 8 * row)
    optimizer = _optimizer(cfg)
    model._optimizer_settings(optimizer, 0.99, (0.9, 0.999), None)
    if optimizer == "adam":  # its moments: twice the factors, where they live
        moments = 2 * sum(U.size for U in model.factors) * model.dtype.itemsize
        need, device = need + moments, device + moments
    model._lr(cfg["lr"])
    model._tol(cfg["tol"])
    rows = _log(cfg["log"]).rows(cfg["max_steps"])
    return need + 8 * row * rows + _GENERATOR_BYTES, device


def _check_batch_memory(configs: list[dict], need: list[int], seeds: int, bi: int) -> None:
    """Refuse, before anything runs, a batch that would not fit in this machine's memory,
    naming how many seeds would."""
    per_seed = sum(need)
    have = available_memory()
    if have is None or per_seed * seeds <= have:
        return
    fits = have // per_seed
    raise ValueError(f"seeds: batch {bi} ({len(configs)} configs x {seeds} seeds = "
                     f"{len(configs) * seeds} problems) needs about "
                     f"{per_seed * seeds / 2**30:.3g} GiB, more than the {have / 2**30:.3g} "
                     f"GiB of memory available here; the largest batch that fits is "
                     f"{fits * len(configs)} problems: {fits} seeds (or fewer configs per "
                     "batch)")


# Of the device's free memory, the share a batch may plan on: the estimates leave out CuPy's
# rounding of allocations and the kernels' small buffers.
_DEVICE_SHARE = 0.8


def _plan(spans: list[tuple[int, int]], device_need: list[int], seeds: int,
          backend: str) -> list[tuple[int, int, int, int]]:
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
            raise ValueError(f"seeds: one problem of configs {a}..{b - 1} needs about "
                             f"{per / 2**20:.3g} MiB on the device, more than the "
                             f"{free / 2**20:.3g} MiB free there; the largest batch that fits "
                             "is 0 problems: make the problem smaller (dims, rank, depth, "
                             "thresholds) or free the device")
        if (b - a) * seeds <= cap:
            plan.append((a, b, 0, seeds))
        elif seeds <= cap:
            k = cap // seeds
            plan += [(c, min(b, c + k), 0, seeds) for c in range(a, b, k)]
        else:
            plan += [(c, c + 1, s, min(seeds, s + cap)) for c in range(a, b)
                     for s in range(0, seeds, cap)]
    return plan


def _cp_model(cfg: dict, problem, backend: str) -> CPFactorization:
    return CPFactorization.init(problem, rank=cfg["components"], scale=cfg["scale"],
                                seed=cfg["init_seed"], dtype=cfg["dtype"], backend=backend)


def _run_batch(configs: list[dict], seeds: tuple[int, int], backend: str, advance, checkpoint,
               checkpoint_every: float) -> tuple[dict, Trajectory, float]:
    """Train one batch, seeds s0..s1-1 of each config; (result columns without the config
    values, trajectory, seconds). Problems and starts are drawn for seeds 0..s1-1 and cut,
    so that a problem is the same whichever batch it runs in."""
    c0 = configs[0]
    s0, s1 = seeds
    whole = [_build_problem(c, s1) for c in configs]
    parts = [_take_seeds(p, s0, s1) for p in whole] if s0 else whole
    problem = _concat_problems(parts)
    if c0["model"] == "cp":
        return _run_cp_batch(configs, whole, problem, seeds, backend, advance, checkpoint,
                             checkpoint_every)
    factors = None
    for c in configs:  # each config's seeds 0..s1-1: the same starts across configs
        f = init_factors(problem.shape, s1, c["depth"], c["widths"], c["init"], c["scale"],
                         c["scale_by"], c["init_det"], c["init_seed"])
        f = [W[s0:] for W in f]
        factors = f if factors is None else [np.concatenate([a, b])
                                             for a, b in zip(factors, f, strict=True)]
    lr = np.repeat([c["lr"] for c in configs], s1 - s0).astype(np.float64)
    model = DeepFactorization(problem, factors, backend=backend, dtype=c0["dtype"])
    t0 = time.perf_counter()
    traj = model.fit(lr, c0["max_steps"], tol=c0["tol"], log=_log(c0["log"]),
                     metrics=c0["metrics"], thresholds=c0["thresholds"], progress=advance,
                     checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                     optimizer=_optimizer(c0))
    seconds = time.perf_counter() - t0
    cols = _result_columns(traj)
    if traj.crossings is not None:
        for k, t in enumerate(traj.crossings["thresholds"]):
            lab = _label(t)
            cols[f"step@{lab}"] = traj.crossings["step"][k]
            for name in traj.data:
                _put(cols, f"{name}@{lab}", traj.crossings[name][k])
    return cols, traj, seconds


def _run_cp_batch(configs, whole, problem, seeds, backend, advance, checkpoint,
                  checkpoint_every):
    """The CP version of _run_batch: fit, then the end-of-run tensor ranks and baseline."""
    c0 = configs[0]
    s0, s1 = seeds
    # drawn on the host for seeds 0..s1-1, cut and joined, then placed on the backend once
    starts = [_cp_model(c, p, "cpu").factors for c, p in zip(configs, whole, strict=True)]
    factors = [np.concatenate([s[n][s0:] for s in starts]) for n in range(len(starts[0]))]
    lr = np.repeat([c["lr"] for c in configs], s1 - s0).astype(np.float64)
    model = CPFactorization(problem, factors, backend=backend, dtype=c0["dtype"])
    t0 = time.perf_counter()
    traj = model.fit(lr, c0["max_steps"], tol=c0["tol"], log=_log(c0["log"]),
                     metrics=c0["metrics"], optimizer=_optimizer(c0),
                     patience=c0["patience"], check_every=c0["check_every"], progress=advance,
                     checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    B = problem.batch
    cols = _result_columns(traj)
    restarts = int(c0["rank_restarts"])
    if restarts:
        cols["tensor_rank"] = to_host(tensor_rank(model.tensor(), restarts=restarts,
                                                  backend=backend, order=model.order,
                                                  criterion=c0["rank_criterion"]))
    if c0["baseline"]:
        mem = memorizer(problem)
        truth = np.broadcast_to(problem.targets, mem.shape).reshape(B, -1)
        cols["memorizer_error"] = (np.linalg.norm(mem.reshape(B, -1) - truth, axis=1)
                                   / np.linalg.norm(truth, axis=1))
        if restarts:
            cols["memorizer_rank"] = tensor_rank(mem, restarts=restarts, backend=backend,
                                                 order=model.order,
                                                 criterion=c0["rank_criterion"])
    return cols, traj, time.perf_counter() - t0


def _result_columns(traj: Trajectory) -> dict:
    """Status, steps run, column index and every metric's last logged value, per problem."""
    cols = {"status": traj.status.copy(),
            "steps": np.where(traj.frozen_at >= 0, traj.frozen_at, traj.steps[-1]),
            "index": np.arange(traj.batch)}
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
_RAY_TASK = "implicitreg_sweep_batch"  # the task name (a worker's process title while it runs)


def sweep(base: dict, grid=None, seeds: int = 8, backend: str = "cpu", out=None,
          resume: bool = False, progress=True, executor: str = "local",
          checkpoint_every: float = 300.0, name: str = "sweep", info: dict | None = None,
          address: str | None = None, max_retries: int = 3) -> SweepResult:
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
    _check_progress(progress)
    checkpoint_every = _checkpoint_every(checkpoint_every)
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected True or False, got {resume!r}")
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    choice(executor, "executor", EXECUTORS)
    if address is not None and executor != "ray":
        raise ValueError(f"address: only used by executor 'ray', got executor {executor!r} "
                         f"with address {address!r}")
    max_retries = integer(max_retries, "max_retries", minimum=0)
    configs = expand(base, grid)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(_batch_key(c), []).append(i)
    batches = list(groups.values())
    order = [i for b in batches for i in b]
    configs = [configs[i] for i in order]  # row blocks follow batch order
    spans, at = [], 0
    for b in batches:
        spans.append((at, at + len(b)))
        at += len(b)
    need = [_dry_run(c, backend) for c in configs]
    host_need = [h for h, _ in need]
    if executor == "local" or address is None:  # a cluster's workers have their own memory
        for bi, (a, b) in enumerate(spans):
            _check_batch_memory(configs[a:b], host_need[a:b], seeds, bi)
    ray = _ray_connect(address) if executor == "ray" else None
    meta = {"name": name, "seeds": seeds, "backend": backend, "executor": executor,
            "version": build_info()["version"], "machine": _machine(), **(info or {})}
    spec = {"configs": configs, "seeds": seeds, "backend": backend}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=_jsonable).encode()
                            ).hexdigest()
    plan = _plan(spans, [d for _, d in need], seeds, backend)
    # one process writes a results directory at a time (a second one is refused)
    with contextlib.nullcontext() if out is None else _locked(out):
        if out is not None:  # a resumed sweep keeps the batches it started with
            plan = _prepare_dir(out, digest, resume, name, plan)
        total = sum(configs[a]["max_steps"] for a, *_ in plan)
        advance, close = _progress(progress, total)
        done: list[tuple[dict, Trajectory, float] | None] = [None] * len(plan)
        try:
            for bi, (a, *_) in enumerate(plan):
                if out is not None and os.path.exists(_batch_path(out, bi, "npz")):
                    done[bi] = _read_batch(out, bi)
                    advance(configs[a]["max_steps"])
            todo = [bi for bi in range(len(plan)) if done[bi] is None]
            if ray is None:
                for bi in todo:
                    a, b, s0, s1 = plan[bi]
                    ran = [0]

                    def step_counter(n, ran=ran):
                        ran[0] += n
                        advance(n)
                    ckpt = None if out is None else _batch_path(out, bi, "ckpt.npz")
                    done[bi] = _run_batch(configs[a:b], (s0, s1), backend, step_counter, ckpt,
                                          checkpoint_every)
                    advance(configs[a]["max_steps"] - ran[0])
                    _write_batch(out, bi, *done[bi])
            else:
                work = [(i, configs[plan[i][0]:plan[i][1]], plan[i][2:]) for i in todo]
                for bi, got in _ray_run(ray, work, backend, out, checkpoint_every, max_retries):
                    done[bi] = got
                    _write_batch(out, bi, *got)
                    advance(configs[plan[bi][0]]["max_steps"])
        finally:
            close()
        trajs, parts, timings = [], [], []
        for bi, (a, b, s0, s1) in enumerate(plan):
            group = configs[a:b]
            cols, traj, seconds = done[bi]
            n = len(group) * (s1 - s0)
            cols = {**_config_columns(group, s1 - s0),
                    "seed": np.tile(np.arange(s0, s1), len(group)), **cols,
                    "batch": np.full(n, bi)}
            trajs.append(traj)
            parts.append(cols)
            timings.append({"batch": bi, "configs": len(group), "problems": n,
                            "seconds": seconds, "problem_steps": int(np.sum(cols["steps"]))})
        meta["timings"] = timings
        result = SweepResult(_stack(parts), trajs, configs, meta)
        if out is not None:  # the trajectories were written as their batches finished
            result._save_tables(out)
        return result


def _batch_path(out, bi: int, suffix: str) -> str:
    return os.path.join(out, "batches", f"{bi:03d}.{suffix}")


def _read_batch(out, bi: int) -> tuple[dict, Trajectory, float]:
    """A finished batch of a results directory: (result columns, trajectory, seconds)."""
    paths = [_batch_path(out, bi, suffix) for suffix in ("npz", "trajectory.npz")]
    try:
        for p in paths:  # np.load leaves a file open when it fails to read a zip's index
            if not zipfile.is_zipfile(p):
                raise ValueError(f"{p} is not a whole .npz archive")
        bmeta, cols = _load_columns(paths[0])
        traj = load_trajectory(paths[1])
        seconds = float(bmeta["seconds"])
    except Exception as exc:  # whatever makes them unreadable, the advice is the same
        raise ValueError(f"out: batch {bi} of {out} cannot be read back ({paths[0]} or "
                         f"{paths[1]}: {type(exc).__name__}: {exc}); these files were not "
                         "written whole by this sweep. Delete both to run the batch again, "
                         "or choose another directory") from exc
    stale = _batch_path(out, bi, "ckpt.npz")
    if os.path.exists(stale):  # a crash between writing the result and removing it
        os.remove(stale)
    return cols, traj, seconds


def _write_batch(out, bi: int, cols: dict, traj: Trajectory, seconds: float) -> None:
    """Keep a finished batch: its trajectory, then its table (the table marks it finished,
    so a crash between the two reruns the batch), each written atomically."""
    if out is None:
        return
    traj.save(_batch_path(out, bi, "trajectory.npz"))
    _save_columns(_batch_path(out, bi, "npz"), cols, {"seconds": seconds})
    ckpt = _batch_path(out, bi, "ckpt.npz")
    if os.path.exists(ckpt):  # none when the batch ran in one go
        os.remove(ckpt)


# ------------------------------------------------------------------------------ ray


def _ray_connect(address):
    """The ray module, connected to the cluster at `address` (see sweep)."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("executor: 'ray' needs Ray: pip install 'implicitreg[ray]'") from exc
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address: expected a Ray cluster address such as 'auto' or "
                        f"'ray://host:10001', got {type(address).__name__} {address!r}")
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RuntimeError(f"address: could not connect to a Ray cluster at {address!r}: "
                               f"{exc}") from exc
    return ray


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """A concrete address ("host:port", "ray://host:port") must answer before Ray is asked:
    Ray itself retries an unreachable address for minutes before giving up."""
    if address is None or address in ("auto", "local"):
        return
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address: expected 'HOST:PORT', 'ray://HOST:PORT', 'auto' or "
                         f"'local', got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeError(f"address: no Ray cluster answers at {address!r} ({exc}); start "
                           "one with `ray start --head` on the head node, and pass its "
                           "address") from exc


def _ray_batch(configs: list[dict], seeds: tuple[int, int], backend: str, ckpt: str | None,
               checkpoint_every: float, node: str) -> tuple[dict, Trajectory, float]:
    """One batch in a Ray worker. The running batch is checkpointed into the results
    directory only on the driver's node: elsewhere that path is another machine's (a retry
    there, or a resume, restarts the batch from its beginning)."""
    import ray

    if ckpt is not None and ray.get_runtime_context().get_node_id() != node:
        ckpt = None
    return _run_batch(configs, seeds, backend, lambda n: None, ckpt, checkpoint_every)


def _ray_run(ray, todo: list[tuple[int, list[dict], tuple[int, int]]], backend: str, out,
             checkpoint_every: float, max_retries: int):
    """Yield (batch index, _run_batch's result) for each batch of `todo`, in the order they
    finish. Every batch is submitted at once; Ray queues what the cluster cannot yet run."""
    task = ray.remote(_ray_batch).options(
        num_cpus=1, num_gpus=1 if backend == "cuda" else 0, max_retries=max_retries,
        name=_RAY_TASK)
    node = ray.get_runtime_context().get_node_id()
    pending = {}
    for bi, group, seeds in todo:
        ckpt = None if out is None else os.path.abspath(_batch_path(out, bi, "ckpt.npz"))
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
                    raise RuntimeError(f"executor: batch {bi} failed on Ray after "
                                       f"{max_retries} retries: {exc}") from exc
                yield bi, got
    finally:
        for ref in pending:  # an error or an interrupt: stop what still runs
            ray.cancel(ref, force=True)


def _stack(parts: list[dict]) -> dict:
    """Concatenate per-batch columns; a column missing from a batch is NaN (or "") there."""
    names = list(dict.fromkeys(k for p in parts for k in p))
    out = {}
    for k in names:
        arrays = []
        for p in parts:
            n = len(p["seed"])
            if k in p:
                arrays.append(np.asarray(p[k]))
            else:
                like = next(q[k] for q in parts if k in q)
                arrays.append(np.full(n, np.nan) if np.asarray(like).dtype.kind in "fiub"
                              else np.full(n, "", dtype=object).astype(str))
        out[k] = np.concatenate(arrays) if arrays else np.zeros(0)
    return out


def _machine() -> dict:
    return {"node": platform.node(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


_LOCK = ".lock"


@contextlib.contextmanager
def _locked(out):
    """Holds the results directory `out` for this process while the sweep writes it: a lock
    file with its PID, host and start time. A second process is refused, naming the holder; a
    lock left by a process of this host that no longer runs (killed) is taken over."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, _LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as fh:
                    holder = json.load(fh)
            except (OSError, ValueError):  # half-written by a process killed at that moment
                holder = {}
            if _running(holder):
                raise ValueError(
                    f"out: {out} is being written by process {holder['pid']} on "
                    f"{holder['host']} (since {holder.get('since', '?')}); wait for it, or "
                    f"choose another directory (if that process is gone, delete {path})"
                    ) from None
            os.remove(path)  # stale
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield
    finally:
        os.remove(path)


def _running(holder: dict) -> bool:
    """Whether the process that wrote a lock still runs (one of another host: assumed so)."""
    if not holder.get("pid"):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    return True


def _prepare_dir(out, digest: str, resume: bool, name: str, plan: list) -> list:
    """Claim `out` for this sweep (manifest.json, with its batches), or check that it is this
    sweep's; returns the batches to run: those of the manifest when resuming (the device's
    free memory may have changed since, but finished batches must keep their meaning)."""
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as fh:
            try:
                old = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"out: {manifest} is corrupt; move it away or choose another "
                                 "directory") from exc
        if old.get("format") != _FORMAT:
            raise ValueError(f"out: {out} holds a manifest.json that is not implicitreg's; "
                             "choose another directory")
        if not resume:
            raise ValueError(f"out: {out} already holds results of {old.get('name')!r}; pass "
                             "resume=True (--resume) to continue them, or choose another "
                             "directory")
        if old.get("digest") != digest:
            raise ValueError(f"out: {out} holds results of another sweep ({old.get('name')!r} "
                             "with other configs, seeds or backend); resume needs the same "
                             "ones, or choose another directory")
        # what a killed run was writing when it died (never read: the rename did not happen)
        for d in (out, os.path.join(out, "batches")):
            for f in os.listdir(d) if os.path.isdir(d) else ():
                if ".tmp-" in f:
                    os.remove(os.path.join(d, f))
        return [tuple(p) for p in old.get("plan", plan)]
    if os.path.isdir(out) and set(os.listdir(out)) - {_LOCK}:
        raise ValueError(f"out: {out} is not empty and holds no implicitreg results; choose "
                         "an empty or new directory")
    os.makedirs(os.path.join(out, "batches"), exist_ok=True)
    tmp = f"{manifest}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump({"format": _FORMAT, "name": name, "digest": digest,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "plan": [list(p) for p in plan]}, fh)
    os.replace(tmp, manifest)
    return plan
