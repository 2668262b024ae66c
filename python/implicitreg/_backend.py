"""Which compiled backends exist here, and why not when they don't."""

from __future__ import annotations

import importlib
import importlib.util
import os

from . import _core

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
    return "the CUDA kernels are not part of this version yet"


def backends() -> dict[str, dict[str, object]]:
    """{name: {"available": bool, "reason": str | None}} for numpy, cpu and cuda."""
    reason = cuda_reason()
    return {
        "numpy": {"available": True, "reason": None},
        "cpu": {"available": True, "reason": None},
        "cuda": {"available": reason is None, "reason": reason},
    }


def build_info() -> dict[str, object]:
    """Compiler, flags, SIMD width, OpenMP, CUDA archs and devices, version."""
    info = dict(_core.build_info())
    info["cuda_compiled"] = _cuda_compiled
    info["cuda_loaded"] = _cuda is not None
    if _cuda is not None:
        info.update(_cuda.device_info())
    info["cuda_reason"] = cuda_reason()
    return info
