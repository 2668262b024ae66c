"""One build per x86-64 level: the best one the CPU supports is loaded, IMPLICITREG_CPU_LEVEL
forces a lower one, and every level built here computes what the numpy oracle computes."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import implicitreg as ir
from implicitreg import _backend, reference

BUILT = str(_backend._baseline.build_info()["cpu_level"])
CPU = list(_backend._baseline.cpu_levels())
# The levels built here that this CPU runs, each with its module.
RUNNABLE = [
    lv
    for lv in _backend.CPU_LEVELS
    if lv in CPU and importlib.util.find_spec(_backend._cpu_module(lv)) is not None
]
ONE_BUILD = BUILT not in _backend.CPU_LEVELS
needs_levels = pytest.mark.skipif(
    ONE_BUILD, reason=f"a single build of the kernels here ({BUILT}): nothing to choose from"
)


def _info_with(level: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMPLICITREG_CPU_LEVEL": level}
    code = "import implicitreg as ir; i = ir.build_info(); print(i['cpu_level'], i['cpu_flags'])"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_build_info_names_the_level_and_why():
    info = ir.build_info()
    assert info["cpu_level"] == _backend._core.build_info()["cpu_level"]
    assert isinstance(info["cpu_level_reason"], str) and info["cpu_level_reason"]
    if ONE_BUILD:
        assert info["cpu_level"] == BUILT
    elif "IMPLICITREG_CPU_LEVEL" not in os.environ:
        assert info["cpu_level"] == RUNNABLE[-1]  # the best
        assert "best" in info["cpu_level_reason"]


def test_x86_64_builds_every_level():
    if ONE_BUILD:
        pytest.skip(f"a single build of the kernels here ({BUILT})")
    assert BUILT == "v2"
    for level in _backend.CPU_LEVELS:
        assert importlib.util.find_spec(_backend._cpu_module(level)) is not None, level


@needs_levels
@pytest.mark.parametrize("level", _backend.CPU_LEVELS)
def test_a_level_can_be_forced(level):
    r = _info_with(level)
    if level not in CPU:
        assert r.returncode != 0
        assert f"IMPLICITREG_CPU_LEVEL={level}: this CPU lacks it" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    got, flags = r.stdout.split(maxsplit=1)
    assert got == level and f"-march=x86-64-{level}" in flags


def test_an_unknown_level_is_refused_by_name():
    r = _info_with("v9")
    assert r.returncode != 0
    if ONE_BUILD:
        assert "this build has one level only" in r.stderr
    else:
        assert "IMPLICITREG_CPU_LEVEL must be one of v2, v3, v4, got 'v9'" in r.stderr


@needs_levels
def test_a_level_the_cpu_lacks_is_refused_naming_what_it_has(monkeypatch):
    fake = types.SimpleNamespace(build_info=lambda: {"cpu_level": "v2"}, cpu_levels=lambda: ["v2"])
    monkeypatch.setattr(_backend, "_baseline", fake)
    lacks = "IMPLICITREG_CPU_LEVEL=v4: this CPU lacks it; it supports v2"
    with pytest.raises(RuntimeError, match=lacks):
        _backend._select_core("v4")
    module, why = _backend._select_core("")
    assert module is fake and "CPU: v2" in why


@needs_levels
@pytest.mark.parametrize("level", RUNNABLE)
def test_each_level_exports_the_same_module(level):
    module = importlib.import_module(_backend._cpu_module(level))
    base = _backend._baseline
    assert sorted(n for n in dir(module) if not n.startswith("__")) == sorted(
        n for n in dir(base) if not n.startswith("__")
    )
    for name in ("STATUS", "OPTIMIZERS", "METRIC_KINDS", "SVD_INFO", "LIMITS"):
        assert getattr(module, name) == getattr(base, name), name
    assert module.build_info()["cpu_level"] == level


@pytest.mark.parametrize("level", RUNNABLE or [BUILT])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "dims, B",
    [
        ([3, 3, 3, 3], 37),  # lanes over problems; a batch off every pack width
        ([30, 530, 27], 2),  # the packed product: every tile edge, more than one k block
    ],
)
def test_each_level_steps_as_the_oracle(level, dtype, dims, B):
    """DMF steps at depth len(dims) - 1, and svdvals."""
    module = (
        _backend._baseline if ONE_BUILD else importlib.import_module(_backend._cpu_module(level))
    )
    rng = np.random.default_rng(1)
    factors = [
        (rng.standard_normal((B, dims[j], dims[j - 1])) / np.sqrt(dims[j] + dims[j - 1])).astype(
            dtype
        )
        for j in range(1, len(dims))
    ]
    target = rng.standard_normal((B, dims[-1], dims[0])).astype(dtype)
    mask = rng.random((B, dims[-1], dims[0])) < 0.6
    results = []
    for backend in (module, reference):
        fs = [f.copy() for f in factors]
        status = np.zeros(B, np.int8)
        frozen_at = np.full(B, -1, np.int64)
        backend.dmf_step(
            factors=fs,
            target=target,
            mask=mask,
            A=None,
            y=None,
            lr=np.full(B, 0.05, dtype),
            steps=40,
            tol=0.0,
            step0=0,
            status=status,
            frozen_at=frozen_at,
        )
        results.append((fs, status))
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for got, want in zip(results[0][0], results[1][0], strict=True):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(results[0][1], results[1][1])
    X = rng.standard_normal((B, 8, 8)).astype(dtype)
    s = np.empty((B, 8), dtype)
    info = np.empty(B, np.int8)
    module.svdvals(X, s, info)
    want = np.linalg.svd(X, compute_uv=False)
    np.testing.assert_allclose(s, want, rtol=100 * tol, atol=100 * tol)
