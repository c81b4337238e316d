"""One runner interface, one implementation per backend: run one exported graph on the device.

A runner is created cheaply; ``activate()`` builds the backend session (lazily, on first ``infer``
if not called), ``infer(feed)`` checks the feed against the manifest's tensor specs and runs,
``deactivate()`` frees the session. Every call is timed. TensorRT arrives behind this same interface
(DESIGN.md section 7): :class:`OrtRunner` here, ``TensorRTRunner`` in
:mod:`eov_edge.runtime.tensorrt_runner`.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np

from eov_edge.errors import EOVError
from eov_edge.manifest import GraphEntry, TensorSpec

BACKENDS = ("onnxruntime", "tensorrt")
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}


THREAD_POOLS = ("session", "shared")
_ORT_SHARED_THREADS: int | None = None  # size of the process-wide ORT pool, once we created it


def ort_shared_thread_pool(threads: int | None) -> int:
    """Create (once per process) one ONNX Runtime thread pool for all sessions; returns its size.

    The pipeline alternates three sessions. With a pool per session, an idle pool spinning for work
    steals the cores the next session needs, so per-session pools run here without spinning, and
    then every small op pays a thread wake-up. One shared, spinning pool avoids both (nano, 2 cores:
    time to first token 41 ms per-session spinning, 17 ms per-session not spinning, 15 ms shared;
    benchmarks/runtime_latency.py). The catch: ONNX Runtime then requires *every* later session in
    the process to use the shared pool, so only a process that owns its ONNX Runtime use (eov-run,
    the benchmarks) should ask for it.
    """
    global _ORT_SHARED_THREADS
    if _ORT_SHARED_THREADS is None:
        import onnxruntime as ort

        _ORT_SHARED_THREADS = max(1, threads or os.cpu_count() or 1)
        ort.set_global_thread_pool_sizes(_ORT_SHARED_THREADS, 1)
    return _ORT_SHARED_THREADS


def session_options(threads: int | None = None, config_entries: dict[str, str] | None = None):
    """ONNX Runtime SessionOptions for any session eov-edge creates: the shared pool once it exists
    (ONNX Runtime then refuses any other), else a non-spinning pool of its own; ``config_entries``:
    session config keys and values (``add_session_config_entry``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in (config_entries or {}).items():
        options.add_session_config_entry(key, value)
    if _ORT_SHARED_THREADS is not None:
        options.use_per_session_threads = False
    else:
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


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


class OrtRunner(Runner):
    """ONNX Runtime on CPU or CUDA (``providers``, first available wins, as ORT orders them).

    ``thread_pool``: "session" (default; a pool per session, not spinning: safe beside other ONNX
    Runtime users in the process) or "shared" (one spinning pool; faster, see
    :func:`ort_shared_thread_pool`). ``threads``: intra-op threads (default: ONNX Runtime's choice,
    the physical cores). ``config_entries``: session config entries (the decoder's prefill session).
    """

    def __init__(self, name: str, path: Path, entry: GraphEntry, providers: list[str] | None = None,
                 threads: int | None = None, thread_pool: str = "session",
                 config_entries: dict[str, str] | None = None) -> None:
        super().__init__(name, path, entry)
        self.config_entries = dict(config_entries or {})
        if thread_pool not in THREAD_POOLS:
            raise RunnerError(f"thread_pool must be one of {THREAD_POOLS}, got {thread_pool!r}")
        self.providers = [PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or ["CPUExecutionProvider"])]
        self.threads = threads
        self.thread_pool = thread_pool
        self.session = None
        self._binding = None  # (key of the bound buffers, IOBinding), reused while the key holds

    def _activate(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        unavailable = [p for p in self.providers if p not in available]
        if unavailable:
            raise RunnerError(
                f"ONNX Runtime here offers {available}, not {unavailable}; install onnxruntime-gpu for CUDA "
                "(pip install 'eov-edge[gpu]') or run with --providers cpu"
            )
        # EOV_THREAD_POOL=session keeps per-session pools in a process that also hosts other ONNX
        # Runtime users (the test suite, a notebook): once the shared pool exists, ORT refuses them.
        if self.thread_pool == "shared" and os.environ.get("EOV_THREAD_POOL") != "session":
            self.threads = ort_shared_thread_pool(self.threads)  # the first runner in a process fixes its size
        options = session_options(self.threads, self.config_entries)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types from C++
            raise RunnerError(f"{self.path}: ONNX Runtime cannot load the graph ({err}); re-export the "
                              "artifacts with this eov-edge version") from None

    def _run(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not outputs:
            values = self.session.run(None, feed)
            return dict(zip(self.output_names, values))
        # IOBinding: the given outputs are written into the caller's arrays, nothing is allocated
        # for them; the rest come back as new arrays. Inputs are bound by address, so a decode loop
        # that refills the same buffers in place reuses the binding as it is: no per-step rebinding.
        feed_key, outputs_key = buffers_key(feed), buffers_key(outputs)
        cached = self._binding
        if cached is not None and same_buffers(cached[0], feed_key) and same_buffers(cached[1], outputs_key):
            binding = cached[2]
        else:
            binding = self._bind(feed, outputs)
            reusable = all(a.flags.c_contiguous for a in feed.values())
            self._binding = (feed_key, outputs_key, binding) if reusable else None
        self.session.run_with_iobinding(binding)
        if len(outputs) == len(self.output_names):
            return outputs  # every output was written in place
        values = binding.get_outputs()  # OrtValues; only the unbound ones are copied out
        return {name: outputs[name] if name in outputs else value.numpy()
                for name, value in zip(self.output_names, values)}

    def _bind_call(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
                   ) -> Callable[[], dict[str, np.ndarray]]:
        if len(outputs) != len(self.output_names) or not all(a.flags.c_contiguous for a in feed.values()):
            return super()._bind_call(feed, outputs)
        binding, run, timings, clock = self._bind(feed, outputs), self.session.run_with_iobinding, self.timings, time.perf_counter

        def call() -> dict[str, np.ndarray]:
            start = clock()
            run(binding)
            timings.append(clock() - start)
            return outputs

        return call

    def _bind(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]):
        binding = self.session.io_binding()
        for name, array in feed.items():
            if array.flags.c_contiguous:
                binding.bind_input(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))  # ORT keeps its own copy
        for name in self.output_names:
            if name in outputs:
                array = outputs[name]
                if not array.flags.c_contiguous:
                    raise RunnerError(f"{self.name}: output buffer {name} must be C-contiguous")
                binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
            else:
                binding.bind_output(name, "cpu")
        return binding

    def _deactivate(self) -> None:
        self.session = None
        self._binding = None


def make_runner(backend: str, name: str, path: Path, entry: GraphEntry, **options) -> Runner:
    """The runner of ``backend`` for one graph."""
    if backend == "onnxruntime":
        return OrtRunner(name, path, entry, **options)
    if backend == "tensorrt":
        from eov_edge.runtime.tensorrt_runner import TensorRTRunner  # lazy: tensorrt only on the device

        if not options.get("engine_dir"):
            raise RunnerError("the TensorRT backend needs the engine folder (eov-export engine --out DIR)")
        return TensorRTRunner(name, path, entry, **options)
    raise RunnerError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
