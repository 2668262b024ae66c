"""What the build reports about itself: build_info(), backends() and the _cuda module."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import implicitreg as ir

CUDA_COMPILED = importlib.util.find_spec("implicitreg._cuda") is not None


def test_build_info_keys():
    info = ir.build_info()
    for key in (
        "version",
        "compiler",
        "cpu_flags",
        "cpu_level",
        "cpu_level_reason",
        "cpu_supports",
        "simd_lanes_f64",
        "openmp",
        "threads",
        "cuda_compiled",
        "cuda_loaded",
        "cuda_reason",
    ):
        assert key in info, key
    assert info["version"] == ir.__version__
    assert isinstance(ir.__version__, str) and ir.__version__.count(".") >= 2
    assert info["simd_lanes_f64"] in (1, 2, 4, 8)
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["threads"], int) and info["threads"] >= 1
    if not info["openmp"]:
        assert info["threads"] == 1
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert info["cuda_compiled"] is CUDA_COMPILED


def test_version_matches_the_distribution_metadata_and_the_core():
    from importlib.metadata import version

    from implicitreg import _core

    assert version("implicitreg") == ir.__version__ == _core.__version__


@pytest.mark.skipif(
    os.environ.get("IMPLICITREG_EXPECT_CUDA_COMPILED", "") in ("", "0"),
    reason="set IMPLICITREG_EXPECT_CUDA_COMPILED=1 where nvcc built _cuda",
)
def test_cuda_module_was_built_when_expected():
    """Catches a CUDA build that silently fell back to CPU-only (pyproject retries OFF)."""
    assert ir.build_info()["cuda_compiled"] is True


@pytest.mark.skipif(
    os.environ.get("IMPLICITREG_EXPECT_CUDA_EMULATION", "") in ("", "0"),
    reason="set IMPLICITREG_EXPECT_CUDA_EMULATION=1 where the build turned on "
    "IMPLICITREG_CUDA_EMULATION",
)
def test_cuda_emulation_module_was_built_when_expected():
    """Catches a test build whose emulation module went missing (it is off by default), which
    would otherwise only skip the emulated CUDA tests."""
    importlib.import_module("implicitreg._cuda_emulated")


def test_backends_report():
    b = ir.backends()
    assert set(b) == {"numpy", "cpu", "cuda"}
    for name in ("numpy", "cpu"):
        assert b[name] == {"available": True, "reason": None}
    cuda = b["cuda"]
    assert isinstance(cuda["available"], bool)
    if cuda["available"]:
        assert cuda["reason"] is None
    else:
        assert isinstance(cuda["reason"], str) and cuda["reason"]
        assert cuda["reason"] == ir.build_info()["cuda_reason"]


def test_no_gpu_here_means_cuda_unavailable_with_a_reason():
    info = ir.build_info()
    if info.get("cuda_device_count", 0) > 0:
        pytest.skip("a CUDA device is visible here")
    cuda = ir.backends()["cuda"]
    assert cuda["available"] is False
    assert cuda["reason"]
    if not CUDA_COMPILED:
        assert "without CUDA" in cuda["reason"] or "IMPLICITREG_DISABLE_CUDA" in cuda["reason"]


@pytest.mark.skipif(not CUDA_COMPILED, reason="built without the CUDA module (_cuda)")
def test_cuda_module_imports_without_a_device():
    if os.environ.get("IMPLICITREG_DISABLE_CUDA", "") not in ("", "0"):
        pytest.skip("IMPLICITREG_DISABLE_CUDA is set")
    cuda = importlib.import_module("implicitreg._cuda")
    info = cuda.device_info()
    for key in (
        "cuda_archs",
        "cuda_compiler",
        "cuda_runtime_version",
        "cuda_driver_version",
        "cuda_device_count",
        "cuda_device_error",
        "cuda_devices",
    ):
        assert key in info, key
    assert cuda.device_count() == info["cuda_device_count"] == len(info["cuda_devices"])
    assert info["cuda_archs"]
    build = ir.build_info()
    assert build["cuda_loaded"] is True
    assert build["cuda_device_count"] == cuda.device_count()
    if cuda.device_count() == 0:
        assert info["cuda_device_error"], "no device must come with a reason"
        assert ir.backends()["cuda"]["reason"] == info["cuda_device_error"]


@pytest.mark.skipif(not CUDA_COMPILED, reason="built without the CUDA module (_cuda)")
def test_no_device_on_this_machine():
    """This CPU-only machine has no usable GPU: the module reports zero devices."""
    cuda = importlib.import_module("implicitreg._cuda")
    if cuda.device_count() > 0:
        pytest.skip("a CUDA device is visible here")
    assert cuda.device_count() == 0
    assert cuda.device_info()["cuda_devices"] == []


@pytest.mark.gpu
def test_gpu_device_is_reported():
    """On a machine with a GPU: the device is seen (the kernels come later)."""
    if not CUDA_COMPILED:
        pytest.skip("built without the CUDA module (_cuda)")
    cuda = importlib.import_module("implicitreg._cuda")
    if cuda.device_count() == 0:
        pytest.skip(f"no CUDA device: {cuda.device_info()['cuda_device_error']}")
    info = cuda.device_info()
    dev = info["cuda_devices"][0]
    assert dev["name"] and dev["compute_capability"] >= 50 and dev["total_memory"] > 2**30
    assert info["cuda_driver_version"] > 0


# --------------------------------------------------------------------------- codes and stubs

_COMPILED = ["implicitreg._core"] + [
    m
    for m in ("implicitreg._cuda", "implicitreg._cuda_emulated")
    if importlib.util.find_spec(m) is not None
]
_CODES = ("STATUS", "OPTIMIZERS", "METRIC_KINDS", "SVD_INFO", "LIMITS")


@pytest.mark.parametrize(
    "module",
    _COMPILED[1:]
    or [
        pytest.param(
            None,
            marks=pytest.mark.skip(
                reason="built without CUDA and without its emulation: one compiled module only"
            ),
        )
    ],
)
def test_compiled_modules_export_the_same_codes(module):
    core, other = importlib.import_module("implicitreg._core"), importlib.import_module(module)
    for name in _CODES:
        assert getattr(other, name) == getattr(core, name), name


def test_codes_are_numbered_from_zero_without_gaps():
    from implicitreg import _codes

    for table in (_codes.STATUS, _codes.OPTIMIZERS, _codes.METRIC_KINDS, _codes.SVD_INFO):
        assert sorted(table.values()) == list(range(len(table)))
    assert _codes.STATUS_NAMES == ("running", "converged", "diverged")
    assert set(_codes.OPTIMIZERS) == {"gd", "group_rmsprop", "adam"}


def test_range_checks_come_from_the_codes():
    """One past the last code is refused by name and number (the bound is the enum's count)."""
    import numpy as np

    from implicitreg import _codes, _core

    n = len(_codes.METRIC_KINDS)
    X = np.zeros((1, 2, 2))
    with pytest.raises(ValueError, match=rf"kinds\[0\] must be a metric kind 0..{n - 1}, got {n}"):
        _core.dmf_measure(
            [X],
            X,
            np.ones((1, 2, 2), bool),
            None,
            None,
            np.array([n], np.int32),
            np.zeros((1, 2)),
            np.zeros((1, 1)),
        )
    k = len(_codes.OPTIMIZERS)
    with pytest.raises(ValueError, match=rf"optimizer kind must be 0..{k - 1}, got {k}"):
        _core.dmf_step(
            [X],
            X,
            np.ones((1, 2, 2), bool),
            None,
            None,
            np.ones(1),
            1,
            0.0,
            0,
            np.zeros(1, np.int8),
            np.full(1, -1),
            optimizer={"kind": k},
        )


_PACKAGE = Path(ir.__file__).parent


def _imports(path: Path) -> set[str]:
    """The absolute names of what a source file of the package imports."""
    here = ["implicitreg", *path.relative_to(_PACKAGE).parent.parts]  # its package
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out |= {module} | {f"{module}.{a.name}" for a in node.names}
    return out


def test_only_the_numpy_route_imports_the_oracle():
    """reference.py is the oracle: production code reads its codes from _codes and its math
    from the kernels; only ops.py routes backend="numpy" to it."""
    importers = sorted(
        str(p.relative_to(_PACKAGE))
        for p in _PACKAGE.rglob("*.py")
        if "implicitreg.reference" in _imports(p)
    )
    assert importers == ["ops.py"]
    assert "implicitreg._codes" in _imports(_PACKAGE / "reference.py")


def _module_graph() -> dict[str, set[str]]:
    """Which modules of the package each one imports, anywhere in it (a function's import
    too). `from pkg import sub` is an edge to pkg.sub alone; the edge to a package's
    __init__ that every import of its submodules implies is not drawn."""
    modules = {}
    for p in _PACKAGE.rglob("*.py"):
        parts = ["implicitreg", *p.relative_to(_PACKAGE).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    # the compiled modules, known by their stubs, import nothing of the package
    graph: dict[str, set[str]] = {f"implicitreg.{p.stem}": set() for p in _PACKAGE.glob("*.pyi")}
    for name, path in modules.items():
        here = ["implicitreg", *path.relative_to(_PACKAGE).parent.parts]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules or a.name in graph}
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                subs = {f"{module}.{a.name}" for a in node.names} & (set(modules) | set(graph))
                deps |= subs
                if module in modules and len(subs) < len(node.names):
                    deps.add(module)  # a name defined in the module itself
        graph[name] = deps - {name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (found := visit(d, path + [d])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = _module_graph()
    assert {
        "implicitreg.models.dmf",
        "implicitreg.sweep.plan",
        "implicitreg.experiments.paper",
    } <= set(graph)  # the walk sees the subpackages
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """Two modules that import each other, one inside a function, make a cycle; a package
    that imports its submodules does not."""
    pkg = tmp_path / "implicitreg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "_PACKAGE", pkg)
    graph = _module_graph()
    assert graph == {
        "implicitreg": {"implicitreg.a"},
        "implicitreg.a": {"implicitreg.b"},
        "implicitreg.b": {"implicitreg.a"},
    }
    assert _find_cycle(graph) == ["implicitreg.a", "implicitreg.b", "implicitreg.a"]
    (pkg / "b.py").write_text("def f():\n    return 1\n")
    assert _find_cycle(_module_graph()) is None


def test_stubs_match_the_compiled_modules():
    pytest.importorskip("mypy", reason="mypy is not installed (test extra): no stubtest")
    import subprocess

    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", *_COMPILED],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_package_type_checks(tmp_path):
    """mypy, at pyproject.toml's settings, finds nothing in the package (installed or not)."""
    pytest.importorskip("mypy", reason="mypy is not installed (test extra)")
    import subprocess

    config = Path(__file__).resolve().parents[1] / "pyproject.toml"
    # By package name, not by path: given a path inside site-packages, mypy takes site-packages
    # for a source root and stops at the libraries there. An installed package is found through
    # its py.typed; a source tree on PYTHONPATH, through MYPYPATH.
    env = dict(os.environ)
    if _PACKAGE.parent.name not in ("site-packages", "dist-packages"):
        env["MYPYPATH"] = str(_PACKAGE.parent)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--cache-dir",
            os.devnull,
            "-p",
            "implicitreg",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout


# The public API: what these modules export, and the public methods and properties (inherited
# ones included) of the classes among it.
_PUBLIC_MODULES = (
    "implicitreg",
    "implicitreg.metrics",
    "implicitreg.problems",
    "implicitreg.baselines",
    "implicitreg.sweep",
)


def _public_callables(modules: list[types.ModuleType]) -> dict[str, Callable[..., object]]:
    """{name: function} of every callable in the modules' __all__ and, for a class, of its
    __init__ and its public methods, class and static methods and property getters."""
    found: dict[str, Callable[..., object]] = {}
    for mod in modules:
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not inspect.isclass(obj):
                if callable(obj):
                    found.setdefault(f"{mod.__name__}.{name}", obj)
                continue
            for klass in obj.__mro__[:-1]:  # object's own members aside
                for attr, value in vars(klass).items():
                    if attr.startswith("_") and attr != "__init__":
                        continue
                    if isinstance(value, property):
                        value = value.fget
                    elif isinstance(value, (classmethod, staticmethod)):
                        value = value.__func__
                    if callable(value):
                        found.setdefault(f"{mod.__name__}.{name}.{attr}", value)
    return found


def _unannotated(name: str, fn: Callable[..., object]) -> list[str]:
    """What of fn's signature carries no annotation: its parameters (self and cls aside) and
    its return."""
    sig = inspect.signature(fn)
    missing = [
        f"{name}: {p.name}"
        for p in sig.parameters.values()
        if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
    ]
    if sig.return_annotation is inspect.Signature.empty:
        missing.append(f"{name}: -> return")
    return missing


def test_the_public_api_is_annotated():
    """Every parameter and return of the public API has a type annotation."""
    found = _public_callables([importlib.import_module(m) for m in _PUBLIC_MODULES])
    assert {
        "implicitreg.DeepFactorization.fit",
        "implicitreg.DeepFactorization.__init__",
        "implicitreg.DeepFactorization.reset_optimizer",  # inherited
        "implicitreg.CPFactorization.load",
        "implicitreg.Trajectory.to_dataframe",
        "implicitreg.SweepResult.table",
        "implicitreg.metrics.schatten",
        "implicitreg.problems.TensorCompletion.arrays",
        "implicitreg.baselines.memorizer",
        "implicitreg.sweep.expand",
    } <= set(found)  # the walk reaches functions, methods, properties and classmethods
    missing = [m for name, fn in found.items() for m in _unannotated(name, fn)]
    assert not missing, "\n".join(missing)


def test_the_annotation_check_finds_what_is_missing():
    """A module whose functions and class members lack annotations is reported, one entry
    per missing parameter or return; a fully annotated one is not."""

    class Base:
        def inherited(self, a):
            return a

    class Model(Base):
        def __init__(self, problem, backend: str = "cpu"):
            self.backend = backend

        @property
        def batch(self):
            return 1

        @classmethod
        def load(cls, path: str) -> Model:
            return cls(path)

        @staticmethod
        def helper(x: int, *args: int, **kwargs) -> int:
            return x

        def _private(self, y):
            return y

    def fit(lr, steps: int = 1):
        return lr

    def done(lr: float, *, steps: int = 1) -> None:
        pass

    mod = types.ModuleType("fake")
    mod.__dict__.update(
        __all__=["Model", "fit", "done", "VALUE"], Model=Model, fit=fit, done=done, VALUE=3
    )
    found = _public_callables([mod])
    assert set(found) == {
        "fake.Model.__init__",
        "fake.Model.batch",
        "fake.Model.load",
        "fake.Model.helper",
        "fake.Model.inherited",
        "fake.fit",
        "fake.done",
    }
    missing = [m for name, fn in found.items() for m in _unannotated(name, fn)]
    assert sorted(missing) == [
        "fake.Model.__init__: -> return",
        "fake.Model.__init__: problem",
        "fake.Model.batch: -> return",
        "fake.Model.helper: kwargs",
        "fake.Model.inherited: -> return",
        "fake.Model.inherited: a",
        "fake.fit: -> return",
        "fake.fit: lr",
    ]


def test_no_module_is_over_500_lines():
    """A module that grows past this does several jobs: split it along its seams."""
    long = {
        str(p.relative_to(_PACKAGE)): n
        for p in _PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, long
