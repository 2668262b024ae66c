"""Sweep configurations: every key and its default, what each model and problem reads, the
grid's expansion into checked configs, and the problems they describe."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import problems as problems_mod
from .._checks import choice, integer, positive
from ..baselines import schatten_p
from ..models import CPFactorization
from ..models.crossings import loss_thresholds
from ..problems import completion, sensing, tensor_completion
from ..trajectory import every, geometric

__all__ = [
    "DEFAULTS",
    "MODEL_DEFAULTS",
    "MODEL_KEYS",
    "PROBLEMS",
    "batch_key",
    "build_problem",
    "concat_problems",
    "cp_model",
    "expand",
    "log_of",
    "optimizer_of",
    "problem_key",
    "take_seeds",
]

# Problem builders of implicitreg.problems and the config keys each one reads.
PROBLEMS: dict[str, tuple[str, ...]] = {
    "paper_2x2": (),
    "perturbed_2x2": ("b12", "b21", "eps"),
    "paper_family": ("d",),
    "random_low_rank_completion": ("m", "n", "target_rank", "n_obs", "problem_seed"),
    "random_sensing": ("m", "n", "target_rank", "n_meas", "problem_seed", "std"),
    # tensor completion (model "cp"): random_cp_tensor of `order` modes of size `dim`,
    # observed at the first n_obs entries of its random order
    "random_cp_completion": ("order", "dim", "target_rank", "n_obs", "problem_seed"),
}

DEFAULTS: dict[str, Any] = {
    # "dmf": DeepFactorization (matrix problems); "cp": CPFactorization (tensor completion)
    "model": "dmf",
    # what is learned
    "problem": "paper_2x2",
    "b12": -2.0,
    "b21": 0.5,
    "eps": 0.0,
    "d": 3,
    "m": 10,
    "n": 10,
    "target_rank": 2,
    "n_obs": 50,
    "n_meas": 50,
    "problem_seed": 0,
    "std": 1.0,
    "order": 3,
    "dim": 8,
    # where it starts (implicitreg.init)
    "depth": 3,
    "widths": None,
    "init": "normal",
    "scale": 1e-3,
    "scale_by": "product",
    "init_det": None,
    "init_seed": 0,
    # how it is trained and what is recorded (optimizer None: the model's, MODEL_DEFAULTS)
    "lr": 1e-3,
    "optimizer": None,
    # the optimizer's eps (group_rmsprop, adam); None: the model's default
    "optimizer_eps": None,
    "max_steps": 10_000,
    "tol": None,
    "log": 200,
    # metrics and thresholds None: the model's (MODEL_DEFAULTS); thresholds () records none
    "metrics": None,
    "thresholds": None,
    "dtype": "float64",
    # model "dmf" only: the fits these norms pick (implicitreg.baselines.min_norm), each
    # with its norm, effective rank and reconstruction error beside each trained problem
    "min_norms": (),
    # model "cp" only: components R (None: the largest CP rank), the stop rule of
    # CPFactorization.fit, and what is estimated at the end: the tensor rank of the
    # solution with rank_restarts CP-ALS starts per tried rank (0: not estimated) and
    # rank_criterion (implicitreg.tensor_rank's criterion), and with baseline the memorizer's
    # error and rank
    "components": None,
    "patience": None,
    "check_every": 100,
    "rank_restarts": 0,
    "rank_criterion": "relative",
    "baseline": False,
}
# What "metrics", "thresholds" and "optimizer" None mean, per model (a CP fit records no
# crossings).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "dmf": {
        "metrics": ("loss", "entry:0,0"),
        "thresholds": (1e-1, 1e-2, 1e-3, 1e-4),
        "optimizer": "gd",
    },
    "cp": {"metrics": ("loss", "recon_error"), "thresholds": (), "optimizer": "group_rmsprop"},
}
# Keys that may differ inside one batch (per-problem data, start or learning rate).
# The config keys each model reads, besides every config's and its problem's (PROBLEMS).
_COMMON_KEYS = (
    "model",
    "problem",
    "lr",
    "optimizer",
    "optimizer_eps",
    "max_steps",
    "tol",
    "log",
    "metrics",
    "thresholds",
    "dtype",
)
MODEL_KEYS = {
    "dmf": ("depth", "widths", "init", "scale", "scale_by", "init_det", "init_seed", "min_norms"),
    "cp": (
        "components",
        "scale",
        "init_seed",
        "patience",
        "check_every",
        "rank_restarts",
        "rank_criterion",
        "baseline",
    ),
}


def _takes(cfg: dict) -> set[str]:
    """The keys that a config's model and problem read: the ones it records."""
    return set(_COMMON_KEYS) | set(MODEL_KEYS[cfg["model"]]) | set(PROBLEMS[cfg["problem"]])


