"""Pick the runner implementation for a backend name."""

from __future__ import annotations

from pathlib import Path

from eov_edge.core.manifest import GraphEntry
from eov_edge.runtime.ort_runner import OrtRunner
from eov_edge.runtime.runner import Runner, RunnerError

BACKENDS = ("onnxruntime", "tensorrt")


def make_runner(backend: str, name: str, path: Path, entry: GraphEntry, **options) -> Runner:
    """The runner of ``backend`` for one graph."""
    if backend == "onnxruntime":
        return OrtRunner(name, path, entry, **options)
    if backend == "tensorrt":
        from eov_edge.runtime.tensorrt_runner import (
            TensorRTRunner,  # lazy: tensorrt only on the device
        )

        if not options.get("engine_dir"):
            raise RunnerError("the TensorRT backend needs the engine folder (eov-export engine --out DIR)")
        return TensorRTRunner(name, path, entry, **options)
    raise RunnerError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
