"""The runner interface: run one exported graph on the device, one implementation per backend.

A runner is created cheaply; ``activate()`` builds the backend session (lazily, on first ``infer``
if not called), ``infer(feed)`` checks the feed against the manifest's tensor specs and runs,
``deactivate()`` frees the session. Every call is timed. Implementations:
:class:`~eov_edge.runtime.ort_runner.OrtRunner` (ONNX Runtime, CPU or CUDA) and
:class:`~eov_edge.runtime.tensorrt_runner.TensorRTRunner`; :func:`eov_edge.runtime.backends.make_runner`
picks one by name.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np

from eov_edge.core.errors import EOVError
from eov_edge.core.manifest import GraphEntry, TensorSpec


class RunnerError(EOVError, RuntimeError):
    """A graph cannot be loaded or run: missing file, wrong feed, unavailable backend or provider."""


class Runner(ABC):
    """Runs one graph. Subclasses implement ``_activate``, ``_run`` and ``_deactivate``."""

    def __init__(self, name: str, path: Path, entry: GraphEntry) -> None:
        self.name = name
        self.path = Path(path)
        self.entry = entry
        self.timings: list[float] = []  # seconds per infer() call
        self._active = False
        self._checked_key: tuple | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self._active:
            if not self.path.is_file():
                raise RunnerError(f"{self.path}: graph file missing; copy the whole artifacts folder")
            self._activate()
            self._active = True
        return self

    def deactivate(self) -> None:
        if self._active:
            self._deactivate()
            self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference ---------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None
              ) -> dict[str, np.ndarray]:
        """Run the graph. ``outputs`` may hold preallocated arrays that receive the named outputs
        in place (the decoder's KV cache uses this to avoid allocating per step).

        A feed made of the very same buffers as the previous call (same addresses, shapes and
        dtypes; the decode loop refills its buffers in place) is not checked again."""
        key = buffers_key(feed)
        if not same_buffers(self._checked_key, key):
            self.check_feed(feed)
            self._checked_key = key
        self.activate()
        start = time.perf_counter()
        result = self._run(feed, outputs or {})
        self.timings.append(time.perf_counter() - start)
        return result

    def bind(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Callable[[], dict[str, np.ndarray]]:
        """A call that reruns the graph on these very buffers: the feed is checked once, here; between
        calls the caller refills the arrays in place and never swaps one (a decode loop). Backends
        bind the buffers once (``OrtRunner``: one IOBinding); the default goes through ``infer``."""
        self.check_feed(feed)
        self.activate()
        return self._bind_call(feed, outputs)

    def _bind_call(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
                   ) -> Callable[[], dict[str, np.ndarray]]:
        return lambda: self.infer(feed, outputs)

    def bind_decode(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray], cache,
                    past_of: dict[str, str]) -> Callable[[], dict[str, np.ndarray]]:
        """Decode steps over a KV cache (``generation.KVCache``): each call runs the graph, then
        appends the fed token's key/value (``present`` name -> the ``past`` name it extends) and
        unmasks its slot. Here the cache lives in host memory and every step goes through
        :meth:`infer` (which the calibration recorder wraps); ``TensorRTRunner`` keeps it on the GPU."""

        def step() -> dict[str, np.ndarray]:
            result = self.infer(feed, outputs)
            cache.append_step()
            return result

        return step

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Names, dtypes, ranks and fixed sizes as the manifest says; one named axis, one size."""
        expected = {spec.name: spec for spec in self.entry.inputs}
        missing = sorted(set(expected) - set(feed))
        unknown = sorted(set(feed) - set(expected))
        if missing or unknown:
            raise RunnerError(f"{self.name}: feed is missing {missing} and has unknown {unknown}; the graph takes "
                              f"{list(expected)}")
        axes: dict[str, tuple[int, str]] = {}
        for name, spec in expected.items():
            array = feed[name]
            _check_tensor(self.name, spec, array, axes)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.entry.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.entry.outputs]

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _run(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _deactivate(self) -> None: ...


def buffers_key(arrays: dict[str, np.ndarray]) -> tuple:
    """What identifies a set of buffers: names, the array objects and their shapes. The key holds
    the arrays themselves, so an equal key means the very same objects (their memory cannot move
    while referenced); comparing it is cheap enough for every decode step."""
    values = tuple(arrays.values())
    return tuple(arrays), values, tuple(getattr(a, "shape", None) for a in values)


def same_buffers(a: tuple | None, b: tuple) -> bool:
    return a is not None and a[0] == b[0] and a[2] == b[2] and all(x is y for x, y in zip(a[1], b[1]))


def _check_tensor(graph: str, spec: TensorSpec, array, axes: dict[str, tuple[int, str]]) -> None:
    if not isinstance(array, np.ndarray):
        raise RunnerError(f"{graph}: input {spec.name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.dtype(spec.dtype):
        raise RunnerError(f"{graph}: input {spec.name} is {array.dtype}, the graph takes {spec.dtype}")
    if array.ndim != len(spec.shape):
        raise RunnerError(f"{graph}: input {spec.name} has shape {array.shape}, the graph takes rank "
                          f"{len(spec.shape)} ({spec.shape})")
    for axis, (size, want) in enumerate(zip(array.shape, spec.shape)):
        if isinstance(want, int) and want > 0 and size != want:
            raise RunnerError(f"{graph}: input {spec.name} axis {axis} is {size}, the graph takes {want}")
        if isinstance(want, str) and want:
            seen = axes.setdefault(want, (size, spec.name))
            if seen[0] != size:
                raise RunnerError(f"{graph}: axis {want!r} is {size} in {spec.name} but {seen[0]} in {seen[1]}")