_PER_PROBLEM = {
    "b12",
    "b21",
    "eps",
    "target_rank",
    "n_obs",
    "problem_seed",
    "std",
    "init",
    "scale",
    "scale_by",
    "init_det",
    "init_seed",
    "lr",
}


def expand(base: dict, grid: dict[str, Any] | Sequence[dict[str, Any]] | None = None) -> list[dict]:
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
        raise TypeError(
            f"grid: expected a dict of lists or a list of dicts, got {type(grid).__name__}"
        )
    configs = []
    for g in grid:
        keys = list(g)
        values = [
            v if isinstance(v, list) and k not in ("metrics", "thresholds", "min_norms") else [v]
            for k, v in g.items()
        ]
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
        raise ValueError(
            f"config: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(DEFAULTS)}"
        )
    choice(cfg["problem"], "problem", tuple(PROBLEMS))
    choice(cfg["model"], "model", ("dmf", "cp"))
    if (cfg["model"] == "cp") != (cfg["problem"] == "random_cp_completion"):
        raise ValueError(
            f"model: 'cp' goes with problem 'random_cp_completion' and 'dmf' with "
            f"the matrix problems, got model {cfg['model']!r} and problem "
            f"{cfg['problem']!r}"
        )
    takes = _takes(cfg)
    unused = sorted(given - takes)
    if unused:
        raise ValueError(
            f"config: {', '.join(map(repr, unused))} not read by problem "
            f"{cfg['problem']!r} with model {cfg['model']!r}, which read: "
            f"{', '.join(k for k in DEFAULTS if k in takes)}"
        )
    cfg["depth"] = integer(cfg["depth"], "depth", minimum=1)
    cfg["max_steps"] = integer(cfg["max_steps"], "max_steps", minimum=0)
    for key in ("metrics", "thresholds", "optimizer"):
        if cfg[key] is None:
            cfg[key] = MODEL_DEFAULTS[cfg["model"]][key]
    cfg["metrics"] = (
        tuple(cfg["metrics"]) if not isinstance(cfg["metrics"], str) else (cfg["metrics"],)
    )
    for m in cfg["metrics"]:
        if not isinstance(m, str):
            raise TypeError(
                f"metrics: expected metric names (str), got {m!r} of type "
                f"{type(m).__name__}; the metrics are one choice per sweep, not "
                "a grid axis"
            )
    if "loss" not in cfg["metrics"]:
        cfg["metrics"] = ("loss",) + cfg["metrics"]
    cfg["thresholds"] = tuple(float(t) for t in loss_thresholds(cfg["thresholds"]))
    if isinstance(cfg["widths"], (list, tuple)):
        cfg["widths"] = tuple(cfg["widths"])
    clash = sorted({m.split(":")[0] for m in cfg["metrics"]} & set(DEFAULTS))
    if clash:  # a table column holds either a config value or a metric, never both
        raise ValueError(f"metrics: {clash} are config keys, not metric names")
    log_of(cfg["log"])
    norms = cfg["min_norms"]
    if isinstance(norms, str) or not isinstance(norms, (list, tuple)):
        raise TypeError(f"min_norms: expected a tuple of norm names, got {norms!r}")
    cfg["min_norms"] = tuple(norms)
    for norm in cfg["min_norms"]:
        schatten_p(norm, "min_norms")
    if cfg["model"] == "dmf" and cfg["optimizer"] == "gd":
        # the matrix model's default, recorded by omission: configs (and so results
        # directories) written before it had a choice stay the same
        takes = takes - {"optimizer"}
    if cfg["optimizer_eps"] is not None:
        cfg["optimizer_eps"] = positive(cfg["optimizer_eps"], "optimizer_eps")
    for key, unset in (("min_norms", ()), ("optimizer_eps", None)):  # likewise
        if cfg[key] == unset:
            takes = takes - {key}
    return {k: v for k, v in cfg.items() if k in takes}


