"""Which compiled backends exist here, and why not when they don't."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import types

import numpy as np

# The OpenMP threads of the CPU kernels wait passively (sleep at once) when a parallel region
# ends, unless the user chose a policy: spinning, the default, takes the cores of any process
# running beside them, and on a shared machine a team waits at every barrier for a thread
# that was descheduled. OpenMP reads this once, when its library loads: it has no effect where
# another library loaded OpenMP first.
_omp_wait_policy = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _core as _baseline  # noqa: E402  (after the wait policy)

# The CPU kernels are built once per x86-64 level: _core (v2, the floor), _core_v3 (AVX2 +
# FMA), _core_v4 (AVX-512); a build for one machine (IMPLICITREG_NATIVE=ON) or for another
# architecture has _core alone.
CPU_LEVELS = ("v2", "v3", "v4")


def _cpu_module(level: str) -> str:
    return f"{__package__}._core" if level == "v2" else f"{__package__}._core_{level}"


def _select_core(forced: str) -> tuple[types.ModuleType, str]:
    """(module, why): the build of the CPU kernels to use here, and why that one."""
    built = str(_baseline.build_info()["cpu_level"])
    if built not in CPU_LEVELS:  # one build only
        if forced:
            raise RuntimeError(
                f"IMPLICITREG_CPU_LEVEL={forced}: this build has one level only, {built!r} "
                "(built with IMPLICITREG_NATIVE=ON, or not for x86-64)"
            )
        return _baseline, f"the only build here ({built})"
    cpu = list(_baseline.cpu_levels())
    have = [lv for lv in CPU_LEVELS if importlib.util.find_spec(_cpu_module(lv)) is not None]
    if forced:
        if forced not in CPU_LEVELS:
            raise ValueError(
                f"IMPLICITREG_CPU_LEVEL must be one of {', '.join(CPU_LEVELS)}, got {forced!r}"
            )
        if forced not in cpu:
            raise RuntimeError(
                f"IMPLICITREG_CPU_LEVEL={forced}: this CPU lacks it; "
                f"it supports {', '.join(cpu) or 'none of ' + ', '.join(CPU_LEVELS)}"
            )
        if forced not in have:
            raise RuntimeError(
                f"IMPLICITREG_CPU_LEVEL={forced}: not built here; built: {', '.join(have)}"
            )
        level, why = forced, "forced by IMPLICITREG_CPU_LEVEL"
    else:
        usable = [lv for lv in have if lv in cpu] or ["v2"]
        level = usable[-1]
        why = f"the best built level this CPU supports (CPU: {', '.join(cpu) or 'below v2'})"
    module = _baseline if level == "v2" else importlib.import_module(_cpu_module(level))
    return module, why


_core, _cpu_level_reason = _select_core(os.environ.get("IMPLICITREG_CPU_LEVEL", ""))

_cuda = None
_cuda_reason: str | None = None
_cuda_compiled = importlib.util.find_spec(f"{__package__}._cuda") is not None
if os.environ.get("IMPLICITREG_DISABLE_CUDA", "") not in ("", "0"):
    _cuda_reason = "disabled by IMPLICITREG_DISABLE_CUDA"
elif not _cuda_compiled:
    _cuda_reason = "built without CUDA (no nvcc at build time, or IMPLICITREG_CUDA=OFF)"
else:
    try:  # present: a failure here is a real problem, so its message is kept
        _cuda = importlib.import_module(f"{__package__}._cuda")
    except ImportError as exc:
        _cuda_reason = f"_cuda is installed but failed to import: {exc}"


@functools.lru_cache(maxsize=1)  # asked before every kernel call; the answer does not change
def cuda_reason() -> str | None:
    """Why the CUDA backend cannot run here, or None when it can."""
    if _cuda is None:
        return _cuda_reason
    info = _cuda.device_info()
    if info["cuda_device_count"] == 0:
        return info["cuda_device_error"] or "no device"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "no CuPy: install implicitreg[cuda13] (or [cuda12])"
    return None


def cuda_module():
    """The _cuda module, or RuntimeError saying why the cuda backend cannot run here."""
    reason = cuda_reason()
    if reason is not None:
        raise RuntimeError(f"backend 'cuda' is not available here: {reason}")
    return _cuda


# DLPack device types (dlpack.h's DLDeviceType): the host, and CUDA memory.
_DLPACK_CPU, _DLPACK_CUDA = (1,), (2, 13)  # kDLCPU; kDLCUDA, kDLCUDAManaged


def _dlpack_device(x) -> int | None:
    """The DLPack device type of x, or None for an object that does not speak DLPack."""
    if not (hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__")):
        return None
    return int(x.__dlpack_device__()[0])


def is_device(x) -> bool:
    """True for an array in CUDA memory: CuPy, anything with __cuda_array_interface__ (PyTorch,
    Numba, JAX), or a DLPack array on a CUDA device."""
    return hasattr(x, "__cuda_array_interface__") or _dlpack_device(x) in _DLPACK_CUDA


def host_array(x) -> np.ndarray:
    """x as a NumPy array, without a copy where its memory allows: a host DLPack array
    (PyTorch, JAX) through np.from_dlpack, anything else through np.asarray (__array__,
    sequences, numbers)."""
    if isinstance(x, np.ndarray):
        return x
    if _dlpack_device(x) in _DLPACK_CPU:
        try:
            return np.from_dlpack(x)
        except (BufferError, TypeError, RuntimeError):  # e.g. a tensor that requires grad
            pass
    return np.asarray(x)


def _cupy():
    import cupy

    return cupy


def array_module(backend: str):
    """numpy, or cupy for the cuda backend: where a model on that backend keeps its state."""
    if backend != "cuda":
        return np
    cuda_module()
    return _cupy()


def to_host(x):
    """x on the host: a device array is copied there once (as a NumPy array); anything else
    is left as it is."""
    if not is_device(x):
        return x
    return (x if hasattr(x, "get") else to_device(x)).get()


def to_device(x):
    """x as a CuPy array: a device array of another library is wrapped without a copy
    (__cuda_array_interface__, else DLPack); a host array is copied once."""
    cupy = array_module("cuda")
    if is_device(x) and not hasattr(x, "__cuda_array_interface__"):
        return cupy.from_dlpack(x)
    return cupy.asarray(x if is_device(x) else host_array(x))


def device_memory() -> int:
    """Bytes the cuda backend can still allocate on the current device: what the driver
    reports free, plus what CuPy's memory pool holds unused (it hands that out first)."""
    cupy = array_module("cuda")
    free, _total = cupy.cuda.runtime.memGetInfo()
    return int(free) + int(cupy.get_default_memory_pool().free_bytes())


def free_device_pool() -> None:
    """Hands CuPy's cached, unused device memory back to the driver, for the kernels' own
    scratch (allocated outside CuPy's pool)."""
    array_module("cuda").get_default_memory_pool().free_all_blocks()


def backends() -> dict[str, dict[str, object]]:
    """{name: {"available": bool, "reason": str | None}} for numpy, cpu and cuda."""
    reason = cuda_reason()
    return {
        "numpy": {"available": True, "reason": None},
        "cpu": {"available": True, "reason": None},
        "cuda": {"available": reason is None, "reason": reason},
    }


def build_info() -> dict[str, object]:
    """Compiler, flags, the x86-64 level loaded and why, SIMD width, OpenMP (threads, the wait
    policy in force when the package loaded), CUDA archs and devices, version."""
    info = dict(_core.build_info())
    info["cpu_level_reason"] = _cpu_level_reason
    info["cpu_supports"] = list(_baseline.cpu_levels())
    info["omp_wait_policy"] = _omp_wait_policy
    info["cuda_compiled"] = _cuda_compiled
    info["cuda_loaded"] = _cuda is not None
    if _cuda is not None:
        info.update(_cuda.device_info())
    info["cuda_reason"] = cuda_reason()
    return info
