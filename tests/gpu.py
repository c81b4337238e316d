"""Whether the GPU tests can run here. On a CPU machine they skip, naming what is missing; under the
device check (``benchmarks/gpu_check.sh`` sets ``EOV_GPU_CHECK=1``) a missing piece fails the test
instead, so a broken device setup can never report green."""

from __future__ import annotations

import os

import pytest


def missing(*needs: str) -> str | None:
    """What of ``needs`` (gpu, cuda_python, tensorrt, onnxruntime_cuda) is missing here, with how to
    get it; None when all are present."""
    from eov_edge.bench import device_check

    probes = {"gpu": device_check.probe_gpu, "cuda_python": device_check.probe_cuda_python,
              "tensorrt": device_check.probe_tensorrt, "onnxruntime_cuda": device_check.probe_onnxruntime_cuda}
    found = [probes[need]() for need in needs]
    reasons = [f"{p.name}: {p.detail}" for p in found if not p.ok]
    return "; ".join(reasons) or None


def require(*needs: str) -> None:
    """Skip (or, under the device check, fail) the calling test unless ``needs`` are all here."""
    reason = missing(*needs)
    if reason is None:
        return
    if os.environ.get("EOV_GPU_CHECK") == "1":
        pytest.fail(f"the device check needs what this machine lacks: {reason}")
    pytest.skip(f"needs an NVIDIA GPU stack: {reason}")


def skip_unless(*needs: str):
    """A mark for a GPU test: skipped at collection where ``needs`` are missing (before its fixtures
    export anything), except under the device check, where the test runs and :func:`require` fails it."""
    if os.environ.get("EOV_GPU_CHECK") == "1":
        return pytest.mark.gpu
    reason = missing(*needs)
    return pytest.mark.skipif(reason is not None, reason=f"needs an NVIDIA GPU stack: {reason}")