def optimizer_of(cfg: dict) -> str:
    """A config's optimizer (None, or a matrix config's omitted gd: the model's)."""
    return cfg.get("optimizer") or MODEL_DEFAULTS[cfg["model"]]["optimizer"]


def log_of(log):
    """A config's log: n (about n geometric rows) or "every:k"."""
    if isinstance(log, str) and log.startswith("every:"):
        return every(int(log[len("every:") :]))
    if isinstance(log, (int, np.integer)) and not isinstance(log, bool):
        return geometric(int(log))
    raise ValueError(f"log: expected a number of geometric rows or 'every:k', got {log!r}")


def batch_key(cfg: dict) -> str:
    """Configs with equal keys run in one batch."""
    shared = {k: v for k, v in cfg.items() if k not in _PER_PROBLEM}
    return json.dumps(shared, sort_keys=True, default=str)


def _problem_args(cfg: dict) -> dict:
    """The config values its problem is drawn from."""
    return {k: cfg[k] for k in PROBLEMS[cfg["problem"]]}


def problem_key(cfg: dict) -> str:
    """Configs with equal keys draw the same problems (build_problem reads only these)."""
    return json.dumps({"problem": cfg["problem"], **_problem_args(cfg)}, default=str)


def build_problem(cfg: dict, seeds: int):
    name = cfg["problem"]
    args = _problem_args(cfg)
    if "problem_seed" in args:
        args["seed"] = args.pop("problem_seed")
        args["rank"] = args.pop("target_rank")
    if name == "perturbed_2x2":
        return problems_mod.perturbed_2x2(**args, batch=seeds)
    if name == "random_cp_completion":
        dims = (integer(args["dim"], "dim", minimum=1),) * integer(
            args["order"], "order", minimum=2
        )
        targets, orders = problems_mod.random_cp_tensor(
            dims, args["rank"], batch=seeds, seed=args["seed"]
        )
        return problems_mod.tensor_completion(
            targets, problems_mod.observe_first(orders, integer(args["n_obs"], "n_obs"), dims)
        )
    return getattr(problems_mod, name)(**args, batch=seeds)


def concat_problems(parts):
    """One problem batch from several of one kind and shape (shared arrays broadcast)."""

    def cat(arrays):
        if arrays[0] is None:
            return None
        return np.concatenate(
            [
                np.broadcast_to(a, (p.batch,) + a.shape[1:])
                for a, p in zip(arrays, parts, strict=True)
            ]
        )

    if parts[0].kind == "tensor_completion":
        return tensor_completion(cat([p.targets for p in parts]), cat([p.masks for p in parts]))
    truth = cat([p.truth for p in parts]) if all(p.truth is not None for p in parts) else None
    if parts[0].kind == "completion":
        return completion(
            cat([p.targets for p in parts]), cat([p.masks for p in parts]), truth=truth
        )
    return sensing(cat([p.A for p in parts]), cat([p.y for p in parts]), truth=truth)


def take_seeds(p, s0: int, s1: int):
    """Problems s0..s1-1 of a batch (shared arrays stay shared)."""

    def take(a):
        return a if a is None or a.shape[0] == 1 else a[s0:s1]

    n = s1 - s0
    if p.kind == "tensor_completion":
        return tensor_completion(take(p.targets), take(p.masks), batch=n)
    if p.kind == "completion":
        return completion(take(p.targets), take(p.masks), batch=n, truth=take(p.truth))
    return sensing(take(p.A), take(p.y), batch=n, truth=take(p.truth))


def cp_model(cfg: dict, problem, backend: str) -> CPFactorization:
    return CPFactorization.init(
        problem,
        rank=cfg["components"],
        scale=cfg["scale"],
        seed=cfg["init_seed"],
        dtype=cfg["dtype"],
        backend=backend,
    )
