"""What the build reports about itself: build_info(), backends() and the _cuda module."""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest

import implicitreg as ir

CUDA_COMPILED = importlib.util.find_spec("implicitreg._cuda") is not None


def test_build_info_keys():
    info = ir.build_info()
    for key in ("version", "compiler", "cpu_flags", "simd_lanes_f64", "openmp", "threads",
                "cuda_compiled", "cuda_loaded", "cuda_reason"):
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


@pytest.mark.skipif(os.environ.get("IMPLICITREG_EXPECT_CUDA_COMPILED", "") in ("", "0"),
                    reason="set IMPLICITREG_EXPECT_CUDA_COMPILED=1 where nvcc built _cuda")
def test_cuda_module_was_built_when_expected():
    """Catches a CUDA build that silently fell back to CPU-only (pyproject retries OFF)."""
    assert ir.build_info()["cuda_compiled"] is True


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
    for key in ("cuda_archs", "cuda_compiler", "cuda_runtime_version", "cuda_driver_version",
                "cuda_device_count", "cuda_device_error", "cuda_devices"):
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
